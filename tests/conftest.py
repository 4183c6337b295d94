import os

import pytest
import torch
from diffusers import UNet2DConditionModel

from lavie_model import UNet3DConditionModel

TEXT_DIM = 32

# Under pytest-xdist (`make test` runs 2 workers), each worker takes its share of the cores, and so does every
# process it starts (trainers, Dagster's daemon, run workers and steps): OMP_NUM_THREADS is inherited. Without it
# each of those starts a thread per core, and OpenMP's spinning threads on oversubscribed cores slow them 2-4x.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
    torch.set_num_threads(share)


def tiny_unet2d(seed: int = 0) -> UNet2DConditionModel:
    """A small Stable-Diffusion-shaped 2D UNet: two levels, 32 channels per head."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(1, 2),
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=8,
    ).eval()


def randomize_temporal_layers(model: UNet3DConditionModel, seed: int = 0) -> None:
    """Give the zero-initialised temporal output projections weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".attn_temp.to_out." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


@pytest.fixture(scope="session")
def unet2d():
    return tiny_unet2d()


@pytest.fixture
def unet3d(unet2d):
    model = UNet3DConditionModel.from_pretrained_2d(unet2d).eval()
    randomize_temporal_layers(model)
    return model


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A complete tiny model folder, as `lavie init-tiny` builds it."""
    from lavie_model.cli import main

    folder = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["init-tiny", "--output", str(folder)]) == 0
    return folder


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """Untrained stand-ins for Stable Diffusion and the x4 upscaler, as `make pretrain` starts from them."""
    from lavie_model.model_folder import init_stand_ins

    return init_stand_ins(tmp_path_factory.mktemp("stand-ins") / "init")


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """Video and image shards of a small demo corpus, curated by the real curation assets (tiny preset)."""
    import dagster as dg

    from lavie_model.curation import store
    from lavie_model.curation.demo_corpus import build_demo_corpus
    from pipelines.curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings

    corpus = build_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", n_shapes=16, n_stills=4)
    home = tmp_path_factory.mktemp("demo_home")
    instance = dg.DagsterInstance.ephemeral()
    settings = CurationSettings(lavie_home=str(home), preset="tiny")
    for kind, assets, partitions in (("videos", VIDEO_ASSETS, "video_batches"), ("images", IMAGE_ASSETS,
                                                                                 "image_batches")):
        batch = store.ingest([(corpus.videos if kind == "videos" else corpus.images)[0].parent], kind=kind, home=home)
        instance.add_dynamic_partitions(partitions, [batch.key])
        assert dg.materialize(assets, partition_key=batch.key, instance=instance,
                              resources={"settings": settings}).success
    return {"videos": str(home / "shards" / "videos"), "images": str(home / "shards" / "images")}


@pytest.fixture
def data_homes(tmp_path, monkeypatch):
    """DAGSTER_HOME (an instance with the project's dagster.yaml) and LAVIE_HOME under tmp_path, as `lavie ingest`
    needs them; returns LAVIE_HOME."""
    import shutil
    from pathlib import Path

    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml", dagster_home)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("LAVIE_HOME", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server for the module (tests/postgres.py): its DAGSTER_PG_* environment."""
    from postgres import postgres_server

    with postgres_server() as env:
        yield env


@pytest.fixture
def postgres_home(postgres, tmp_path, monkeypatch):
    """DAGSTER_HOME holding the project's PostgreSQL dagster.yaml (dagster_home/postgres), the server's DAGSTER_PG_*
    and LAVIE_HOME under tmp_path; returns DAGSTER_HOME."""
    import shutil
    from pathlib import Path

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster_home" / "postgres" / "dagster.yaml", home)
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("LAVIE_HOME", str(tmp_path / "data"))
    return home

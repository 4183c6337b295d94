"""`make demo`: build the embedded corpus, ingest and curate it, train the tiny cascade, generate a sample.

Runs go into the Dagster instance under DAGSTER_HOME, so they show in the UI; data goes under LAVIE_HOME.
Rerunning re-materializes the same batches (the store keeps each file once).
"""

import time

import dagster as dg
import pandas as pd

from lavie_model.curation import store
from lavie_model.curation.demo_corpus import build_demo_corpus
from lavie_model.curation.probe import sha256_of
from lavie_model.generate import generate

from .curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings, image_batches, video_batches
from .evaluation import EVALUATION_ASSETS, EvaluationSettings
from .training import TRAINING_ASSETS, TrainingSettings

ASSETS = {"videos": (VIDEO_ASSETS, video_batches), "images": (IMAGE_ASSETS, image_batches)}
# Optimizer steps per stage: a few minutes each on two cores.
DEMO_STEPS = {"base": 80, "interpolation": 30, "vsr": 60}
VAE_STEPS = 150
PROMPT = "a red circle moving left on a gray background"
SAMPLE_STEPS = 25  # denoising steps per stage for the sample
DEMO_EVALUATION = dict(samples_per_prompt=1, validation_clips=4, base_steps=20, interpolation_steps=8, vsr_steps=8)


def batches_of(folder, kind, home) -> list[str]:
    """The batch keys holding the files of `folder`, ingesting those not yet ingested."""
    store.ingest([folder], kind=kind, home=home)
    known = store.ingested_hashes(kind, home)
    files = store.expand([folder], store.KINDS[kind], [])
    return sorted({known[sha256_of(path)] for path in files})


def main() -> None:
    start = time.time()
    home = store.lavie_home()
    corpus = home / "demo-corpus"
    if not corpus.exists():
        print(f"building the demo corpus in {corpus}")
        build_demo_corpus(corpus)
    instance = dg.DagsterInstance.get()
    settings = CurationSettings()
    for kind, (assets, partitions) in ASSETS.items():
        for key in batches_of(corpus / kind, kind, home):
            instance.add_dynamic_partitions(partitions.name, [key])
            print(f"curating {kind} batch {key}")
            dg.materialize(assets, partition_key=key, instance=instance, resources={"settings": settings})
            report(kind, home / "curation" / key)
    model = train(instance, home)
    metrics = evaluate(instance)
    sample = home / "demo-sample.mp4"
    print(f"generating {PROMPT!r} through the promoted cascade")
    generate(model=home / "models" / "promoted", prompt=PROMPT, output=sample, steps=SAMPLE_STEPS)
    print(f"\ndone in {time.time() - start:.0f} s. Where to look:")
    print(f"  shards:   {home / 'shards'}")
    print(f"  tables:   {home / 'curation'} (Parquet, one folder per batch)")
    print(f"  training: {home / 'training'} (per stage and run: metrics.jsonl, checkpoints/, model/)")
    print(f"  model:    {model} (the trained cascade; .venv/bin/lavie generate --model {model} --prompt ...)")
    print(f"  sample:   {sample}")
    print(f"  metrics:  {metrics}")
    print("  lineage:  .venv/bin/lavie lineage KEY   (KEY: any sample key listed in a shard's .json manifest)")
    print("  the UI:   make ui   (127.0.0.1:3000: asset graph, materializations with loss curves, metrics, gallery)")


def train(instance, home):
    """Materialize the three training assets on all shards; the folder of the last holds the whole cascade."""
    print(f"training the tiny cascade: autoencoders {VAE_STEPS} steps each, "
          + ", ".join(f"{stage} {steps} steps" for stage, steps in DEMO_STEPS.items()))
    result = dg.materialize(TRAINING_ASSETS, instance=instance, resources={
        "training": TrainingSettings(max_steps=DEMO_STEPS, vae_steps=VAE_STEPS), "pipes": dg.PipesSubprocessClient()})
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        if "final_loss" in metadata:
            print(f"  {event.asset_key.path[-1]}: {metadata['steps'].value} steps, final loss "
                  f"{metadata['final_loss'].value:.4f}, run {metadata['run_dir'].value}")
    return metadata["model_folder"].value


def evaluate(instance):
    """Score the trained cascade and promote it (the gate passes when nothing is promoted yet, or no metric
    regressed); returns the path of the metrics report."""
    print("evaluating the trained cascade")
    result = dg.materialize(EVALUATION_ASSETS, instance=instance, raise_on_error=False,
                            resources={"evaluation_settings": EvaluationSettings(**DEMO_EVALUATION)})
    metadata = result.asset_materializations_for_node("evaluation")[0].metadata
    for name, value in metadata["metrics_json"].value.items():
        print(f"  {name:32} {'n/a' if value is None else f'{value:.4f}'}")
    checks = result.get_asset_check_evaluations()
    print("  promoted" if all(c.passed for c in checks) else "  not promoted: a metric regressed (see the check)")
    return metadata["report"].value


def report(kind: str, folder) -> None:
    raw = pd.read_parquet(folder / "raw.parquet")
    shards = pd.read_parquet(folder / "shards.parquet")
    if kind == "images":
        print(f"  {len(raw)} images -> {int(shards['samples'].sum())} in {len(shards)} image-text shard(s)")
        return
    quarantine = pd.read_parquet(folder / "quarantine.parquet")
    clips = pd.read_parquet(folder / "clips.parquet")
    kept = pd.read_parquet(folder / "filtered.parquet")["keep"]
    print(f"  ingested {len(raw)} -> decodable {len(raw) - len(quarantine)} -> clips {len(clips)} -> kept "
          f"{int(kept.sum())} -> {int(shards['samples'].sum())} samples in {len(shards)} shard(s)")
    for row in quarantine.itertuples():
        print(f"  quarantined {row.name}: {row.reason}")


if __name__ == "__main__":
    main()

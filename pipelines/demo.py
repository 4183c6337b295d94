"""`make demo`: build the embedded corpus, ingest it and materialize the curation assets, then say where to look.

Runs go into the Dagster instance under DAGSTER_HOME, so they show in the UI; data goes under LAVIE_HOME.
Rerunning re-materializes the same batches (the store keeps each file once).
"""

import time

import dagster as dg
import pandas as pd

from lavie_model.curation import store
from lavie_model.curation.demo_corpus import build_demo_corpus
from lavie_model.curation.probe import sha256_of

from .curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings, image_batches, video_batches

ASSETS = {"videos": (VIDEO_ASSETS, video_batches), "images": (IMAGE_ASSETS, image_batches)}


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
    print(f"\ndone in {time.time() - start:.0f} s. Where to look:")
    print(f"  shards:   {home / 'shards'}")
    print(f"  tables:   {home / 'curation'} (Parquet, one folder per batch)")
    print("  lineage:  .venv/bin/lavie lineage KEY   (KEY: any sample key listed in a shard's .json manifest)")
    print("  the UI:   DAGSTER_HOME=$PWD/dagster_home .venv/bin/dagster dev -w workspace.yaml  (127.0.0.1:3000)")


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

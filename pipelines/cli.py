"""The `lavie` command: the model commands of `lavie_model.cli` plus the data commands, which need Dagster."""

import sys

from lavie_model import cli as model_cli

PARTITIONS = {"videos": "video_batches", "images": "image_batches"}


def ingest(args):
    from dagster import DagsterInstance
    from dagster._core.errors import DagsterHomeNotSetError

    from lavie_model.curation import store

    try:  # before anything is stored, so that no batch exists without its partition
        instance = DagsterInstance.get()
    except DagsterHomeNotSetError as error:
        raise ValueError("DAGSTER_HOME is not set: export DAGSTER_HOME=$PWD/dagster_home (an absolute path)") from error
    kind = "images" if args.images else "videos"
    batch = store.ingest(args.paths, kind=kind, captions=args.captions)
    for skipped in batch.skipped:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    if batch.key is None:
        print(f"nothing new to ingest: no new {kind} file among the inputs", file=sys.stderr)
        return
    instance.add_dynamic_partitions(PARTITIONS[kind], [batch.key])
    print(f"ingested {len(batch.files)} {kind} into {store.lavie_home()}; batch (partition key):", file=sys.stderr)
    print(batch.key)


def add_data_commands(commands) -> None:
    p = commands.add_parser("ingest", help="register videos (or images) as a new batch for curation",
                            description="Copy files into LAVIE_HOME's store (by SHA-256: the same bytes are kept "
                            "once) and register them as a Dagster partition; prints the partition key.")
    p.add_argument("paths", nargs="+", help="files, or folders to search")
    p.add_argument("--captions", help="CSV or Parquet with `path,caption` columns (default: sidecar .txt files)")
    p.add_argument("--images", action="store_true", help="the inputs are images for joint fine-tuning")
    p.set_defaults(func=ingest)


def main(argv=None) -> int:
    return model_cli.main(argv, extra_commands=add_data_commands)


if __name__ == "__main__":
    sys.exit(main())

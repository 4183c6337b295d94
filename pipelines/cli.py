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
    if args.table:
        return ingest_table(args, instance)
    if not args.paths:
        raise ValueError("give files or folders to ingest, or --table FILE for a table of URLs")
    kind = "images" if args.images else "videos"
    batch = store.ingest(args.paths, kind=kind, captions=args.captions,
                         follow_symlinks_outside=args.follow_symlinks_outside)
    for skipped in batch.skipped:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    for file in batch.files:
        if file.caption_note:
            print(f"caption of {file.source_path}: {file.caption_note}", file=sys.stderr)
    if batch.key is None:
        print(f"nothing new to ingest: no new {kind} file among the inputs", file=sys.stderr)
        return
    instance.add_dynamic_partitions(PARTITIONS[kind], [batch.key])
    print(f"ingested {len(batch.files)} {kind} into {store.lavie_home()}; batch (partition key):", file=sys.stderr)
    print(batch.key)


def ingest_table(args, instance) -> None:
    from lavie_model.curation import store
    from lavie_model.curation.url_tables import TableColumns, register_url_table

    if args.paths or args.images or args.captions or args.follow_symlinks_outside:
        raise ValueError("--table takes no files, --images, --captions or --follow-symlinks-outside: the table "
                         "names the videos and captions")
    columns = TableColumns(args.url_column, args.caption_column, args.start_column, args.end_column)
    keys = register_url_table(args.table, store.lavie_home(), columns, args.chunk_size)
    instance.add_dynamic_partitions("url_tables", keys)
    print(f"registered {args.table} as {len(keys)} chunk(s) of at most {args.chunk_size} rows; materialize "
          "downloaded_videos for each (it registers the video batch to curate); partition keys:", file=sys.stderr)
    for key in keys:
        print(key)


def add_data_commands(commands) -> None:
    p = commands.add_parser("ingest", help="register videos (or images) as a new batch for curation",
                            description="Copy files into LAVIE_HOME's store (by SHA-256: the same bytes are kept "
                            "once) and register them as a Dagster partition; prints the partition key.")
    p.add_argument("paths", nargs="*", help="files, or folders to search")
    p.add_argument("--captions", help="CSV or Parquet with `path,caption` columns (default: sidecar .txt files)")
    p.add_argument("--images", action="store_true", help="the inputs are images for joint fine-tuning")
    p.add_argument("--follow-symlinks-outside", action="store_true",
                   help="ingest symbolic links in the folders named whose targets lie outside them (by default "
                   "they are skipped with their target named; FIFOs and devices are always skipped, unopened)")
    p.add_argument("--table", help="a CSV, TSV or Parquet table of video URLs and captions (optionally start and "
                   "end seconds: one clip per span) instead of files; registered as url_tables partitions")
    p.add_argument("--url-column", default="url", help="the table's URL column (WebVid: contentUrl)")
    p.add_argument("--caption-column", default="caption", help="the table's caption column (WebVid: name)")
    p.add_argument("--start-column", default="start", help="the table's span start column, seconds (if any)")
    p.add_argument("--end-column", default="end", help="the table's span end column, seconds (if any)")
    p.add_argument("--chunk-size", type=int, default=1000, help="rows per url_tables partition")
    p.set_defaults(func=ingest)


def main(argv=None) -> int:
    return model_cli.main(argv, extra_commands=add_data_commands)


if __name__ == "__main__":
    sys.exit(main())

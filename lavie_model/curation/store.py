"""The data root (`LAVIE_HOME`) and content-addressed ingestion of videos and images into batches.

    LAVIE_HOME/                      default ./data
      inbox/videos/, inbox/images/   drop files here for the inbox sensor
      store/videos/, store/images/   managed copies, named by SHA-256: the same bytes are stored once
      batches/KEY.json               a batch: its files, their source names and captions
      curation/KEY/                  the per-file and per-clip tables (Parquet) of a batch
      clips/KEY/                     clip files
      shards/videos/KEY/, shards/images/KEY/   WebDataset shards and their manifests

Nothing here imports Dagster; `pipelines` registers each batch as a dynamic partition.
"""

import csv
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .probe import sha256_of

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
KINDS = {"videos": VIDEO_SUFFIXES, "images": IMAGE_SUFFIXES}


def lavie_home(override: str | None = None) -> Path:
    """The data root: `override` when given (a resource's setting), else $LAVIE_HOME, else ./data."""
    return Path(override or os.environ.get("LAVIE_HOME", "data")).absolute()


def promoted_path(home: Path | None = None) -> Path:
    """LAVIE_HOME/models/promoted: the link to the promoted model folder, `lavie generate`'s default."""
    return (home or lavie_home()) / "models" / "promoted"


@dataclass
class BatchFile:
    sha256: str
    name: str  # the file's name as ingested
    source_path: str  # where it was ingested from
    stored_path: str  # the managed copy under LAVIE_HOME/store
    caption: str | None  # the source caption, when one came with it
    caption_source: str | None  # "sidecar", the captions file's path, or "table NAME" (a URL table)
    # from a URL table: the rows' time spans, each cut as one clip: {"start", "end", "caption", "row", "url"}
    spans: list[dict] | None = None


@dataclass
class Batch:
    key: str | None  # None for an ingest that found nothing new
    kind: str  # "videos" or "images"
    files: list[BatchFile]
    skipped: list[dict] = field(default_factory=list)  # inputs not added, each with its reason

    def write(self, home: Path) -> Path:
        path = home / "batches" / f"{self.key}.json"
        _write_atomically(path, json.dumps(asdict(self), indent=2).encode())
        return path


def read_batch(key: str, home: Path | None = None) -> Batch:
    path = (home or lavie_home()) / "batches" / f"{key}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no batch {key!r}: {path} does not exist")
    data = json.loads(path.read_text())
    return Batch(data["key"], data["kind"], [BatchFile(**f) for f in data["files"]], data.get("skipped", []))


def ingested_hashes(kind: str, home: Path) -> dict[str, str]:
    """{sha256: batch key} of every file already ingested as `kind`."""
    known = {}
    for path in sorted((home / "batches").glob("*.json")):
        batch = json.loads(path.read_text())
        if batch["kind"] == kind:
            known.update({f["sha256"]: batch["key"] for f in batch["files"]})
    return known


def ingest(paths, kind: str = "videos", captions=None, home: Path | None = None) -> Batch:
    """Copy new files into the store as one batch (key None, nothing written, when there is no new file).

    paths: files or folders (searched recursively for the kind's suffixes). Captions come from `captions`
    (a CSV or Parquet file with `path,caption` columns, matched by full path or by file name) or from a
    sidecar `.txt` beside each file. Inputs that are missing or of another kind are reported in
    `skipped` with a reason; nothing is dropped silently.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    home = home or lavie_home()
    table = read_captions(captions) if captions else {}
    known = ingested_hashes(kind, home)
    files, skipped, seen = [], [], set()
    for path in expand(paths, KINDS[kind], skipped):
        sha = sha256_of(path)
        if sha in seen:
            skipped.append({"path": str(path), "reason": "same bytes as another file of this batch"})
            continue
        if sha in known:
            skipped.append({"path": str(path), "reason": f"already ingested in batch {known[sha]}"})
            continue
        seen.add(sha)
        stored = home / "store" / kind / f"{sha}{path.suffix.lower()}"
        if not stored.exists():
            _copy_atomically(path, stored)
        caption, origin = caption_for(path, table, captions)
        files.append(BatchFile(sha, path.name, str(path), str(stored), caption, origin))
    if not files:
        return Batch(None, kind, [], skipped)
    key = f"{kind}-{hashlib.sha256(''.join(sorted(seen)).encode()).hexdigest()[:12]}"
    batch = Batch(key, kind, sorted(files, key=lambda f: f.sha256), skipped)
    batch.write(home)
    return batch


def expand(paths, suffixes, skipped) -> list[Path]:
    """The files named, and the matching files under the folders named, in a stable order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        elif not path.is_file():
            skipped.append({"path": str(path), "reason": "no such file"})
        elif path.suffix.lower() not in suffixes:
            skipped.append({"path": str(path), "reason": f"not one of {', '.join(suffixes)}"})
        else:
            found.append(path)
    return [p.absolute() for p in found]


def read_captions(path) -> dict[str, str]:
    """{path or file name: caption} from a CSV or Parquet file with `path` and `caption` columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    if path.suffix.lower() == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
    else:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    if rows and not {"path", "caption"} <= set(rows[0]):
        raise ValueError(f"captions file {path} needs `path` and `caption` columns, has {', '.join(rows[0])}")
    table = {}
    for row in rows:
        table[str(Path(row["path"]).absolute())] = row["caption"]
        table.setdefault(Path(row["path"]).name, row["caption"])
    return table


def caption_for(path: Path, table: dict, captions_file) -> tuple[str | None, str | None]:
    caption = table.get(str(path)) or table.get(path.name)
    if caption:
        return caption.strip(), str(captions_file)
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file() and sidecar.read_text(encoding="utf-8").strip():
        return sidecar.read_text(encoding="utf-8").strip(), "sidecar"
    return None, None


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)

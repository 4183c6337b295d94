"""The data root (`LAVIE_HOME`) and content-addressed ingestion of videos and images into batches.

    LAVIE_HOME/                      default ./data
      inbox/videos/, inbox/images/   drop files here for the inbox sensor
      store/videos/, store/images/   managed copies, named by SHA-256: the same bytes are stored once
      batches/KEY.json               a batch: its files, their source names and captions
      curation/KEY/                  the per-file and per-clip tables (Parquet) of a batch
      clips/KEY/                     clip files
      shards/videos/KEY/, shards/images/KEY/   WebDataset shards and their manifests

Nothing here imports Dagster; `pipelines` registers each batch as a dynamic partition.

Inputs come from outside and are checked before anything is opened (`input_problem`): special files (FIFOs,
devices, sockets) are refused, and so is a symbolic link that leads outside the folder named (or the inbox),
unless `follow_symlinks_outside`. Captions are held to MAX_CAPTION_CHARS (cut at a word boundary, the cut
recorded in `caption_note`); a sidecar is read no further than MAX_CAPTION_FILE_BYTES; a caption that is not
UTF-8 is left out with its reason in `caption_note` (the file is kept, uncaptioned): no mojibake in training text.
"""

import codecs
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .probe import sha256_of

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
KINDS = {"videos": VIDEO_SUFFIXES, "images": IMAGE_SUFFIXES}
MAX_CAPTION_CHARS = 2000  # a longer caption is cut at a word boundary (the text encoders read 77 tokens)
MAX_CAPTION_FILE_BYTES = 64 * 1024  # a sidecar caption file is read no further than this
SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


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
    caption_note: str | None = None  # why the source caption was cut or left out; None: taken as it came


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


def ingest(paths, kind: str = "videos", captions=None, home: Path | None = None, within: Path | None = None,
           follow_symlinks_outside: bool = False) -> Batch:
    """Copy new files into the store as one batch (key None, nothing written, when there is no new file).

    paths: files or folders (searched recursively for the kind's suffixes). Captions come from `captions`
    (a CSV or Parquet file with `path,caption` columns, matched by full path or by file name) or from a
    sidecar `.txt` beside each file. Inputs that are missing, of another kind, special files (FIFOs, devices)
    or symbolic links leading outside the folder named (or outside `within`, the inbox, when given; allowed
    with `follow_symlinks_outside`) are reported in `skipped` with a reason, unopened; nothing is dropped silently.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    home = home or lavie_home()
    table = read_captions(captions) if captions else {}
    known = ingested_hashes(kind, home)
    files, skipped, seen = [], [], set()
    roots = {}
    for path in expand(paths, KINDS[kind], skipped, within, follow_symlinks_outside, roots):
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
        caption, origin, note = caption_for(path, table, captions, roots.get(path), follow_symlinks_outside)
        files.append(BatchFile(sha, path.name, str(path), str(stored), caption, origin, caption_note=note))
    if not files:
        return Batch(None, kind, [], skipped)
    key = f"{kind}-{hashlib.sha256(''.join(sorted(seen)).encode()).hexdigest()[:12]}"
    batch = Batch(key, kind, sorted(files, key=lambda f: f.sha256), skipped)
    batch.write(home)
    return batch


def expand(paths, suffixes, skipped, within: Path | None = None, follow_symlinks_outside: bool = False,
           roots: dict | None = None) -> list[Path]:
    """The files named, and the matching files under the folders named, in a stable order; every other input
    with one of the suffixes goes to `skipped` with its reason (input_problem). A folder's files must resolve
    inside it, a named file inside `within` when given (the inbox; a file named alone is otherwise the user's
    choice). Links to folders are not searched. `roots`, when given, is filled with {file: the folder it must
    stay in, or None}."""
    found = []
    for path in map(Path, paths):
        if path.is_dir() and (within is None or not path.is_symlink()):
            root = within or path
            for entry in sorted(path.rglob("*")):
                if entry.suffix.lower() not in suffixes or (entry.is_dir() and not entry.is_symlink()):
                    continue
                problem = input_problem(entry, root, follow_symlinks_outside)
                if problem:
                    skipped.append({"path": str(entry.absolute()), "reason": problem})
                else:
                    found.append((entry, root))
            continue
        problem = input_problem(path, within, follow_symlinks_outside)
        if problem:
            skipped.append({"path": str(path), "reason": problem})
        elif path.suffix.lower() not in suffixes:
            skipped.append({"path": str(path), "reason": f"not one of {', '.join(suffixes)}"})
        else:
            found.append((path, within))
    if roots is not None:
        roots.update({path.absolute(): root for path, root in found})
    return [path.absolute() for path, _ in found]


def input_problem(path: Path, root: Path | None = None, follow_symlinks_outside: bool = False) -> str | None:
    """Why `path` is not taken as an input file, or None. Decided from lstat and stat alone: nothing is opened.

    Refused: a missing path or broken link; a symbolic link whose target (fully resolved) lies outside `root`,
    unless `follow_symlinks_outside`, and any path that resolves outside `root` on the way; anything but a
    regular file (a FIFO could block its reader forever, a device never end)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be examined: {error.strerror}"
    target = Path(os.path.realpath(path))
    if root is not None and not follow_symlinks_outside:
        inside = Path(os.path.realpath(root))
        if not target.is_relative_to(inside):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "a path that resolves"
            return f"{what} to {target}, outside {inside} (allow with follow_symlinks_outside)"
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except OSError:
            return f"a broken symbolic link (to {target})"
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in SPECIAL_FILES if test(info.st_mode)), "a special file")
        return f"not a regular file: {kind}, left unopened"
    return None


def read_captions(path) -> dict:
    """{path or file name: caption cell} from a CSV or Parquet file with `path` and `caption` columns. A CSV's
    bytes that are not UTF-8 are kept escaped (surrogateescape) for `caption_cell` to refuse, cell by cell."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    if path.suffix.lower() == ".parquet":
        rows = pd.read_parquet(path).to_dict("records")
    else:
        try:
            rows = pd.read_csv(path, dtype=object, keep_default_na=False,
                               encoding_errors="surrogateescape").to_dict("records")
        except pd.errors.EmptyDataError:
            rows = []
    if rows and not {"path", "caption"} <= set(rows[0]):
        raise ValueError(f"captions file {path} needs `path` and `caption` columns, has {', '.join(rows[0])}")
    table = {}
    for row in rows:
        if not isinstance(row["path"], str) or not row["path"]:
            continue
        table[str(Path(row["path"]).absolute())] = row["caption"]
        table.setdefault(Path(row["path"]).name, row["caption"])
    return table


def caption_for(path: Path, table: dict, captions_file, root: Path | None = None,
                follow_symlinks_outside: bool = False) -> tuple[str | None, str | None, str | None]:
    """(caption, its source, a note on why it was cut or left out): from the captions table, else the sidecar
    `.txt`, which is checked as an input (inside `root`, or the file's folder) and read no further than
    MAX_CAPTION_FILE_BYTES."""
    cell = table.get(str(path))
    if cell is None:
        cell = table.get(path.name)
    if isinstance(cell, (str, bytes)) and cell.strip():
        caption, note = caption_cell(cell)
        return caption, str(captions_file) if caption else None, note and f"captions table: {note}"
    sidecar = path.with_suffix(".txt")
    problem = input_problem(sidecar, root or path.parent, follow_symlinks_outside)
    if problem == "no such file":
        return None, None, None
    if problem:
        return None, None, f"sidecar {sidecar.name} refused: {problem}"
    caption, note = read_caption_file(sidecar)
    return caption, "sidecar" if caption else None, note and f"sidecar {sidecar.name}: {note}"


def read_caption_file(path: Path) -> tuple[str | None, str | None]:
    """(caption, note) of a caption file read no further than MAX_CAPTION_FILE_BYTES (opened non-blocking, its
    type checked again on the open file); see caption_cell."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None, "not a regular file, left unread"
        data = file.read(MAX_CAPTION_FILE_BYTES + 1)
        size = os.fstat(descriptor).st_size
    cut = len(data) > MAX_CAPTION_FILE_BYTES
    data = data[:MAX_CAPTION_FILE_BYTES]
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:  # a file read in part may end inside a character: only a whole one counts as not UTF-8
        text = codecs.getincrementaldecoder("utf-8")().decode(data[bom:], final=not cut)
    except UnicodeDecodeError as error:
        return None, _not_utf8(data, bom + error.start)
    caption, note = _bounded(text)
    if cut:
        note = (f"a file of {size:,} bytes, read to {MAX_CAPTION_FILE_BYTES:,}: "
                + (f"caption cut to {len(caption):,} characters" if caption else "no caption in them"))
    return caption, note


def caption_cell(value) -> tuple[str | None, str | None]:
    """(caption, note) of a caption from a table cell or file: stripped; None with the reason when it is not
    UTF-8 text (bytes that do not decode, or a CSV's undecodable bytes kept as surrogate escapes); cut at a word
    boundary to at most MAX_CAPTION_CHARS characters, the note saying so."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        try:
            data = value.encode("utf-8", "surrogateescape")  # undoes a CSV's surrogate escapes
        except UnicodeEncodeError as error:
            return None, f"not UTF-8 (a lone surrogate at character {error.start:,}): caption left out"
    else:
        return None, f"not text: {type(value).__name__}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, _not_utf8(data, error.start)
    return _bounded(text)


def _not_utf8(data: bytes, offset: int) -> str:
    return f"not UTF-8 (byte 0x{data[offset]:02x} at offset {offset:,}): caption left out"


def _bounded(text: str) -> tuple[str | None, str | None]:
    text = text.strip()
    if len(text) <= MAX_CAPTION_CHARS:
        return text or None, None
    head = text[:MAX_CAPTION_CHARS + 1]
    breaks = [match.start() for match in re.finditer(r"\s", head)]
    end = breaks[-1] if breaks and breaks[-1] > MAX_CAPTION_CHARS // 2 else MAX_CAPTION_CHARS
    caption = head[:end].rstrip()
    return caption, f"cut to {len(caption):,} of {len(text):,} characters (MAX_CAPTION_CHARS)"


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

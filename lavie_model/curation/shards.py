"""WebDataset shards: tar files of samples `{key}.mp4` (or `.jpg`), `{key}.txt` and `{key}.json`, with manifests.

    {prefix}-000000.tar   the samples, sorted by key; `.json` holds every column of the row but the caption
    {prefix}-000000.json  its manifest: name, samples, bytes, sha256, keys

The same samples give the same bytes: samples in key order, tar headers with fixed times and owners, no
compression, JSON with sorted keys. A shard is closed when one more sample would take it past `max_samples`
or `max_bytes` (a sample larger than `max_bytes` gets a shard of its own). Each shard and manifest is
written under a temporary name and renamed into place once complete, and shards of the same prefix that the
new set does not overwrite are removed first, so re-writing never leaves partial, stale or duplicate shards.
"""

import datetime
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from .filtering import has_caption
from .probe import sha256_of

SHARD_COLUMNS = ["name", "path", "samples", "bytes", "sha256", "first_key", "last_key"]
TAR_FORMAT = tarfile.PAX_FORMAT
MEDIA_EXTENSIONS = ("mp4", "jpg")
JPEG_QUALITY = 95
JPEG_MAGIC = b"\xff\xd8\xff"


def write_shards(samples: pd.DataFrame, out_dir, prefix: str, max_samples: int = 1000, max_bytes: int = 1 << 30,
                 key: str = "clip_id") -> pd.DataFrame:
    """Video-text shards: `{key}.mp4` is the file at `path`, `{key}.txt` the caption. One row per shard."""
    return _write(samples, out_dir, prefix, max_samples, max_bytes, key, "mp4",
                  read=lambda path: path.read_bytes(), size=lambda path: path.stat().st_size)


def write_image_shards(samples: pd.DataFrame, out_dir, prefix: str, max_samples: int = 1000,
                       max_bytes: int = 1 << 30, key: str = "key") -> pd.DataFrame:
    """Image-text shards: `{key}.jpg` is the file at `path`, copied if it is a JPEG, else re-encoded as RGB.

    The key column defaults to `key` (an image's SHA-256, say). Images that are not JPEGs are encoded twice,
    once to plan the shards and once to write them, so that no more than one is held in memory at a time.
    """
    return _write(samples, out_dir, prefix, max_samples, max_bytes, key, "jpg",
                  read=jpeg_bytes, size=lambda path: path.stat().st_size if is_jpeg(path) else len(jpeg_bytes(path)))


def is_jpeg(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(len(JPEG_MAGIC)) == JPEG_MAGIC


def jpeg_bytes(path: Path) -> bytes:
    """The file itself if it is a JPEG; otherwise the image upright, on white where transparent, as JPEG."""
    if is_jpeg(path):
        return path.read_bytes()
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def shard_name(prefix: str, index: int, extension: str) -> str:
    return f"{prefix}-{index:06d}.{extension}"


def json_safe(value):
    """A value as plain JSON: arrays and tuples as lists, numpy scalars as numbers, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(name): json_safe(item) for name, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} ({value!r}) to a sample's .json")


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
    return info


def _member_bytes(name: str, size: int) -> int:
    """Bytes a file takes in the tar: its header blocks and its data padded to whole blocks."""
    header = len(tar_member(name, size).tobuf(TAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
    return header + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _tar_bytes(members: int) -> int:
    """Bytes of a tar whose members take `members` bytes: two end blocks, padded to a whole record."""
    return -(-(members + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _check_samples(samples: pd.DataFrame, key: str, prefix: str, max_samples: int, max_bytes: int) -> None:
    if not prefix or not re.fullmatch(r"[\w][\w.+=-]*", prefix):
        raise ValueError(f"shard prefix {prefix!r} must be a plain file name start (letters, digits, _ . + = -)")
    if max_samples < 1 or max_bytes < 1:
        raise ValueError(f"max_samples and max_bytes must be positive, got {max_samples} and {max_bytes}")
    missing = [column for column in (key, "caption", "path") if column not in samples.columns]
    if missing:
        raise ValueError(f"the samples table lacks the columns {missing}")
    bad = [value for value in samples[key] if not isinstance(value, str) or not value or "." in value
           or "/" in value or "\\" in value]
    if bad:
        raise ValueError(f"sample keys must be non-empty strings without dots or slashes (webdataset splits a "
                         f"file name at its first dot): {bad[:5]}")
    repeated = samples[key][samples[key].duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"sample keys appear more than once: {repeated[:5]}")
    uncaptioned = samples[key][~samples.caption.map(has_caption)].tolist()
    if uncaptioned:
        raise ValueError(f"samples without a caption cannot be sharded: {uncaptioned[:5]}")
    absent = [str(path) for path in samples.path if not Path(path).is_file()]
    if absent:
        raise FileNotFoundError(f"sample files not found: {absent[:5]}")


def _caption_and_record(row: dict) -> tuple[bytes, bytes]:
    """A sample's .txt and .json contents."""
    record = {column: value for column, value in row.items() if column != "caption"}
    return row["caption"].encode(), json.dumps(json_safe(record), sort_keys=True, allow_nan=False).encode()


def _write(samples: pd.DataFrame, out_dir, prefix: str, max_samples: int, max_bytes: int, key: str,
           extension: str, read: Callable[[Path], bytes], size: Callable[[Path], int]) -> pd.DataFrame:
    """Plan the shards from the size of every member, remove what they do not overwrite, then write them."""
    _check_samples(samples, key, prefix, max_samples, max_bytes)
    rows = samples.sort_values(key, kind="stable").to_dict("records")
    shards, current, current_bytes = [], [], 0  # lists of rows; member bytes of the shard being planned
    for row in rows:
        caption, record = _caption_and_record(row)
        sample_bytes = sum(_member_bytes(f"{row[key]}.{suffix}", count) for suffix, count in (
            (extension, size(Path(row["path"]))), ("txt", len(caption)), ("json", len(record))))
        if current and (len(current) == max_samples or _tar_bytes(current_bytes + sample_bytes) > max_bytes):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(row)
        current_bytes += sample_bytes
    shards += [current] if current else []

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir, prefix, keep=len(shards))
    written = []
    for number, shard_rows in enumerate(shards):
        path = out_dir / shard_name(prefix, number, "tar")
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as file, tarfile.open(fileobj=file, mode="w", format=TAR_FORMAT) as tar:
                for row in shard_rows:
                    caption, record = _caption_and_record(row)
                    for suffix, data in ((extension, read(Path(row["path"]))), ("txt", caption), ("json", record)):
                        tar.addfile(tar_member(f"{row[key]}.{suffix}", len(data)), io.BytesIO(data))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        keys = [row[key] for row in shard_rows]
        shard = {"name": path.name, "path": str(path), "samples": len(keys), "bytes": path.stat().st_size,
                 "sha256": sha256_of(path), "first_key": keys[0], "last_key": keys[-1]}
        manifest = {name: shard[name] for name in ("name", "samples", "bytes", "sha256")} | {"keys": keys}
        write_atomically(out_dir / shard_name(prefix, number, "json"), json.dumps(manifest, indent=1) + "\n")
        written.append(shard)
    return pd.DataFrame(written, columns=SHARD_COLUMNS)


def _remove_stale(out_dir: Path, prefix: str, keep: int) -> None:
    """Remove shards and manifests numbered `keep` and above, and any temporary file left by a crash."""
    shard = re.compile(rf"{re.escape(prefix)}-(\d{{6,}})\.(tar|json)")
    partial = re.compile(rf"\.{re.escape(prefix)}-\d{{6,}}\.(tar|json)\.partial")
    for path in out_dir.iterdir():
        match = shard.fullmatch(path.name)
        if (match and int(match[1]) >= keep) or partial.fullmatch(path.name):
            path.unlink()


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def verify_shards(shards: pd.DataFrame) -> list[str]:
    """Problems with written shards, read back with webdataset; an empty list when every shard is sound.

    Checks each shard's file, its sha256, its sample count and keys against its row and manifest, and that
    every sample has its media (.mp4 or .jpg) and its caption (.txt).
    """
    import webdataset as wds  # imports torch: loaded where shards are read, not by the Dagster code location

    problems = []
    for shard in shards.itertuples():
        path = Path(shard.path)
        if not path.is_file():
            problems.append(f"{shard.name}: missing file {path}")
            continue
        if sha256_of(path) != shard.sha256:
            problems.append(f"{shard.name}: sha256 differs from the manifest's")
        try:
            dataset = wds.WebDataset([str(path.absolute())], shardshuffle=False, nodesplitter=None,
                                     workersplitter=None, empty_check=False)
            read = [(sample["__key__"], set(sample) - {"__key__", "__url__", "__local_path__"}) for sample in dataset]
        except Exception as error:  # whatever tarfile or webdataset raise on a damaged file
            problems.append(f"{shard.name}: unreadable: {error}")
            continue
        if len(read) != shard.samples:
            problems.append(f"{shard.name}: {len(read)} samples, the manifest says {shard.samples}")
        for key, files in read:
            if not files & set(MEDIA_EXTENSIONS):
                problems.append(f"{shard.name}: sample {key} has no .{' or .'.join(MEDIA_EXTENSIONS)}")
            if "txt" not in files:
                problems.append(f"{shard.name}: sample {key} has no .txt")
        manifest = path.with_suffix(".json")
        try:
            if json.loads(manifest.read_text())["keys"] != [key for key, _ in read]:
                problems.append(f"{shard.name}: keys differ from those in {manifest.name}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{shard.name}: manifest {manifest} unreadable: {error!r}")
    return problems

"""URL tables: datasets that arrive as tables of URLs, captions and often time spans, not as folders of files.

    lavie ingest --table webvid.csv --url-column contentUrl --caption-column name
    lavie ingest --table spans.parquet                 # url, caption, start, end (seconds)

A table is split into chunks of `chunk_size` rows, each saved as LAVIE_HOME/tables/KEY.parquet (KEY names its
contents, so registering the same rows again gives the same key) and curated as one partition: the
`downloaded_videos` asset downloads its URLs (curation/download.py) and turns what arrived into an ordinary
video batch (`video_batch`), whose files carry the rows' captions and spans. Every row ends in the chunk's
downloads table as downloaded, or with its reason (a bad URL or span, a failed download, bytes that were
already ingested); none is dropped.
"""

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from .store import Batch, BatchFile, caption_cell, ingested_hashes

# caption_note: why the row's caption was cut or left out (store.caption_cell), None when taken as it came
ROW_COLUMNS = ["row", "url", "caption", "start", "end", "caption_note"]


@dataclass(frozen=True)
class TableColumns:
    """The table's column names for each field; start and end (seconds) are optional."""

    url: str = "url"
    caption: str = "caption"
    start: str = "start"
    end: str = "end"


def read_url_table(path, columns: TableColumns = TableColumns()) -> pd.DataFrame:
    """The table's rows as ROW_COLUMNS (`row`: the row's position in the file; start and end NaN when absent).
    A CSV's bytes that are not UTF-8 do not stop the table: a caption holding them is left out, its row's
    caption_note saying why (and a long one cut, store.caption_cell); in a URL they are percent-escaped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"URL table not found: {path}")
    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=object,
                            keep_default_na=False, encoding_errors="surrogateescape")
    else:
        raise ValueError(f"URL table {path}: expected .csv, .tsv or .parquet")
    missing = [name for name in (columns.url, columns.caption) if name not in table.columns]
    if missing:
        raise ValueError(f"URL table {path} has no column {' or '.join(map(repr, missing))} (its columns: "
                         f"{', '.join(map(str, table.columns))}); name the URL and caption columns with "
                         "--url-column and --caption-column")
    spans = [name for name in (columns.start, columns.end) if name in table.columns]
    if len(spans) == 1:
        raise ValueError(f"URL table {path} has a {spans[0]!r} column but no "
                         f"{(columns.end if spans[0] == columns.start else columns.start)!r}: spans need both")

    def seconds(name):
        if name not in table.columns:
            return np.nan
        return pd.to_numeric(table[name].replace("", np.nan), errors="coerce")

    def missing(value) -> bool:
        return value is None or (not isinstance(value, (str, bytes)) and np.ndim(value) == 0 and pd.isna(value))

    def text(value) -> str:  # a cell as text; undecodable bytes (surrogate escapes) percent-escaped
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        if missing(value):
            return ""
        return re.sub("[\udc80-\udcff]", lambda m: f"%{ord(m.group()) - 0xDC00:02X}", str(value)).strip()

    def caption(value) -> tuple[str, str | None]:
        if missing(value):
            return "", None
        found, note = caption_cell(value if isinstance(value, (str, bytes)) else str(value))
        return found or "", note

    captions = [caption(value) for value in table[columns.caption]]
    return pd.DataFrame({"row": np.arange(len(table)), "url": table[columns.url].map(text).astype(str),
                         "caption": pd.Series([c for c, _ in captions], index=table.index, dtype=str),
                         "start": seconds(columns.start), "end": seconds(columns.end),
                         "caption_note": pd.Series([n for _, n in captions], index=table.index, dtype=object)})


def register_url_table(path, home: Path, columns: TableColumns = TableColumns(), chunk_size: int = 1000
                       ) -> list[str]:
    """Save the table's rows as chunks under LAVIE_HOME/tables/; returns their keys (the partitions)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    rows = read_url_table(path, columns).assign(table=str(Path(path).absolute()))
    if rows.empty:
        raise ValueError(f"URL table {path} has no rows")
    keys = []
    for first in range(0, len(rows), chunk_size):
        chunk = rows.iloc[first:first + chunk_size].reset_index(drop=True)
        # the key is that of the rows as before caption notes, so that a table registered again keeps its keys
        content = chunk.drop(columns=["table", "caption_note"]).to_json(orient="records", double_precision=15)
        key = f"urls-{hashlib.sha256(content.encode()).hexdigest()[:12]}"
        target = home / "tables" / f"{key}.parquet"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            chunk.to_parquet(partial, index=False)
            os.replace(partial, target)
        keys.append(key)
    return keys


def read_chunk(key: str, home: Path) -> pd.DataFrame:
    path = home / "tables" / f"{key}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no URL table chunk {key!r}: {path} does not exist")
    return pd.read_parquet(path)


def span_problem(start, end) -> str | None:
    """Why a row's span cannot be cut, or None (no span, or a good one)."""
    if pd.isna(start) and pd.isna(end):
        return None
    if pd.isna(start) or pd.isna(end):
        return "bad span: start or end is not a number"
    if start < 0 or end <= start:
        return f"bad span: {start:g}-{end:g} s (need 0 <= start < end)"
    return None


def video_batch(rows: pd.DataFrame, home: Path, table_name: str) -> tuple[Batch | None, pd.DataFrame]:
    """The downloaded rows (columns ok, sha256, path) as a new video batch, one file per distinct video with the
    rows' spans; and the rows with their `status` ("in batch KEY", or why not)."""
    known = ingested_hashes("videos", home)
    status = rows["reason"].where(~rows["ok"].astype(bool), "")
    files = {}
    for index, row in rows[rows["ok"].astype(bool)].iterrows():
        if row.sha256 in known:
            status[index] = f"already ingested in batch {known[row.sha256]}"
            continue
        name = PurePosixPath(unquote(urlsplit(row.url).path)).name or row.sha256
        entry = files.setdefault(row.sha256, BatchFile(row.sha256, name, row.url, row.path, None, None, []))
        if pd.isna(row.start):
            entry.caption, entry.caption_source = row.caption or entry.caption, f"table {table_name}"
            note = row.get("caption_note")
            entry.caption_note = note if isinstance(note, str) and note else entry.caption_note
        else:
            entry.spans.append({"start": float(row.start), "end": float(row.end), "caption": row.caption,
                                "row": int(row.row), "url": row.url})
    if not files:
        return None, rows.assign(status=status)
    for entry in files.values():
        entry.spans = entry.spans or None
    key = f"videos-{hashlib.sha256(''.join(sorted(files)).encode()).hexdigest()[:12]}"
    batch = Batch(key, "videos", sorted(files.values(), key=lambda f: f.sha256))
    batch.write(home)
    ok = rows["ok"].astype(bool) & (status == "")
    return batch, rows.assign(status=status.where(~ok, f"in batch {key}"))


def spans_of(value) -> list[dict] | None:
    """A file's spans as read back from a table (None, or an array of records)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    spans = [dict(span) for span in value]
    return spans or None

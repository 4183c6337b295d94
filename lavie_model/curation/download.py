"""Downloads of the videos a URL table names (WebVid, Panda-70M, HD-VG lists): content-addressed into the store.

Only http and https are fetched, redirects included. Each URL gets `retries` more attempts after a timeout, a
dropped connection, a 5xx, 408 or 429, with exponential backoff; a 4xx, a body over `max_bytes` or a body that
is not a video (an HTML page, text) fails at once. Nothing raises: every URL ends as a `Download` that is ok
(the stored file, its SHA-256) or says why not, so a caller can quarantine it. A download streams to a
temporary file beside its target and is renamed into place once complete and hashed; `download_all` skips URLs
a previous run already stored, so a rerun fetches only what is missing.
"""

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .store import VIDEO_SUFFIXES

SCHEMES = ("http", "https")
CHUNK = 1 << 16
RETRIED_STATUS = (408, 429)  # and every 5xx
# Leading bytes of things that are not videos: servers answer a missing video with a page, often with 200.
NOT_VIDEO = (b"<!doctype", b"<html", b"<?xml", b"{", b"[")
CONTENT_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                  "video/x-msvideo": ".avi"}


@dataclass(frozen=True)
class DownloadConfig:
    workers: int = 8  # downloads at once
    timeout: float = 30.0  # seconds to connect, and between two reads of the body
    retries: int = 3  # attempts after the first, for errors that may pass
    backoff: float = 1.0  # seconds before the first retry, doubled for each next one
    max_bytes: int = 2 << 30  # larger files are refused
    user_agent: str = "lavie-ingest/1"


@dataclass
class Download:
    url: str
    ok: bool
    path: str | None = None  # the stored file, named by its SHA-256
    sha256: str | None = None
    bytes: int = 0
    reason: str = ""  # why it failed; empty when ok
    attempts: int = 0


class Refused(Exception):
    """A failure that another attempt would not change."""


class _OnlyHttpRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in SCHEMES:
            raise Refused(f"redirected to a {urlsplit(newurl).scheme or 'relative'} URL, only http and https are "
                          f"fetched: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_OnlyHttpRedirects)


def suffix_of(url: str, content_type: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else CONTENT_SUFFIX.get(content_type, ".mp4")


def download(url: str, store_dir, config: DownloadConfig = DownloadConfig()) -> Download:
    """Fetch `url` into `store_dir`/SHA256.SUFFIX; never raises."""
    result = Download(url, ok=False)
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in SCHEMES:
        result.reason = f"not an http or https URL: {url!r}"
        return result
    for attempt in range(config.retries + 1):
        result.attempts = attempt + 1
        try:
            path, sha256, size = _fetch(url, Path(store_dir), config)
            result.ok, result.path, result.sha256, result.bytes, result.reason = True, str(path), sha256, size, ""
            return result
        except Refused as error:
            result.reason = str(error)
            return result
        except urllib.error.HTTPError as error:
            result.reason = f"HTTP {error.code} {error.reason}"
            if error.code < 500 and error.code not in RETRIED_STATUS:
                return result
        except TimeoutError as error:
            result.reason = f"timed out ({config.timeout:g} s without data): {error}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            result.reason = f"connection failed: {type(error).__name__}: {reason}"
        if attempt < config.retries:
            time.sleep(config.backoff * 2 ** attempt)
    result.reason += f" (after {result.attempts} attempts)"
    return result


def _fetch(url: str, store_dir: Path, config: DownloadConfig) -> tuple[Path, str, int]:
    request = urllib.request.Request(url, headers={"User-Agent": config.user_agent})
    store_dir.mkdir(parents=True, exist_ok=True)
    partial = store_dir / f".download-{hashlib.sha256(url.encode()).hexdigest()[:16]}.partial"
    digest, size = hashlib.sha256(), 0
    try:
        with _OPENER.open(request, timeout=config.timeout) as response, open(partial, "wb") as file:
            announced = response.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > config.max_bytes:
                raise Refused(f"too large: {int(announced)} bytes announced, the limit is {config.max_bytes}")
            content_type = response.headers.get_content_type()
            if content_type.startswith("text/") or content_type in ("application/json", "application/xml"):
                raise Refused(f"not a video: the server sent {content_type}")
            while chunk := response.read(CHUNK):
                if size == 0 and chunk.lstrip()[:9].lower().startswith(NOT_VIDEO):
                    raise Refused(f"not a video: the body starts like a page or a document ({chunk[:20]!r})")
                size += len(chunk)
                if size > config.max_bytes:
                    raise Refused(f"too large: more than {config.max_bytes} bytes")
                digest.update(chunk)
                file.write(chunk)
            if announced and announced.isdigit() and size != int(announced):
                raise http.client.IncompleteRead(b"", int(announced) - size)
        if size == 0:
            raise Refused("empty: the server sent no bytes")
        sha256 = digest.hexdigest()
        target = store_dir / f"{sha256}{suffix_of(response.url or url, content_type)}"
        os.replace(partial, target)
        return target, sha256, size
    finally:
        partial.unlink(missing_ok=True)


def download_all(urls: list[str], store_dir, config: DownloadConfig = DownloadConfig(),
                 done: dict[str, Download] | None = None, progress=lambda result: None) -> list[Download]:
    """Every URL's Download, in order, `config.workers` at a time. URLs in `done` (a previous run's results)
    whose file is still stored are not fetched again; each URL is fetched once however often it appears."""
    done = {url: result for url, result in (done or {}).items()
            if result.ok and result.path and Path(result.path).is_file()}
    wanted = [url for url in dict.fromkeys(urls) if url not in done]

    def one(url):
        result = download(url, store_dir, config)
        progress(result)
        return result

    with ThreadPoolExecutor(max(1, config.workers)) as pool:
        fetched = dict(zip(wanted, pool.map(one, wanted)))
    return [done.get(url) or fetched[url] for url in urls]

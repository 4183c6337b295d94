"""Downloads of the videos a URL table names (WebVid, Panda-70M, HD-VG lists): content-addressed into the store.

Only http and https are fetched, redirects included (at most 10). Every address is checked after DNS resolution,
for the URL and at every redirect, and the connection is made to the address that was checked (no second lookup a
rebinding DNS server could answer differently): loopback, private, link-local, multicast, reserved, unspecified and
carrier-grade NAT addresses, also in IPv4-mapped, 6to4, Teredo or NAT64 IPv6 form, are refused with the address
named, unless `allow_networks` (CIDRs: a user's own mirror) holds them. On a cloud node the link-local
169.254.169.254 serves the node's credentials. Proxies from the environment are not used. Each URL gets `retries`
more attempts after a timeout, a dropped connection, a 5xx, 408 or 429, with exponential backoff; a 4xx, a refused
address, a Content-Length or a body over `max_bytes` or a body that is not a video (an HTML page, text) fails at
once. Nothing raises: every URL ends as a `Download` that is ok (the stored file, its SHA-256) or says why not, so
a caller can quarantine it. A download streams to a temporary file beside its target and is renamed into place once
complete and hashed; `download_all` skips URLs a previous run already stored, so a rerun fetches only what is
missing.
"""

import functools
import hashlib
import http.client
import ipaddress
import os
import socket
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
    # networks (CIDRs, e.g. "10.1.2.0/24" for a mirror of one's own) fetched although not public; none by default
    allow_networks: tuple[str, ...] = ()

    def __post_init__(self):  # a bad CIDR fails here, before any download, naming it
        networks = []
        for cidr in self.allow_networks:
            try:
                networks.append(str(ipaddress.ip_network(str(cidr).strip(), strict=False)))
            except ValueError as error:
                raise ValueError(f"allow_networks: {cidr!r} is not a network (CIDR): {error}") from None
        object.__setattr__(self, "allow_networks", tuple(networks))


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


CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")  # shared address space, not is_private
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_problem(address: str, allow_networks=()) -> str | None:
    """Why `address` (an IP literal) must not be fetched from, e.g. "a loopback address"; None when it may: a
    public address, or one in `allow_networks`. IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo,
    NAT64) are judged by that address too. No connection is made."""
    ip = ipaddress.ip_address(address.split("%")[0])  # a scope (fe80::1%eth0) is link-local anyway
    inner = []
    if ip.version == 6:
        if ip.ipv4_mapped:
            inner.append((ip.ipv4_mapped, "mapped into IPv6"))
        if ip.sixtofour:
            inner.append((ip.sixtofour, "in a 6to4 address"))
        if ip.teredo:
            inner.append((ip.teredo[1], "in a Teredo address"))
        if ip in NAT64:
            inner.append((ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "in a NAT64 address"))
    allowed = [ipaddress.ip_network(cidr) for cidr in allow_networks]
    if any(candidate in network for candidate in [ip, *(v4 for v4, _ in inner)] for network in allowed
           if candidate.version == network.version):
        return None
    for candidate, how in inner:
        kind = _kind(candidate)
        if kind:
            return f"{kind} (IPv4 {candidate} {how})"
    if ip.version == 6 and (ip.ipv4_mapped or ip in NAT64):  # judged by the IPv4 address alone (both reserved)
        return None
    return _kind(ip)


def _kind(ip) -> str | None:
    for test, kind in (("is_unspecified", "an unspecified"), ("is_loopback", "a loopback"),
                       ("is_link_local", "a link-local"), ("is_multicast", "a multicast"),
                       ("is_reserved", "a reserved"), ("is_private", "a private")):
        if getattr(ip, test):
            return f"{kind} address"
    if ip in CARRIER_GRADE_NAT:
        return "a carrier-grade NAT address"
    if not ip.is_global:
        return "a non-public address"
    return None


def checked_addresses(host: str, port: int, allow_networks=()) -> list[tuple]:
    """`host` resolved once; every address it resolves to checked (one refused address refuses the host). The
    getaddrinfo entries to connect to, so that the connection goes to an address that was checked."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        problem = address_problem(sockaddr[0], allow_networks)
        if problem:
            literal = host.strip("[]").lower() == sockaddr[0].lower()
            raise Refused(f"refused: {sockaddr[0]} is {problem}" if literal
                          else f"refused: {host} resolves to {sockaddr[0]}, {problem}")
    return infos


class _Checked:
    """An http.client connection that connects only to the checked addresses of its host (Host header, SNI and
    the certificate check still use the host's name)."""

    def __init__(self, *args, allow_networks=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(self._connect_checked, allow_networks)

    def _connect_checked(self, allow_networks, address, timeout, source_address=None):
        host, port = address
        error = None
        for family, kind, proto, _, sockaddr in checked_addresses(host, port, allow_networks):
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as failed:
                error = failed
                sock.close()
        raise error or OSError(f"{host} resolves to no address")


class _CheckedHTTP(_Checked, http.client.HTTPConnection):
    pass


class _CheckedHTTPS(_Checked, http.client.HTTPSConnection):
    pass


class _CheckedHandlers(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    def __init__(self, allow_networks):
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self.allow_networks = allow_networks

    def _open(self, connection, req, **kwargs):
        try:
            return self.do_open(functools.partial(connection, allow_networks=self.allow_networks), req, **kwargs)
        except Refused as error:
            if getattr(req, "redirected_from", None):
                raise Refused(f"{error} (redirected from {req.redirected_from} to {req.full_url})") from None
            raise

    def http_open(self, req):
        return self._open(_CheckedHTTP, req)

    def https_open(self, req):
        return self._open(_CheckedHTTPS, req, context=self._context)


class _OnlyHttpRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = 10

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in SCHEMES:
            raise Refused(f"redirected to a {urlsplit(newurl).scheme or 'relative'} URL, only http and https are "
                          f"fetched: {newurl}")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.redirected_from = req.full_url
        return new


@functools.lru_cache(maxsize=16)
def _opener(allow_networks: tuple[str, ...]) -> urllib.request.OpenerDirector:
    # no ProxyHandler: a proxy would make the connection, and its address is not the one to check
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _CheckedHandlers(allow_networks),
                                       _OnlyHttpRedirects)


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
    opener = _opener(config.allow_networks)
    try:
        with opener.open(request, timeout=config.timeout) as response, open(partial, "wb") as file:
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

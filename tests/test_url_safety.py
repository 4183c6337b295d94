"""URL rows kept off loopback, private and link-local networks (issue 38): the address check as a function (no
connection made), then the real downloader against the test's own HTTP server on 127.0.0.1, refused by default
and allowed by `allow_networks`. A guard makes any connection to an address that is not loopback fail the test,
so no traffic leaves the machine even if the check were broken (the redirects to 169.254.169.254 and 10.0.0.1)."""

import ipaddress
import socket
import threading
import time

import pytest

from lavie_model.curation.download import DownloadConfig, address_problem, download
from tests.test_download import LOOPBACK, Server, video  # noqa: F401 (the video fixture)

QUICK = DownloadConfig(workers=1, timeout=2.0, retries=0, backoff=0.0, max_bytes=1 << 20)
ALLOWED = DownloadConfig(workers=1, timeout=2.0, retries=0, backoff=0.0, max_bytes=1 << 20, allow_networks=LOOPBACK)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail the test on any connection to an address that is not loopback (the downloader itself is not mocked)."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if isinstance(address, tuple):
            ip = ipaddress.ip_address(address[0].split("%")[0])
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if not ip.is_loopback:
                raise AssertionError(f"a test connected to {address[0]}, which is not loopback")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def test_the_address_check_names_each_range():
    refused = {
        "10.0.0.1": "a private address", "172.16.5.4": "a private address", "192.168.1.1": "a private address",
        "fd00::1": "a private address", "169.254.169.254": "a link-local address", "fe80::1": "a link-local address",
        "127.0.0.1": "a loopback address", "127.0.0.2": "a loopback address", "::1": "a loopback address",
        "224.0.0.1": "a multicast address", "ff02::1": "a multicast address",
        "0.0.0.0": "an unspecified address", "::": "an unspecified address",
        "240.0.0.1": "a reserved address", "255.255.255.255": "a reserved address",
        "100.64.0.1": "a carrier-grade NAT address",
        "::ffff:169.254.169.254": "a link-local address (IPv4 169.254.169.254 mapped into IPv6)",
        "::ffff:10.0.0.1": "a private address (IPv4 10.0.0.1 mapped into IPv6)",
        "::ffff:127.0.0.1": "a loopback address (IPv4 127.0.0.1 mapped into IPv6)",
        "2002:a9fe:a9fe::1": "a link-local address (IPv4 169.254.169.254 in a 6to4 address)",
        "64:ff9b::a9fe:a9fe": "a link-local address (IPv4 169.254.169.254 in a NAT64 address)",
    }
    for address, kind in refused.items():
        assert address_problem(address) == kind, address
    for public in ("8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"):
        assert address_problem(public) is None, public
    # the allow-list admits its networks only (and IPv4 in its mapped IPv6 form)
    assert address_problem("10.1.2.3", ("10.1.2.0/24",)) is None
    assert address_problem("::ffff:10.1.2.3", ("10.1.2.0/24",)) is None
    assert address_problem("10.1.3.3", ("10.1.2.0/24",)) == "a private address"
    assert address_problem("169.254.169.254", ("10.1.2.0/24", "fd00::/8")) == "a link-local address"
    assert DownloadConfig(allow_networks=["10.1.2.3/24"]).allow_networks == ("10.1.2.0/24",)
    assert DownloadConfig().allow_networks == ()  # nothing allowed by default
    with pytest.raises(ValueError, match="'intranet' is not a network"):
        DownloadConfig(allow_networks=["intranet"])


def test_loopback_rows_are_refused_by_default_with_the_address_named(video, tmp_path):
    started = time.monotonic()
    with Server(video) as server:
        port = server.httpd.server_address[1]
        cases = {
            f"http://127.0.0.1:{port}/clip.mp4": "refused: 127.0.0.1 is a loopback address",
            f"http://localhost:{port}/clip.mp4": "refused: localhost resolves to ",
            f"https://localhost:{port}/clip.mp4": "refused: localhost resolves to ",  # checked before TLS too
            f"http://127.1:{port}/clip.mp4": "refused: 127.1 resolves to 127.0.0.1, a loopback address",
            f"http://[::1]:{port}/clip.mp4": "refused: ::1 is a loopback address",
            f"http://[::ffff:127.0.0.1]:{port}/clip.mp4":
                "refused: ::ffff:127.0.0.1 is a loopback address (IPv4 127.0.0.1 mapped into IPv6)",
            f"http://0.0.0.0:{port}/clip.mp4": "refused: 0.0.0.0 is an unspecified address",
        }
        for url, reason in cases.items():
            result = download(url, tmp_path / "store", QUICK)
            assert not result.ok and result.reason.startswith(reason) and result.attempts == 1, (url, result)
            assert "loopback address" in result.reason or "unspecified" in result.reason
        assert server.hits == {}  # no request reached the server
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
    assert time.monotonic() - started < 10


def test_the_allow_listed_server_downloads_and_redirects_off_it_are_refused(video, tmp_path):
    with Server(video) as server:
        ok = download(server.url("clip.mp4"), tmp_path / "store", ALLOWED)
        assert ok.ok and ok.bytes == len(video), ok
        assert download(server.url("redirect"), tmp_path / "store", ALLOWED).ok  # a redirect on the server
        cases = {
            "to-metadata": "refused: 169.254.169.254 is a link-local address (redirected from "
                           f"{server.url('to-metadata')} to http://169.254.169.254/latest/meta-data/",
            "to-private": f"refused: 10.0.0.1 is a private address (redirected from {server.url('to-private')}",
            "to-other-loopback": "refused: 127.0.0.2 is a loopback address (redirected from",
        }
        for path, reason in cases.items():
            result = download(server.url(path), tmp_path / "store", ALLOWED)
            assert not result.ok and result.reason.startswith(reason) and result.attempts == 1, (path, result)
            assert server.hits[f"/{path}"] == 1
        ipv6 = download(server.url("clip.mp4").replace("127.0.0.1", "[::1]"), tmp_path / "store", ALLOWED)
        assert not ipv6.ok and ipv6.reason == "refused: ::1 is a loopback address", ipv6  # not in the list
        loop = download(server.url("loop"), tmp_path / "store", ALLOWED)  # redirects are capped
        assert not loop.ok and "HTTP 302" in loop.reason and server.hits["/loop"] <= 11, loop
    assert [p.name for p in (tmp_path / "store").iterdir()] == [ok.path.rsplit("/", 1)[1]]  # nothing else stored


class Announcing(Server):
    """/announced.mp4 sends its headers (a Content-Length of 5 MiB), then holds the body until `release` is set."""

    def __init__(self, video: bytes):
        super().__init__(video)
        self.release, self.body_sent = threading.Event(), threading.Event()

    def route_announced(self, handler, count):
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", str(5 << 20))
        handler.end_headers()
        handler.wfile.flush()
        if self.release.wait(10):
            try:
                handler.wfile.write(b"\0" * (5 << 20))
                self.body_sent.set()
            except (BrokenPipeError, ConnectionResetError):
                pass


def test_a_content_length_over_max_bytes_is_refused_before_the_body(video, tmp_path):
    with Announcing(video) as server:
        started = time.monotonic()
        result = download(server.url("announced.mp4"), tmp_path / "store", ALLOWED)
        took = time.monotonic() - started
        body_sent = server.body_sent.is_set()
        server.release.set()
    assert not result.ok and result.attempts == 1, result
    assert result.reason == f"too large: {5 << 20} bytes announced, the limit is {1 << 20}"
    assert not body_sent and took < 5  # refused on the headers, while the body was still held back
    assert not any((tmp_path / "store").iterdir())  # no partial file left


def test_https_connects_to_the_checked_address_and_verifies_the_hostname(video, tmp_path, monkeypatch):
    """The connection goes to the checked 127.0.0.1 while SNI and the certificate check use the name: a
    certificate for `localhost` (trusted through SSL_CERT_FILE) verifies."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with Server(video) as server:
        server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
        url = f"https://localhost:{server.httpd.server_address[1]}/clip.mp4"
        allowed = DownloadConfig(timeout=2.0, retries=0, max_bytes=1 << 20, allow_networks=["127.0.0.1/32", "::1/128"])
        result = download(url, tmp_path / "store", allowed)
        assert result.ok and result.bytes == len(video), result
        assert not download(url, tmp_path / "other", QUICK).ok  # refused without the allow-list

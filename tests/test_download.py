"""Downloads from URL tables against a real HTTP server on 127.0.0.1: redirects, slow and dropped responses, a
404, a huge file, an HTML page posing as a video. The server is allowed explicitly (`allow_networks`): loopback is
refused by default (tests/test_url_safety.py). No test touches any other address."""

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lavie_model.curation.download import DownloadConfig, download, download_all
from lavie_model.video import write_video


class Server:
    """A local HTTP server whose routes misbehave on purpose; `hits` counts requests per path."""

    def __init__(self, video: bytes):
        self.video, self.hits, self.lock = video, {}, threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    count = server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = getattr(server, "route_" + self.path.strip("/").split(".")[0].replace("-", "_"), None)
                if route is None:
                    self.send_error(404, "Not Found")
                else:
                    route(self, count)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def send(self, handler, body: bytes, content_type="video/mp4", length: int | None = None):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        try:
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass

    def route_clip(self, handler, count):
        self.send(handler, self.video)

    def route_redirect(self, handler, count):
        handler.send_response(302)
        handler.send_header("Location", "/clip.mp4")
        handler.end_headers()

    def route_to_ftp(self, handler, count):
        handler.send_response(302)
        handler.send_header("Location", "ftp://127.0.0.1/clip.mp4")
        handler.end_headers()

    def redirect(self, handler, location: str):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.end_headers()

    # redirects off the server: refused before any connection (tests/test_url_safety.py guards that none is made)
    def route_to_metadata(self, handler, count):  # a cloud node's credentials
        self.redirect(handler, "http://169.254.169.254/latest/meta-data/iam/security-credentials/")

    def route_to_private(self, handler, count):
        self.redirect(handler, "http://10.0.0.1/clip.mp4")

    def route_to_other_loopback(self, handler, count):  # loopback, but not the allowed 127.0.0.1
        self.redirect(handler, f"http://127.0.0.2:{self.httpd.server_address[1]}/clip.mp4")

    def route_loop(self, handler, count):  # redirects to itself forever
        self.redirect(handler, "/loop")

    def route_page(self, handler, count):  # a video URL answered with a page and 200
        self.send(handler, b"<!DOCTYPE html><html><body>This video is no longer available</body></html>",
                  content_type="video/mp4")

    def route_huge(self, handler, count):  # announces 10 GB
        self.send(handler, self.video, length=10 << 30)

    def route_endless(self, handler, count):  # no length announced, more than any limit
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.end_headers()
        try:
            for _ in range(64):
                handler.wfile.write(b"\0" * (1 << 16))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def route_slow(self, handler, count):
        time.sleep(1.5)
        self.send(handler, self.video)

    def route_flaky(self, handler, count):  # the first answer stops halfway, the second is whole
        if count == 1:
            self.send(handler, self.video[:len(self.video) // 2], length=len(self.video))
            handler.close_connection = True
        else:
            self.send(handler, self.video)

    def route_drops(self, handler, count):  # always stops halfway
        self.send(handler, self.video[:100], length=len(self.video))
        handler.close_connection = True

    def route_unavailable(self, handler, count):
        handler.send_error(503, "Service Unavailable")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    import torch

    frames = torch.from_numpy(np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32))
    return write_video(frames, tmp_path_factory.mktemp("video") / "clip.mp4", fps=8).read_bytes()


LOOPBACK = ("127.0.0.1/32",)  # the test's own server, allowed explicitly
FAST = DownloadConfig(workers=4, timeout=0.5, retries=1, backoff=0.05, max_bytes=1 << 20, allow_networks=LOOPBACK)


def test_each_url_is_stored_by_content_or_fails_with_its_reason(video, tmp_path):
    with Server(video) as server:
        cases = {
            "clip.mp4": None, "redirect": None, "flaky.mp4": None,
            "missing.mp4": "HTTP 404", "page.mp4": "not a video", "huge.mp4": "too large: 10737418240 bytes",
            "endless.mp4": "too large: more than", "slow.mp4": "timed out", "drops.mp4": "connection failed",
            "unavailable.mp4": "HTTP 503", "to-ftp": "only http and https",
        }
        results = {path: download(server.url(path), tmp_path / "store", FAST) for path in cases}
        sha = hashlib.sha256(video).hexdigest()
        for path, reason in cases.items():
            result = results[path]
            if reason is None:
                assert result.ok and result.sha256 == sha and result.bytes == len(video), (path, result)
                assert Path(result.path) == tmp_path / "store" / f"{sha}.mp4"
            else:
                assert not result.ok and reason in result.reason and result.path is None, (path, result)
        assert results["flaky.mp4"].attempts == 2 and server.hits["/flaky.mp4"] == 2  # retried once
        assert results["missing.mp4"].attempts == 1 and server.hits["/missing.mp4"] == 1  # a 404 is not retried
        assert results["unavailable.mp4"].attempts == 2 and "after 2 attempts" in results["unavailable.mp4"].reason
    assert [p.name for p in (tmp_path / "store").iterdir()] == [f"{sha}.mp4"]  # one copy, no partial file
    for url in ("ftp://127.0.0.1/clip.mp4", "file:///etc/passwd", "clip.mp4", None):
        result = download(url, tmp_path / "store", FAST)
        assert not result.ok and "not an http or https URL" in result.reason and result.attempts == 0


def test_a_rerun_fetches_only_what_is_missing(video, tmp_path):
    with Server(video) as server:
        urls = [server.url("clip.mp4"), server.url("missing.mp4"), server.url("redirect"), server.url("clip.mp4")]
        first = download_all(urls, tmp_path, FAST)
        assert [r.ok for r in first] == [True, False, True, True]
        assert server.hits == {"/clip.mp4": 2, "/missing.mp4": 1, "/redirect": 1}  # the repeated URL once
        again = download_all(urls, tmp_path, FAST, done={r.url: r for r in first})
        assert [r.ok for r in again] == [True, False, True, True]
        assert server.hits == {"/clip.mp4": 2, "/missing.mp4": 2, "/redirect": 1}  # only the failure again

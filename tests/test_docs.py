"""The documentation site as a newcomer meets it: `make docs` builds it with no warning, and its pages render.

`mkdocs build --strict` fails on a broken link or anchor, a page missing from the navigation, a generated
reference whose code no longer imports, or an API entry whose object moved (mkdocs.yml, docs/hooks/generate.py).
Headless Chromium then loads the built home page and API reference page from a loopback http.server and
screenshots them.
"""

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1000", "--virtual-time-budget=10000"]

pytestmark = pytest.mark.xdist_group("docs")  # one build, shared by the tests of this file


def guides() -> dict[str, str]:
    """The guides of mkdocs.yml's navigation: title -> page."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    section = next(entry["Guides"] for entry in nav if isinstance(entry, dict) and "Guides" in entry)
    return {title: page for entry in section for title, page in entry.items()}


def html_page(page: str) -> str:
    return re.sub(r"\.md$", ".html", page)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as `make docs` builds it (the same command), into a folder of the test's own."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env=os.environ | {"NO_MKDOCS_2_WARNING": "1", "DAGSTER_HOME": str(ROOT / "dagster_home")})
    return out, build


def test_make_docs_builds_the_site_strictly_without_a_warning(site):
    out, build = site
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    assert "WARNING" not in build.stderr + build.stdout, build.stderr
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs: .*\n\tNO_MKDOCS_2_WARNING=1 \$\(VENV\)/bin/mkdocs build --strict$", make, re.M)
    assert "site/" in (ROOT / "mkdocs.yml").read_text() and "/site/" in (ROOT / ".gitignore").read_text().split()
    for page in ("index.html", "reference/cli.html", "reference/settings.html", "reference/presets.html",
                 "reference/api.html", "concepts/asset-graph.html", "concepts/asset-graph.svg", "benchmarks/index.html"):
        assert (out / page).is_file(), f"{page} was not built"


def test_the_generated_reference_pages_come_from_the_code(site):
    out, _ = site
    cli = (out / "reference" / "cli.html").read_text()
    for command in ("generate", "train", "plan", "assemble", "ingest", "lineage"):
        assert f'id="lavie-{command}"' in cli, f"lavie {command} is missing from the CLI reference"
    assert "--gradient-checkpointing" in cli and "--lora-targets" in cli
    settings = (out / "reference" / "settings.html").read_text()
    for name in ("TrainingSettings", "CurationSettings", "EvaluationSettings", "FilterSettings", "DownloadSettings",
                 "TrainSettings"):
        assert f"<code>{name}</code>" in settings, f"{name} is missing from the settings reference"
    assert "memory_limit_gb" in settings and "dedup_similarity" in settings
    presets = (out / "reference" / "presets.html").read_text()
    assert "model.unet_2d.block_out_channels" in presets
    svg = (out / "concepts" / "asset-graph.svg").read_text()
    for asset in ("raw_videos", "video_shards", "t2i_model", "base_model", "vsr_model", "promoted_model"):
        assert f">{asset}<" in svg, f"{asset} is missing from the asset graph"
    api = (out / "reference" / "api.html").read_text()
    assert "UNet3DConditionModel" in api and "LaVieCascadePipeline" in api and "from_pretrained_2d" in api
    # the tiny LaVie's status there is the card's, as the README's is (tests/test_motion_run.py)
    from lavie_model.tiny.tiny_lavie import lavie_root, status

    card = json.loads((lavie_root() / "card.json").read_text())
    tiny_world = " ".join(html.unescape(re.sub(r"<[^>]+>", "", (out / "guides" / "tiny-world.html").read_text())).split())
    for line in status(card):
        assert line.removeprefix("- ").replace("**", "") in tiny_world, "the tiny world page's status is not the card's"


class NavLinks(HTMLParser):
    """The links of the primary navigation (Material's `md-nav--primary`), with their text."""

    def __init__(self):
        super().__init__()
        self.depth, self.links, self.href, self.text = 0, {}, None, ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "nav" and "md-nav--primary" in (attrs.get("class") or ""):
            self.depth = 1
        elif self.depth and tag == "nav":
            self.depth += 1
        if self.depth and tag == "a":
            self.href, self.text = attrs.get("href"), ""

    def handle_endtag(self, tag):
        if self.depth and tag == "nav":
            self.depth -= 1
        if self.depth and tag == "a" and self.href is not None:
            self.links[" ".join(self.text.split())] = self.href
            self.href = None

    def handle_data(self, data):
        if self.href is not None:
            self.text += data


def nav_links(document: str) -> dict[str, str]:
    parser = NavLinks()
    parser.feed(document)
    return parser.links


def test_the_navigation_lists_every_guide(site):
    out, _ = site
    wanted = guides()
    assert {"Curate your videos", "URL tables", "Fine-tune LaVie on your clips", "Train on a cluster with Ray",
            "Deploy Dagster", "Evaluate and gate", "The tiny world and its models"} <= set(wanted)
    for page in ("index.html", "reference/api.html"):
        links = nav_links((out / page).read_text())
        for title, target in wanted.items():
            assert title in links, f"{page}: the navigation lacks the guide {title!r}"
            assert links[title].endswith(html_page(target)), (page, title, links[title])
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for target in wanted.values():
        assert f"(docs/{target})" in readme, f"README.md does not link the guide docs/{target}"


def screenshot(chromium: str, url: str, shot: Path, profile: Path) -> tuple[np.ndarray, str]:
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=180, check=True)
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    return np.asarray(Image.open(shot).convert("RGB")), dom


def test_the_home_and_api_pages_render_in_chromium_with_the_guides_in_the_navigation(site, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:  # a failure naming the program, not a skip: `make test` needs it, as .ci/run has it
        pytest.fail("`chromium` is not on PATH: this test screenshots the documentation site with Debian's headless "
                    "Chromium. Install it with `apt-get install chromium` (.ci/run does where it is missing).",
                    pytrace=False)
    out, build = site
    assert build.returncode == 0, build.stderr
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        for page in ("index.html", "reference/api.html"):
            pixels, dom = screenshot(chromium, f"http://127.0.0.1:{port}/{page}", tmp_path / f"{page.replace('/', '-')}.png",
                                     tmp_path / "chromium")
            assert pixels.shape[:2] == (1000, 1600)
            assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, f"{page}: a blank page"
            # the rendered page (after Material's scripts ran) shows the guides in its navigation
            links = nav_links(dom)
            for title in guides():
                assert title in links, f"{page} as Chromium rendered it: the navigation lacks {title!r}"
        assert "UNet3DConditionModel" in dom  # the API page's own content rendered
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

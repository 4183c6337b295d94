"""`make ui` as a person meets it: the Dagster UI answers, shows the whole asset graph, and renders it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
QUERY = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1000", "--virtual-time-budget=30000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def test_the_ui_shows_the_asset_graph_from_shards_to_models_to_evaluation(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:  # a failure naming the program, not a skip: `make test` needs it, as .ci/run has it
        pytest.fail("`chromium` is not on PATH: this test screenshots the asset graph with Debian's headless "
                    "Chromium. Install it with `apt-get install chromium` (.ci/run does where it is missing).",
                    pytrace=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    port = free_port()
    # as `make ui` starts it, in its own process group so that all its children stop with it
    server = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                               "-h", "127.0.0.1", "-p", str(port)],
                              cwd=ROOT, env=os.environ | {"DAGSTER_HOME": str(home), "LAVIE_HOME": str(tmp_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, nodes = time.time() + 300, None
        while time.time() < deadline and nodes is None:
            assert server.poll() is None, "dagster dev exited"
            try:
                nodes = graphql(port, QUERY)["assetNodes"]
            except (OSError, KeyError, TypeError, ValueError):
                time.sleep(2)
        assert nodes, "the UI did not answer within 5 minutes"
        groups = {node["assetKey"]["path"][-1]: node["groupName"] for node in nodes}
        assert {"curation", "pretraining", "training", "evaluation", "ablations"} <= set(groups.values())
        deps = {node["assetKey"]["path"][-1]: {d["path"][-1] for d in node["dependencyKeys"]} for node in nodes}
        assert {"video_shards", "image_shards"} <= deps["autoencoders"]
        assert "autoencoders" in deps["t2i_model"] and "autoencoders" in deps["upscaler_model"]
        assert {"t2i_model", "upscaler_model"} <= deps["base_model"] and "base_model" in deps["interpolation_model"]
        assert "interpolation_model" in deps["vsr_model"] and "vsr_model" in deps["evaluation"]
        assert "evaluation" in deps["promoted_model"] and "filtered_clips" in deps["video_shards"]
        for ablation in ("temporal_module_ablation", "joint_training_ablation"):
            assert groups[ablation] == "ablations" and {"t2i_model", "video_shards", "image_shards"} <= deps[ablation]

        shot = tmp_path / "asset-graph.png"
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                        f"--screenshot={shot}", f"http://127.0.0.1:{port}/locations/pipelines.definitions/asset-groups/training/lineage"],
                       capture_output=True, timeout=180, check=True)
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[:2] == (1000, 1600)
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not a blank page
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

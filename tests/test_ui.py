"""`make ui` as a person meets it: the Dagster UI answers, shows the whole asset graph, and renders it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.ui import alive
from postgres import free_port

ROOT = Path(__file__).resolve().parents[1]
QUERY = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1000", "--virtual-time-budget=30000"]


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
    # the command `make ui` runs (`dg dev` under pipelines/ui.py), in its own process group so that all of it stops
    server = subprocess.Popen([sys.executable, "-m", "pipelines.ui", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=ROOT, env=os.environ | {"DAGSTER_HOME": str(home), "LAVIE_HOME": str(tmp_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, nodes = time.time() + 300, None
        while time.time() < deadline and nodes is None:
            assert server.poll() is None, "the UI (dg dev) exited"
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


def test_make_ui_serves_dg_dev_on_loopback_from_the_sqlite_instance(monkeypatch):
    from pipelines.ui import dev_command

    monkeypatch.setenv("DAGSTER_HOME", str(ROOT / "dagster_home" / "postgres"))  # make ui overrides it
    recipe = subprocess.run(["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "-m pipelines.ui --host 127.0.0.1 --port 3000" in recipe
    home = subprocess.run(["make", "-s", "--eval", "print-home: ; @echo $$DAGSTER_HOME", "print-home"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert home == str(ROOT / "dagster_home") and "sqlite:" in (ROOT / "dagster_home" / "dagster.yaml").read_text()
    command = dev_command("127.0.0.1", 3000)
    assert Path(command[0]).name == "dg" and Path(command[0]).exists(), "dagster-dg-cli is not installed"
    assert command[1:] == ["dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", "3000"]


@pytest.mark.parametrize("sig,sigint_ignored", [
    ("SIGINT", False),  # Ctrl-C in a terminal
    ("SIGINT", True),  # `make ui &` from a script: SIGINT ignored from the start, as such a shell leaves it
    ("SIGTERM", True),  # Dagster maps SIGTERM onto SIGINT's disposition: ignored too, before pipelines/ui.py
])
def test_make_ui_stops_entirely_within_5_s_of_a_signal_to_its_process_group(tmp_path, sig, sigint_ignored):
    import psutil

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    port = free_port()
    venv = Path(sys.prefix)  # this interpreter's venv, as `make ui` runs it; -o: no reinstall on the way
    make = ["make", "-o", str(venv / ".installed"), "ui", f"VENV={venv}", f"UI_PORT={port}", f"DAGSTER_HOME={home}"]
    ui = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$@"', "sh", *make] if sigint_ignored else make, cwd=ROOT,
                          env=os.environ | {"LAVIE_HOME": str(tmp_path / "data")}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    tree = []
    try:
        deadline = time.monotonic() + 150
        while True:
            assert ui.poll() is None, "make ui exited"
            assert time.monotonic() < deadline, "the UI did not answer within 150 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
                    assert json.loads(response.read())["dagster_webserver_version"]
                break
            except OSError:
                time.sleep(0.5)
        tree = [psutil.Process(ui.pid), *psutil.Process(ui.pid).children(recursive=True)]
        commands = " ".join(" ".join(process.cmdline()) for process in tree)
        for part in ("pipelines.ui", "dg dev", "dagster_webserver", "dagster._daemon", "code-server", "api grpc"):
            assert part in commands, f"{part} is not in the process tree of make ui"

        os.killpg(ui.pid, getattr(signal, sig))
        stopped = time.monotonic()
        while alive(tree) and time.monotonic() - stopped < 5:
            time.sleep(0.05)
            ui.poll()  # reaps make when it exits
        left = [" ".join(process.cmdline()) for process in alive(tree)]
        assert not left, f"still running 5 s after {sig}: {left}"
        assert ui.wait(timeout=1) != 0  # make ui says it was stopped
    finally:
        for process in alive(tree):
            process.kill()
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()


def test_dg_check_defs_validates_the_code_location(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    result = subprocess.run([str(Path(sys.executable).parent / "dg"), "check", "defs"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=os.environ | {"DAGSTER_HOME": str(home),
                                                                      "LAVIE_HOME": str(tmp_path / "data")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr

"""The README's and the docs pages' commands: each parses with the real command-line interface, and each is run
somewhere.

Every command line in the bash blocks of README.md and of every page under docs/ (the documentation site) must
appear in RUN_BY with the test (or `make demo`) that runs it; `lavie` lines are parsed with the real `lavie` parser
(options and choices must exist), Make targets must exist in the Makefile, and benchmark options in the script.
"""

import re
import shlex
from pathlib import Path

import pytest

from lavie_model.cli import build_parser
from pipelines.cli import add_data_commands

ROOT = Path(__file__).resolve().parent.parent

# command -> where it runs (file::test, or make demo); the key is the program and its first word
RUN_BY = {
    "make demo": "make demo",  # measured for each release: about 20 minutes
    "make pretrain": "make pretrain",  # run to build the shipped stand-ins; their MODEL_CARD.md records it
    "make test": ".ci/run",
    "make ablations": "make ablations",  # measured for the README's tables: about 24 minutes
    "python -m pipelines.ablate": "make ablations",
    "make docs": "tests/test_docs.py::test_make_docs_builds_the_site_strictly_without_a_warning",
    "make ui": "tests/test_ui.py::test_the_ui_shows_the_asset_graph_from_shards_to_models_to_evaluation",
    "lavie init-tiny": "tests/conftest.py::tiny_folder",
    "lavie generate": "tests/test_pipelines.py::test_cli_runs_the_whole_cascade",
    "lavie assemble": "tests/test_assemble.py::test_assemble_and_generate",
    "lavie ingest": "tests/test_curation_assets.py::test_lavie_ingest_registers_a_partition",
    "lavie lineage": "tests/test_curation_assets.py::test_lavie_lineage_traces_a_sample_to_its_source",
    "lavie train": "tests/test_training.py::test_each_stage_trains_on_the_demo_shards_and_its_loss_falls",
    "lavie merge-lora": "tests/test_lora.py::test_an_adapter_at_scale_zero_is_the_base_and_at_one_the_merged_folder",
    "lavie train-vae": "tests/test_training.py::test_lavie_train_vae_trains_both_autoencoders",
    "lavie convert-checkpoint": "tests/test_project.py::test_the_lavie_console_script_converts_a_checkpoint",
    "deepspeed": "tests/test_training.py::test_two_ranks_see_different_samples_and_keep_identical_weights",
    "python -m lavie_model.curation.demo_corpus": "tests/test_curation_core.py::test_demo_corpus_command_line",
    "dagster asset materialize": "tests/test_curation_assets.py::test_two_batches_curate_at_once_under_the_multiprocess_executor",
    "dagster dev": "tests/test_ui.py::test_the_ui_shows_the_asset_graph_from_shards_to_models_to_evaluation",
    "dagster definitions validate": "tests/test_project.py::test_the_code_location_validates",
    "export": None,  # environment only
    **{f"python benchmarks/{name}.py": "tests/test_benchmarks.py::test_each_benchmark_runs_at_its_smallest_size"
       for name in ("unet_step", "generate", "curation", "deepspeed_overhead", "data_loader", "latents_vs_pixels",
                    "lora_vs_full", "plan_calibration", "motion_speed", "code_location")},
    # paper-size runs on a GPU by hand; their functions run in the device check's --smoke
    **{f"python benchmarks/{name}.py": "tests/test_benchmarks.py::test_device_check_smoke_reports_every_section"
       for name in ("paper_step", "cascade_sampling")},
    "lavie plan": "tests/test_plan.py::test_lavie_plan_says_whether_a_run_fits_and_what_to_change",
    # needs the LAVIE_HOME of a `make demo` run: measured by hand for the README's figures
    "python benchmarks/lora_concept.py": "by hand, after make demo",
    "python benchmarks/shapes_learning.py": "tests/test_benchmarks.py::test_shapes_learning_curve_runs_at_its_smallest_size",
    "python benchmarks/motion_sweep.py":
        "tests/test_benchmarks.py::test_motion_sweep_smoke_scores_both_stages_and_ships_the_best",
    "python -m lavie_model.tiny.tiny_lavie": "tests/test_motion.py::test_tiny_lavie_cascade_score_and_ship",
    "make motion": "tests/test_motion_run.py::test_a_stretch_resumes_its_run_and_is_recorded_in_the_card",
    "python benchmarks/motion_levers.py": "tests/test_benchmarks.py::test_motion_levers_resume_and_share_the_start_scores",
    # the GPU check's script in its --smoke mode; the GPU run itself by hand, on a GPU
    "make gpu-check": "tests/test_benchmarks.py::test_device_check_smoke_reports_every_section",
    "python benchmarks/device_check.py": "tests/test_benchmarks.py::test_device_check_smoke_reports_every_section",
    # the docs pages' commands (docs/cluster.md, docs/deploying.md)
    "python -m lavie_model.cluster.ray_cluster":
        "tests/test_ray.py::test_the_cluster_listens_on_loopback_only_and_wants_its_token",
    "dagster sensor": "tests/test_postgres_instance.py::test_runs_event_logs_and_sensor_state_live_in_postgres",
    "srun": "tests/test_training.py::test_one_deepspeed_launcher_per_node_without_ssh_forms_one_world",  # its launchers
    "sudo": None,  # PostgreSQL's own tools, on the server (tests/postgres.py makes its throwaway server with initdb)
    "tensorboard": None,  # reads RUN_DIR/tensorboard, which tests/test_training.py checks
}


def documents() -> list[Path]:
    """README.md and every page of the documentation site (docs/, its build hooks aside)."""
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)]


def readme_commands() -> list[str]:
    """Every command line of the bash blocks of the README and the docs pages, continuation lines joined, comments
    removed. Other blocks (sh, yaml, ini, python, text) are files or output, not commands."""
    lines = []
    for document in documents():
        for block in re.findall(r"```bash\n(.*?)```", document.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s+)#.*$", "", line).strip()
                if line and line not in lines:
                    lines.append(line)
    return lines


def words(line: str) -> list[str]:
    """The line's words without environment assignments and with programs named plainly (no .venv/bin/)."""
    out = [re.sub(r"^\S*\.venv/bin/", "", w) for w in shlex.split(line)]
    while out and re.fullmatch(r"[A-Z_]+=\S*", out[0]):
        out = out[1:]
    return out


def key(line: str) -> str:
    w = words(line)
    if w[0] == "python":
        return " ".join(w[:3] if w[1] == "-m" else w[:2])
    if w[0] == "dagster":
        return " ".join(w[:3] if w[1] in ("asset", "definitions") else w[:2])
    return " ".join(w[:2]) if w[0] in ("lavie", "make") else w[0]


def concrete(args: list[str]) -> list[str]:
    """Placeholders made concrete: `[optional]` groups dropped, `a|b|c` choices as their first."""
    out, depth = [], 0
    for arg in args:
        depth += arg.count("[")
        if depth == 0:
            out.append(arg.split("|")[0] if "|" in arg and not arg.startswith("-") else arg)
        depth -= arg.count("]")
    return out


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_is_valid_and_run_somewhere(line):
    name = key(line)
    assert name in RUN_BY, f"README or docs command {line!r}: add it to RUN_BY with the test that runs it"
    where = RUN_BY[name]
    if where and "::" in where:
        path, test = where.split("::")
        assert f"def {test}(" in (ROOT / path).read_text(), f"{where} does not exist"
    w = words(line)
    lavie_args = w[1:] if w[0] == "lavie" else w[w.index("lavie_model.cli") + 1:] if "lavie_model.cli" in w else None
    if lavie_args is not None and "..." not in lavie_args:  # "..." abbreviates arguments shown on another line
        parser = build_parser(add_data_commands)
        parser.exit_on_error = False
        parser.parse_args(concrete(lavie_args))  # exits on an unknown option, a bad choice or a missing argument
    elif w[0] == "make":
        assert re.search(rf"^{w[1]}:", (ROOT / "Makefile").read_text(), re.M)
    elif w[0] == "python" and w[1].startswith("benchmarks/"):
        script = (ROOT / w[1]).read_text() + (ROOT / "benchmarks" / "common.py").read_text()  # its shared options
        for option in (a.strip("[]") for a in w[2:] if a.strip("[]").startswith("--")):
            assert f'"{option}"' in script, f"{w[1]} has no option {option}"

"""make demo's terminal: a line per step, all other output (its own, its logging, a child process's) in the log."""

import subprocess
import sys
import textwrap

from pipelines.console import training_progress

SCRIPT = textwrap.dedent("""
    import logging, subprocess, sys
    from pathlib import Path
    from pipelines.console import Console, lines_in

    logging.basicConfig(level=logging.DEBUG)  # a handler holding sys.stderr, as Dagster's console logger does
    root = Path(sys.argv[1])
    console = Console(root / "logs" / "demo.log")
    counter = root / "progress.txt"
    with console.step("train base", total=3, progress=lambda: lines_in(counter)):
        print("a print from the step")
        logging.getLogger("dagster").debug("a Dagster event")
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
        counter.write_text("1\\n2\\n3\\n")
    print("the terminal again")
    with console.step("evaluate"):
        print("the last thing it said")
        raise RuntimeError("boom")
""")


def test_steps_send_all_output_to_the_log_and_print_one_line_each(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    out = done.stdout
    assert "done  train base (" in out and "3/3 steps" in out and "the terminal again" in out
    assert not any(text in out + done.stderr.split("Traceback")[0]
                   for text in ("a print from the step", "a Dagster event", "child out", "child err"))
    log = (tmp_path / "logs" / "demo.log").read_text()
    assert "===== train base =====" in log
    assert all(text in log for text in ("a print from the step", "a Dagster event", "child out", "child err"))
    # a failing step shows the end of the log and where the rest is, and the error goes on
    assert done.returncode == 1 and "RuntimeError: boom" in done.stderr
    assert "FAILED  evaluate" in out and "        the last thing it said" in out
    assert str(tmp_path / "logs" / "demo.log") in out


def test_training_progress_follows_the_newest_run(tmp_path):
    progress = training_progress(tmp_path, "base", since=0)
    assert progress() == 0
    run = tmp_path / "training" / "base" / "run-1"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert progress() == 2

"""What loading the Dagster code location costs each process of a deployment (the code server on each reload, each
run worker, each step, `dg check defs`): wall time and peak resident memory of a fresh interpreter importing
`pipelines.definitions` and building its asset graph, against the same with the ML stack it leaves to the asset
bodies (torch, diffusers, transformers, open_clip, deepspeed, webdataset) imported as well, which is what every one
of those processes paid before. Fresh interpreters in alternating order, the median of `--repeats`.

    python benchmarks/code_location.py --repeats 5
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML_STACK = ("torch", "diffusers", "transformers", "open_clip", "deepspeed", "webdataset")
VARIANTS = {
    "code location": "import pipelines.definitions as d; d.defs.resolve_asset_graph()",
    "code location + ML stack": "import pipelines.definitions as d; d.defs.resolve_asset_graph(); "
                                + "; ".join(f"import {name}" for name in ML_STACK),
}


def measure(code: str) -> tuple[float, float]:
    """(seconds, peak resident MB) of one fresh interpreter running `code`."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + "; import resource; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - began, int(done.stdout.split()[-1]) / 1024  # ru_maxrss: KB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, code in VARIANTS.items():
            runs[name].append(measure(code))
    light, heavy = (statistics.median(s for s, _ in runs[name]) for name in VARIANTS)
    print("| process imports | median s | peak MB |\n|---|---|---|")
    for name in VARIANTS:
        print(f"| {name} | {statistics.median(s for s, _ in runs[name]):.2f} | {max(m for _, m in runs[name]):.0f} |")
    print(f"\ncode location + ML stack / code location: {heavy / light:.1f}x the time")


if __name__ == "__main__":
    main()

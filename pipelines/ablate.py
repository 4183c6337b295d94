"""`make ablations`: the paper's two findings on the tiny world, as the ablation assets run them.

Curates the embedded corpus (as make demo does), passes the shipped stand-ins through (autoencoders, t2i_model),
then materializes temporal_module_ablation and joint_training_ablation with AblationSettings (the CPU budget by
default) and prints each table beside its chance level and where the reports are.

    python -m pipelines.ablate [--steps N] [--evals 0,30,60] [--seeds 0,1,2] [--samples-per-prompt 2]
        [--device cpu|cuda] [--only NAME]
"""

import argparse
import time

import dagster as dg

from lavie_model.curation import store

from .ablations import ABLATION_ASSETS, AblationSettings
from .console import Console
from .demo import curate_corpus
from .pretraining import autoencoders, t2i_model
from .training import TrainingSettings


def numbers(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def main(argv=None) -> None:
    defaults = AblationSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps of each run")
    parser.add_argument("--evals", type=numbers, default=None,
                        help="step counts each run is scored at (default: 0, half way and the end)")
    parser.add_argument("--seeds", type=numbers, default=defaults.seeds)
    parser.add_argument("--samples-per-prompt", type=int, default=defaults.samples_per_prompt)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--only", choices=[asset.key.path[-1] for asset in ABLATION_ASSETS],
                        help="run one ablation asset")
    args = parser.parse_args(argv)
    evals = args.evals if args.evals is not None else sorted({0, args.steps // 2, args.steps})
    start = time.time()
    home = store.lavie_home()
    console = Console(home / "logs" / "ablations.log")
    console.print(f"make ablations: the paper's two findings on the tiny world (full log: {console.log_path})")
    instance = dg.DagsterInstance.get()
    with console.step("build and curate the corpus"):
        curate_corpus(instance, home, lambda note: None)
    with console.step("the text-to-image stand-in"):
        dg.materialize([autoencoders, t2i_model], instance=instance,
                       resources={"training": TrainingSettings(), "pipes": dg.PipesSubprocessClient()})
    settings = AblationSettings(steps=args.steps, evals=evals, seeds=args.seeds, device=args.device,
                                samples_per_prompt=args.samples_per_prompt)
    for asset in ABLATION_ASSETS:
        name = asset.key.path[-1]
        if args.only and name != args.only:
            continue
        with console.step(f"{name}: {args.steps} steps x {len(args.seeds)} seeds per variant"):
            result = dg.materialize([asset], instance=instance, resources={"ablations": settings})
        metadata = result.asset_materializations_for_node(asset.op.name)[0].metadata
        console.print("")
        console.print(metadata["table"].value)
        console.print(f"  report: {metadata['report'].value}")
        console.print("")
    console.print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

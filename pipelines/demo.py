"""`make demo`: build the embedded corpus, curate it, fine-tune the tiny cascade from the pretrained stand-ins,
evaluate and promote it, and generate a sample.

The cascade starts as a user's fine-tuning of the released LaVie does: from the shipped tiny LaVie's base and
interpolation UNets (lavie_model/pretrained/tiny/lavie), the super-resolution UNet inflated from the x4 upscaler
stand-in. The corpus holds what that model never saw (big shapes, "a big red circle ..."); the evaluation scores
the fine-tuned cascade beside the start model on it and on everything else. Runs go into the Dagster instance under
DAGSTER_HOME, so they show in the UI; data goes under LAVIE_HOME. The terminal shows a line per step; the
whole output (Dagster's events, the DeepSpeed launcher) goes to LAVIE_HOME/logs/demo.log. Rerunning
re-materializes the same batches (the store keeps each file once) and trains again.
"""

import time
from pathlib import Path

import dagster as dg

from lavie_model.curation import store
from lavie_model.curation.demo_corpus import build_demo_corpus
from lavie_model.curation.probe import sha256_of
from lavie_model.generate import generate
from lavie_model.report import funnel, funnel_line, summary_rows, table, write_report
from lavie_model.tiny.stand_ins import SHIPPED

from .console import Console, training_progress
from .curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings, image_batches, video_batches
from .evaluation import EVALUATION_ASSETS, EvaluationSettings
from .latents import IMAGE_LATENT_ASSETS, VIDEO_LATENT_ASSETS
from .pretraining import PRETRAINING_ASSETS
from .training import TRAINING_ASSETS, TrainingSettings

ASSETS = {"videos": (VIDEO_ASSETS, video_batches), "images": (IMAGE_ASSETS, image_batches)}
# Optimizer steps per stage, of batches of 8: the base stage gets most of the demo's time on two cores. Read from
# precomputed latents a step takes 1/1.16 (base), 1/1.15 (interpolation) and 1/1.44 (vsr) of its time on pixels
# (benchmarks/latents_vs_pixels.py), so the same minutes hold these steps instead of 200, 40 and 20.
DEMO_STEPS = {"base": 230, "interpolation": 46, "vsr": 28}
# A fine-tuning rate for a trained cascade: the temporal layers at half the shipped tiny LaVie's pretraining rate
# (1e-3), the 2D weights at 1.5e-4 (the new word "big" is learned there). At the preset's 2e-3 (a rate for
# temporal layers trained from identity) the base stage learned the word as well, but its direction fell from the
# start model's 7/16 to 3/16.
DEMO_OVERRIDES = ["batch_size=8", "learning_rate=5e-4", "lr_2d_scale=0.3"]
PROMPT = "a red circle moving left on a gray background"
SAMPLE_STEPS = 25  # denoising steps per stage for the sample
DEMO_EVALUATION = dict(samples_per_prompt=4, validation_clips=4, base_steps=20, interpolation_steps=8, vsr_steps=8)


def batches_of(folder, kind, home) -> list[str]:
    """The batch keys holding the files of `folder`, ingesting those not yet ingested."""
    store.ingest([folder], kind=kind, home=home)
    known = store.ingested_hashes(kind, home)
    files = store.expand([folder], store.KINDS[kind], [])
    return sorted({known[sha256_of(path)] for path in files})


def curate_corpus(instance, home: Path, say=print) -> list[Path]:
    """Build the embedded corpus when missing, ingest it and materialize the curation assets of each batch;
    returns the batch folders. `say` gets the funnel of each."""
    corpus = home / "demo-corpus"
    if not corpus.exists():
        build_demo_corpus(corpus)
    settings = CurationSettings()
    batches = []
    for kind, (assets, partitions) in ASSETS.items():
        for key in batches_of(corpus / kind, kind, home):
            instance.add_dynamic_partitions(partitions.name, [key])
            dg.materialize(assets, partition_key=key, instance=instance, resources={"settings": settings})
            batches.append(home / "curation" / key)
            counts = funnel(batches[-1])
            say(f"{kind} batch {key}: {funnel_line(counts)}")
            for name, reason in counts.get("quarantined", []):
                say(f"  quarantined {name}: {reason}")
    return batches


def main() -> None:
    start = time.time()
    home = store.lavie_home()
    console = Console(home / "logs" / "demo.log")
    console.print(f"make demo: the tiny cascade on the embedded corpus (full log: {console.log_path})")
    instance = dg.DagsterInstance.get()
    notes = []
    with console.step("build and curate the corpus"):
        batches = curate_corpus(instance, home, notes.append)
    for note in notes:
        console.print(f"        {note}")
    resources = {"training": TrainingSettings(max_steps=DEMO_STEPS, overrides=DEMO_OVERRIDES),
                 "pipes": dg.PipesSubprocessClient()}
    with console.step("pretrained stand-ins (shipped)"):
        dg.materialize(PRETRAINING_ASSETS, instance=instance, resources=resources)
    with console.step("precompute latents (VAE and text encoder, once)"):
        for assets, partitions in ((VIDEO_LATENT_ASSETS, video_batches), (IMAGE_LATENT_ASSETS, image_batches)):
            for key in sorted({b.name for b in batches} & set(instance.get_dynamic_partitions(partitions.name))):
                dg.materialize(assets, partition_key=key, instance=instance, resources=resources)
    runs = {}
    for asset in TRAINING_ASSETS:
        stage = asset.key.path[-1].removesuffix("_model")
        with console.step(f"fine-tune {stage}", DEMO_STEPS[stage], training_progress(home, stage, time.time())):
            result = dg.materialize([asset], instance=instance, resources=resources)
        metadata = result.asset_materializations_for_node(asset.op.name)[0].metadata
        runs[stage] = Path(metadata["run_dir"].value)
        model = Path(metadata["model_folder"].value)
    with console.step("evaluate and promote"):
        evaluation, promoted = evaluate(instance)
    sample = home / "demo-sample.gif"
    with console.step("sample through the promoted cascade" if promoted else "sample through the candidate"):
        generate(model=store.promoted_path(home) if promoted else model, prompt=PROMPT, output=sample,
                 steps=SAMPLE_STEPS)
    commands = {"open the Dagster UI (asset graph, lineage, materializations)": "make ui",
                "generate with the promoted model": f".venv/bin/lavie generate --prompt '{PROMPT}' --output out.gif",
                "trace a shard sample to its source": ".venv/bin/lavie lineage KEY"}
    report = write_report(home / "report", batches, runs, evaluation, sample, pretrained=SHIPPED / "tiny",
                          title="make demo: the tiny cascade on the embedded corpus", commands=commands)
    console.print("")
    console.print(table(summary_rows(evaluation)))
    console.print("rates: hits/samples (95% Wilson interval); a rate beats chance only where its whole interval lies "
                  "above it")
    console.print("interpolation: beside each blend clip by clip; it beats one only where it is ahead on more than "
                  "half the clips and on average, both beyond their 95% intervals (\"not shown\" on a few clips "
                  "passes the gate; \"NO\", a blend better beyond the interval, is refused)")
    console.print("")
    if not promoted:
        console.print("not promoted: a stage fell short of its baseline or regressed (see the report)")
    console.print(f"done in {time.time() - start:.0f} s. Where to look:")
    console.print(f"  report:   {report} (curation funnel, loss curves, metrics beside baselines, GIFs)")
    console.print(f"  log:      {console.log_path}")
    console.print(f"  shards:   {home / 'shards'}")
    console.print(f"  tables:   {home / 'curation'} (Parquet, one folder per batch)")
    console.print(f"  training: {home / 'training'} (per stage and run: metrics.jsonl, checkpoints/, model/)")
    console.print(f"  model:    {model}" + (f" (promoted: {store.promoted_path(home)})" if promoted else ""))
    console.print(f"  sample:   {sample}")
    console.print("  lineage:  .venv/bin/lavie lineage KEY   (KEY: any sample key listed in a shard's .json manifest)")
    console.print("  the UI:   make ui   (127.0.0.1:3000: asset graph, materializations, metrics, gallery)")


def evaluate(instance) -> tuple[Path, bool]:
    """Score the trained cascade and promote it when no stage falls short of its baseline and nothing regressed;
    returns the evaluation folder and whether it was promoted."""
    result = dg.materialize(EVALUATION_ASSETS, instance=instance, raise_on_error=False,
                            resources={"evaluation_settings": EvaluationSettings(**DEMO_EVALUATION)})
    metadata = result.asset_materializations_for_node("evaluation")[0].metadata
    promoted = all(check.passed for check in result.get_asset_check_evaluations())
    return Path(metadata["report"].value).parent, promoted


if __name__ == "__main__":
    main()

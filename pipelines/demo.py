"""`make demo`: build the embedded corpus, ingest and curate it, train the tiny cascade, generate a sample.

Runs go into the Dagster instance under DAGSTER_HOME, so they show in the UI; data goes under LAVIE_HOME.
Rerunning re-materializes the same batches (the store keeps each file once).
"""

import time
from pathlib import Path

import dagster as dg

from lavie_model.curation import store
from lavie_model.curation.demo_corpus import build_demo_corpus
from lavie_model.curation.probe import sha256_of
from lavie_model.generate import generate
from lavie_model.report import funnel, funnel_line, write_report

from .curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings, image_batches, video_batches
from .evaluation import EVALUATION_ASSETS, EvaluationSettings
from .training import TRAINING_ASSETS, TrainingSettings

ASSETS = {"videos": (VIDEO_ASSETS, video_batches), "images": (IMAGE_ASSETS, image_batches)}
# Optimizer steps per stage, of batches of 8: the base stage gets most of the demo's time on two cores.
DEMO_STEPS = {"base": 150, "interpolation": 15, "vsr": 20}
DEMO_OVERRIDES = ["batch_size=8"]
VAE_STEPS = 120
PROMPT = "a red circle moving left on a gray background"
SAMPLE_STEPS = 25  # denoising steps per stage for the sample
DEMO_EVALUATION = dict(samples_per_prompt=2, validation_clips=4, base_steps=20, interpolation_steps=8, vsr_steps=8)


def batches_of(folder, kind, home) -> list[str]:
    """The batch keys holding the files of `folder`, ingesting those not yet ingested."""
    store.ingest([folder], kind=kind, home=home)
    known = store.ingested_hashes(kind, home)
    files = store.expand([folder], store.KINDS[kind], [])
    return sorted({known[sha256_of(path)] for path in files})


def main() -> None:
    start = time.time()
    home = store.lavie_home()
    corpus = home / "demo-corpus"
    if not corpus.exists():
        print(f"building the demo corpus in {corpus}")
        build_demo_corpus(corpus)
    instance = dg.DagsterInstance.get()
    settings = CurationSettings()
    batches = []
    for kind, (assets, partitions) in ASSETS.items():
        for key in batches_of(corpus / kind, kind, home):
            instance.add_dynamic_partitions(partitions.name, [key])
            print(f"curating {kind} batch {key}")
            dg.materialize(assets, partition_key=key, instance=instance, resources={"settings": settings})
            batches.append(home / "curation" / key)
            counts = funnel(batches[-1])
            print(f"  {funnel_line(counts)}")
            for name, reason in counts.get("quarantined", []):
                print(f"  quarantined {name}: {reason}")
    model, runs = train(instance)
    evaluation = evaluate(instance)
    sample = home / "demo-sample.gif"
    print(f"generating {PROMPT!r} through the promoted cascade")
    generate(model=store.promoted_path(home), prompt=PROMPT, output=sample, steps=SAMPLE_STEPS)
    commands = {"open the Dagster UI (asset graph, lineage, materializations)": "make ui",
                "generate with the promoted model": f".venv/bin/lavie generate --prompt '{PROMPT}' --output out.gif",
                "trace a shard sample to its source": ".venv/bin/lavie lineage KEY"}
    report = write_report(home / "report", batches, runs, model, evaluation, sample,
                          title="make demo: the tiny cascade on the embedded corpus", commands=commands)
    print(f"\ndone in {time.time() - start:.0f} s. Where to look:")
    print(f"  report:   {report} (curation funnel, loss curves, metrics, prompt adherence, GIFs)")
    print(f"  shards:   {home / 'shards'}")
    print(f"  tables:   {home / 'curation'} (Parquet, one folder per batch)")
    print(f"  training: {home / 'training'} (per stage and run: metrics.jsonl, checkpoints/, model/)")
    print(f"  model:    {model} (the trained cascade, promoted: {store.promoted_path(home)})")
    print(f"  sample:   {sample}")
    print("  lineage:  .venv/bin/lavie lineage KEY   (KEY: any sample key listed in a shard's .json manifest)")
    print("  the UI:   make ui   (127.0.0.1:3000: asset graph, materializations with loss curves, metrics, gallery)")


def train(instance):
    """Materialize the training assets on all shards: the folder of the last (it holds the whole cascade)
    and the run folder of each UNet stage."""
    print(f"training the tiny cascade: autoencoders {VAE_STEPS} steps each, "
          + ", ".join(f"{stage} {steps} steps" for stage, steps in DEMO_STEPS.items()) + f" ({', '.join(DEMO_OVERRIDES)})")
    result = dg.materialize(TRAINING_ASSETS, instance=instance, resources={
        "training": TrainingSettings(max_steps=DEMO_STEPS, vae_steps=VAE_STEPS, overrides=DEMO_OVERRIDES),
        "pipes": dg.PipesSubprocessClient()})
    runs = {}
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        if "final_loss" in metadata:
            print(f"  {event.asset_key.path[-1]}: {metadata['steps'].value} steps, final loss "
                  f"{metadata['final_loss'].value:.4f}, run {metadata['run_dir'].value}")
            runs[event.asset_key.path[-1].removesuffix("_model")] = Path(metadata["run_dir"].value)
    return Path(metadata["model_folder"].value), runs


def evaluate(instance):
    """Score the trained cascade and promote it (the gate passes when nothing is promoted yet, or no metric
    regressed); returns the evaluation folder."""
    print("evaluating the trained cascade")
    result = dg.materialize(EVALUATION_ASSETS, instance=instance, raise_on_error=False,
                            resources={"evaluation_settings": EvaluationSettings(**DEMO_EVALUATION)})
    metadata = result.asset_materializations_for_node("evaluation")[0].metadata
    for name, value in metadata["metrics_json"].value.items():
        print(f"  {name:32} {'n/a' if value is None else f'{value:.4f}'}")
    checks = result.get_asset_check_evaluations()
    print("  promoted" if all(c.passed for c in checks) else "  not promoted: a metric regressed (see the check)")
    return Path(metadata["report"].value).parent


if __name__ == "__main__":
    main()

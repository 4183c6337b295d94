"""The paper's two findings as ablations of the base stage on the tiny world (the Dagster assets of group `ablations`
in pipelines/ablations.py run them; `make ablations` on the CPU budget).

    temporal_module  the same start (the text-to-image model inflated), data, steps and seeds, with four temporal
                     attentions: rotary positions plus the relative bias (LaVie), no positions, sinusoidal or
                     learned absolute positions added to the attention's input (AnimateDiff's choice). Metrics:
                     direction and colour adherence on the fixed prompts, temporal consistency (the configured
                     CLIP, labelled) and FVD against validation clips (the configured extractor, labelled).
    joint_training   the concepts HELD_OUT_CONCEPTS kept out of the videos and left in the image-text data; the base
                     stage fine-tuned with joint image-video batches (M images per video, each with its caption) or
                     on the videos alone. Metrics, in generated videos: the held-out colour's adherence (the
                     tracker cannot tell shapes, so the held-out shape is not scored), and the seen prompts' colour
                     and direction, so that forgetting and transfer show apart.

Every variant runs with every seed; each run is evaluated at the budget's step counts (step 0, the inflated
text-to-image model, is the same for every variant and is evaluated once per seed). The result is a table (mean
and spread per variant), curves of each metric against steps, sample grids and a markdown report.
"""

from __future__ import annotations  # torch in annotations: it loads in the functions that use it

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..curation.demo_corpus import PROMPTS

# Concepts the joint-training ablation keeps out of the videos: the image shards (and the text-to-image model)
# still show them, as SD's images show concepts WebVid's videos lack.
HELD_OUT_CONCEPTS = ("purple", "triangle")
HELD_OUT_PROMPTS = [
    "a purple circle moving left on a gray background",
    "a purple square moving up on a white background",
    "a purple circle moving down on a black background",
    "a purple square moving right on a striped background",
]
SEEN_PROMPTS = [p for p in PROMPTS if not any(word in p.split() for word in HELD_OUT_CONCEPTS)]

FINDINGS = {
    "temporal_module": {
        "question": "does plain temporal self-attention with rotary positions capture temporal correlation "
                    "as well as the alternatives?",
        "variants": {"rotary": {"temporal_positions": "rotary"}, "none": {"temporal_positions": "none"},
                     "sinusoidal": {"temporal_positions": "sinusoidal"},
                     "learned": {"temporal_positions": "learned"}},
        "metrics": ("direction", "colour", "temporal_consistency", "fvd"),
    },
    "joint_training": {
        "question": "does joint image-video fine-tuning keep concepts only the images show, which fine-tuning on "
                    "videos alone forgets?",
        # every weight at the full rate: what video fine-tuning can forget (the tiny default slows the 2D weights)
        "variants": {"joint": {"image_frames": 1, "lr_2d_scale": 1.0},
                     "video_only": {"image_frames": 0, "lr_2d_scale": 1.0}},
        "metrics": ("heldout_colour", "seen_colour", "seen_direction"),
    },
}
# The level a metric must beat: colour is 1 of 6 named colours, direction 1 of 4 directions.
CHANCE = {"direction": 0.25, "colour": 1 / 6, "heldout_colour": 1 / 6, "seen_colour": 1 / 6, "seen_direction": 0.25}


@dataclass
class AblationBudget:
    """How much each run trains and how it is scored. The defaults are the CPU budget of `make ablations`."""

    steps: int = 60
    evals: list[int] = field(default_factory=lambda: [0, 30, 60])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    batch_size: int = 8
    samples_per_prompt: int = 2
    sampling_steps: int = 20
    validation_clips: int = 4
    device: str = "cpu"

    def check(self) -> None:
        if self.steps < 1 or not self.seeds:
            raise ValueError(f"an ablation needs at least one step and one seed (steps={self.steps}, "
                             f"seeds={self.seeds})")
        if any(step < 0 or step > self.steps for step in self.evals):
            raise ValueError(f"evaluation steps {self.evals} must lie within 0..{self.steps}")


def variant_unet(sd, temporal_positions: str):
    """The base UNet inflated from the text-to-image model `sd` (a Stable Diffusion-layout folder)."""
    from ..models.unet_3d import UNet3DConditionModel

    return UNet3DConditionModel.from_pretrained_2d(sd, subfolder="unet", temporal_positions=temporal_positions)


class Scorer:
    """The metrics of one finding for a base UNet: samples its prompts with a pipeline of the inflated cascade."""

    def __init__(self, finding: str, cascade: Path, videos: list[Path], budget: AblationBudget, preset: str):
        from ..config import load_preset
        from ..curation.scores import ScoreConfig, load_clip
        from ..evaluation.metrics import load_video_extractor
        from ..pipelines import LaVieBasePipeline
        from ..training.data import validation_clips

        self.finding, self.budget = finding, budget
        self.pipe = LaVieBasePipeline.from_pretrained(cascade).to(budget.device)
        self.pipe.set_progress_bar_config(disable=True)
        size = (self.pipe.config.height, self.pipe.config.width)
        if finding == "temporal_module":
            self.clip, self.preprocess, _, self.clip_label = load_clip(ScoreConfig())
            self.extractor = load_video_extractor()
            percent = load_preset(preset)["training"]["validation_percent"]
            self.validation = validation_clips(videos, percent, budget.validation_clips,
                                               self.pipe.config.num_frames, size)
            self.labels = {"temporal_consistency": f"CLIP {self.clip_label}", "fvd": self.extractor.name}
        else:
            self.labels = {}

    def sample(self, prompts: list[str], seed: int, per_prompt: int | None = None) -> tuple[torch.Tensor, list[str]]:
        """(n, f, 3, h, w) videos in [0, 1], `per_prompt` (default: the budget's) for each prompt, and their prompts."""
        import torch

        repeated = [p for p in prompts for _ in range(per_prompt or self.budget.samples_per_prompt)]
        generator = torch.Generator().manual_seed(seed)
        videos = torch.cat([self.pipe(repeated[i:i + 16], num_inference_steps=self.budget.sampling_steps,
                                      generator=generator).frames.float().cpu()
                            for i in range(0, len(repeated), 16)])  # (n, f, 3, h, w)
        return videos, repeated

    def __call__(self, unet, seed: int) -> tuple[dict, torch.Tensor]:
        """({metric: value}, the sampled videos) for `unet`, sampled from noise of `seed`."""
        import torch

        from ..evaluation.metrics import fvd, temporal_consistency
        from ..evaluation.shapes import shapes_adherence

        self.pipe.register_modules(unet_base=unet.to(self.budget.device))
        if self.finding == "temporal_module":
            videos, prompts = self.sample(PROMPTS, seed)
            adherence = shapes_adherence(videos, prompts)
            metrics = {"direction": adherence["direction_accuracy"], "colour": adherence["colour_accuracy"],
                       "temporal_consistency": temporal_consistency(self.clip, self.preprocess, videos),
                       "fvd": math.nan}
            if len(self.validation) >= 2:
                captions = [clip["caption"] for clip in self.validation]
                generated, _ = self.sample(captions, seed, per_prompt=1)
                real = torch.stack([clip["frames"] for clip in self.validation])
                metrics["fvd"] = fvd(self.extractor, real, generated)["value"]
            return metrics, videos
        held, held_prompts = self.sample(HELD_OUT_PROMPTS, seed)
        seen, seen_prompts = self.sample(SEEN_PROMPTS, seed)
        held_score, seen_score = shapes_adherence(held, held_prompts), shapes_adherence(seen, seen_prompts)
        return {"heldout_colour": held_score["colour_accuracy"], "seen_colour": seen_score["colour_accuracy"],
                "seen_direction": seen_score["direction_accuracy"]}, torch.cat([held, seen])


def run_ablation(finding: str, sd, videos: list[Path], images: list[Path], out_dir, budget: AblationBudget,
                 preset: str = "tiny", log=print) -> dict:
    """Run every variant of `finding` with every seed; write OUT_DIR/{results.json, report.md, curves.png,
    grid_VARIANT.png} and return the results (runs, table, report path)."""
    import torch

    from ..model_folder import assemble
    from ..training.curve import CurveData, base_curve
    from ..training.stages import load_parts
    from ..training.trainer import preset_with_overrides
    from ..video import frames_grid

    if finding not in FINDINGS:
        raise ValueError(f"unknown ablation {finding!r}; expected one of {', '.join(FINDINGS)}")
    budget.check()
    spec = FINDINGS[finding]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cascade = assemble(out_dir / "start", sd, inflate_missing=True, preset=preset) \
        if not (out_dir / "start").exists() else out_dir / "start"
    scorer = Scorer(finding, cascade, videos, budget, preset)
    parts = load_parts(cascade, "base").to(budget.device, torch.float32)
    exclude = HELD_OUT_CONCEPTS if finding == "joint_training" else ()
    runs, grids = [], {}
    zero = {}  # seed -> metrics of the inflated model (step 0: every variant starts there)
    for seed in budget.seeds:
        for name, settings in spec["variants"].items():
            overrides = {k: v for k, v in settings.items() if k != "temporal_positions"}
            run_preset = preset_with_overrides(preset, overrides | {"batch_size": budget.batch_size}, "base")
            unet = variant_unet(sd, settings.get("temporal_positions", "rotary")).to(budget.device)
            use_images = run_preset["training"]["image_frames"] > 0
            data = CurveData(videos, images if use_images else None, exclude_words=exclude)
            points = []

            def probe(step, ema_unet, loss, seed=seed, name=name, points=points):
                if step == 0 and seed in zero:
                    metrics = zero[seed]
                else:
                    metrics, samples = scorer(ema_unet, seed)
                    if step == 0:
                        zero[seed] = metrics
                    if step == budget.steps and seed == budget.seeds[0]:  # the grids show the trained runs
                        grids[name] = samples
                points.append({"step": step, "loss": loss, **metrics})
                log(f"{finding} {name} seed {seed} step {step}: "
                    + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))

            evals = sorted(set(budget.evals) | {budget.steps})
            base_curve(unet, parts, run_preset, data, evals, seed, probe, budget.device)
            runs.append({"variant": name, "seed": seed, "points": points})
    result = {"finding": finding, "question": spec["question"], "budget": asdict(budget), "preset": preset,
              "labels": scorer.labels, "held_out_concepts": list(exclude), "runs": runs,
              "table": summary_table(runs, spec["metrics"], budget.steps)}
    if 0 in budget.evals:  # the shared start, the baseline each variant must move from
        first = [run for run in runs if run["variant"] == runs[0]["variant"]]
        result["start"] = summary_table(first, spec["metrics"], 0)[0] | {"variant": "start (step 0)"}
    for name, samples in grids.items():
        frames_grid(samples, budget.samples_per_prompt, out_dir / f"grid_{name}.png")
    (out_dir / "curves.png").write_bytes(curves_png(runs, spec["metrics"], finding))
    result["report"] = str(write_report(result, out_dir))
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def summary_table(runs: list[dict], metrics, step: int) -> list[dict]:
    """One row per variant: mean and spread (population standard deviation over seeds) of each metric at `step`."""
    rows = []
    for variant in dict.fromkeys(run["variant"] for run in runs):
        row = {"variant": variant, "seeds": 0}
        finals = [next(p for p in run["points"] if p["step"] == step) for run in runs if run["variant"] == variant]
        row["seeds"] = len(finals)
        for metric in metrics:
            values = [p[metric] for p in finals if p[metric] is not None and not math.isnan(p[metric])]
            row[metric] = statistics.fmean(values) if values else math.nan
            row[f"{metric}_spread"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def curves_png(runs: list[dict], metrics, title: str) -> bytes:
    """Each metric against steps, a line per variant (mean over seeds) with its spread shaded, chance dashed. Step 0
    is the text-to-image model inflated (temporal layers at the identity), the start every variant shares."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for variant in dict.fromkeys(run["variant"] for run in runs):
            points = [run["points"] for run in runs if run["variant"] == variant]
            steps = [p["step"] for p in points[0]]
            values = [[p[metric] for p in run] for run in points]  # (seeds, steps)
            measured = [[v for v in column if v is not None and not math.isnan(v)] for column in zip(*values)]
            mean = [statistics.fmean(column) if column else math.nan for column in measured]  # FVD: NaN unmeasured
            spread = [statistics.pstdev(column) if len(column) > 1 else 0.0 for column in measured]
            ax.plot(steps, mean, marker="o", label=variant)
            ax.fill_between(steps, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)],
                            alpha=0.15)
        if metric in CHANCE:
            ax.axhline(CHANCE[metric], color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("steps")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def format_value(metric: str, value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if metric in ("fvd", "temporal_consistency") else f"{value:.0%}"


def markdown_table(result: dict) -> str:
    metrics = FINDINGS[result["finding"]]["metrics"]
    lines = ["| variant | seeds | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for row in ([result["start"]] if "start" in result else []) + result["table"]:
        cells = [f"{format_value(m, row[m])} ± {format_value(m, row[m + '_spread'])}" for m in metrics]
        lines.append(f"| {row['variant']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(result: dict, out_dir: Path) -> Path:
    """OUT_DIR/report.md: the question, the budget, the table (mean ± spread over seeds), the chance levels."""
    budget = result["budget"]
    labels = "".join(f"\n- `{metric}`: {label}" for metric, label in result["labels"].items())
    held = result["held_out_concepts"]
    chance = "Chance: colour 1 in 6 (17%), direction 1 in 4 (25%)."
    if "fvd" in FINDINGS[result["finding"]]["metrics"]:
        chance += " FVD: lower is better."
    lines = [
        f"# Ablation: {result['finding']}",
        "",
        result["question"],
        "",
        (f"Preset `{result['preset']}`; {budget['steps']} steps of batches of {budget['batch_size']} from the "
         f"text-to-image model inflated; seeds {budget['seeds']}; {budget['samples_per_prompt']} samples per "
         f"prompt at {budget['sampling_steps']} denoising steps; device {budget['device']}."),
        "",
        f"At step {budget['steps']} (mean ± spread over seeds):",
        "",
        markdown_table(result),
        "",
        chance,
    ]
    if held:
        lines += ["", (f"Kept out of the videos, left in the images: {', '.join(held)}. The held-out colour is "
                       "scored on prompts naming it; the tracker cannot tell shapes, so the held-out shape is not.")]
    if labels:
        lines += ["", "Feature extractors:" + labels]
    lines += ["", "Curves: curves.png; samples (first, middle and last frame): grid_VARIANT.png."]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

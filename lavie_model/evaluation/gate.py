"""The gate's rules, on numbers only (no tensors): the baselines each stage's metric must beat and by what margin,
and the verdicts and regressions read from an `evaluate` result (evaluate.py) or its metrics.json. The evaluation
asset (pipelines/evaluation.py) promotes a model only where these find nothing short and nothing regressed.
"""

import math

from .stats import Rate, paired_text

# Metrics where higher is better; FVD is better lower, and the shapes' motion describes without ranking.
LOWER_IS_BETTER = ("base/fvd",)
UNRANKED = ("base/shapes_moving", "base/shapes_displacement")
# Each stage's metric and the baselines it must beat.
BASELINES = {"base/shapes_colour": ("base/t2i_colour",),
             "interpolation/psnr": ("interpolation/psnr_blend", "interpolation/psnr_latent_blend"),
             "vsr/psnr": ("vsr/psnr_bicubic",)}
# Most are compared by their means, with the strongest baseline measured, and may fall short of it by a margin:
# PSNR not at all; colour adherence is counted on a few samples, so a loss of up to COLOUR_MARGIN (3 of 16 samples)
# is sampling noise.
COLOUR_MARGIN = 0.2
MARGINS = {"base/shapes_colour": COLOUR_MARGIN, "vsr/psnr": 0.0}
# Interpolation is compared with each blend clip by clip (the result's `paired`): it beats a blend only where both
# 95% intervals clear (ahead on more than half the clips, ahead on average), and falls short of it only where the
# blend is better on average beyond the interval, as `regressions` holds a PSNR to its interval. In between (a few
# validation clips rarely tell) it is "not shown" better, and passes as colour passes within its margin.
PAIRED = ("interpolation/psnr",)


def rates_of(result: dict) -> dict[str, Rate]:
    """The counted metrics of an `evaluate` result (or its metrics.json), as Rates."""
    return {name: Rate(rate["hits"], rate["n"]) for name, rate in result["rates"].items()}


def baseline_of(metrics: dict, name: str) -> tuple[str, float] | None:
    """The strongest of the BASELINES measured of the metric `name`, as (its name, its value); None when none was
    measured."""
    measured = [(baseline, metrics[baseline]) for baseline in BASELINES[name] if metrics.get(baseline) is not None]
    return max(measured, key=lambda pair: pair[1]) if measured else None


def baseline_text(metrics: dict, name: str) -> str | None:
    """`value (name)` of the strongest baseline measured of the metric `name`, for tables; None when it has none."""
    baseline = baseline_of(metrics, name) if name in BASELINES else None
    return None if baseline is None else f"{baseline[1]:.4g} ({baseline[0].split('/')[1]})"


def paired_verdict(paired: dict, name: str) -> str | None:
    """A PAIRED metric beside its BASELINES clip by clip (`paired`: evaluate's): "beats" where it beats every one
    compared, "falls short" where one is better beyond the interval, else "not shown"; None when none was
    compared."""
    comparisons = [paired[baseline] for baseline in BASELINES[name] if baseline in paired]
    if not comparisons:
        return None
    if any(comparison["loses"] for comparison in comparisons):
        return "falls short"
    return "beats" if all(comparison["beats"] for comparison in comparisons) else "not shown"


def below_baselines(metrics: dict, paired: dict | None = None) -> list[str]:
    """The stages that fall short of a baseline: by their means beyond the MARGINS allowed, and the PAIRED ones
    where a baseline is better clip by clip beyond the interval of the mean difference (`paired`: evaluate's)."""
    short, paired = [], paired or {}
    for name, baselines in BASELINES.items():
        if name in PAIRED:
            short += [f"{name}: below {baseline} clip by clip, {paired_text(paired[baseline], 'it')}"
                      for baseline in baselines if baseline in paired and paired[baseline]["loses"]]
            continue
        value, baseline, margin = metrics.get(name), baseline_of(metrics, name), MARGINS[name]
        if value is not None and baseline is not None and value < baseline[1] - margin:
            short.append(f"{name}: {value:.4g} below its baseline {baseline[0]} {baseline[1]:.4g}"
                         + (f" (margin {margin:g})" if margin else ""))
    return short


def regressions(candidate: dict, reference: dict, tolerance: float, intervals: dict | None = None) -> list[str]:
    """The metrics where the candidate is worse than the reference: beyond the candidate's 95% interval where it
    has one (`intervals`, evaluate's: the rates and the clip-averaged PSNRs; the reference lies wholly above it,
    or below it for FVD), else by more than `tolerance` (relative). The UNRANKED ones (how far the shapes move)
    are not compared."""
    worse, intervals = [], intervals or {}
    for name, value in reference.items():
        new = candidate.get(name)
        if value is None or new is None or name in UNRANKED:
            continue
        if name in intervals:
            low, high = intervals[name]
            if (value < low) if name in LOWER_IS_BETTER else (value > high):
                worse.append(f"{name}: {new:.4g} (95% interval {low:.4g}-{high:.4g}) against {value:.4g}")
            continue
        margin = tolerance * max(abs(value), 1e-8)
        if (new > value + margin) if name in LOWER_IS_BETTER else (new < value - margin):
            worse.append(f"{name}: {new:.4g} against {value:.4g}")
    return worse


def metric_rows(result: dict, start_metrics: dict, references: dict[str, dict], tolerance: float) -> list[dict]:
    """One row per metric of an `evaluate` result as the gate sees it: `metric`; `value` (a rate's hits/n); its
    95% `interval` as text (a rate's `31% (10/32, 18%-49%)`, a clip-averaged PSNR's Student-t interval, else
    None); the `start model`'s value (`start_metrics`); the `baseline` it must beat (`value (name)`, its
    strongest measured BASELINE); and the `verdict`: against its baseline "beats its baseline", "falls short of
    its baseline" (below it beyond its margin; a PAIRED metric clip by clip, as `below_baselines` decides),
    "within its margin" or "not shown better than its baseline", then "regressed against the <reference>" for
    each of `references` ({"start model": metrics, ...}) where `regressions` finds it worse; "no regression"
    where it was compared and neither applies, "not compared" for the UNRANKED ones, else None."""
    metrics, rates, intervals, paired = result["metrics"], rates_of(result), result["intervals"], result["paired"]
    rows = []
    for name, value in metrics.items():
        baseline = baseline_of(metrics, name) if name in BASELINES else None
        verdicts = []
        if name in PAIRED and paired_verdict(paired, name) is not None:
            verdicts.append({"beats": "beats its baseline", "falls short": "falls short of its baseline",
                             "not shown": "not shown better than its baseline"}[paired_verdict(paired, name)])
        elif baseline is not None and value is not None:
            verdicts.append("beats its baseline" if value > baseline[1] else "falls short of its baseline"
                            if value < baseline[1] - MARGINS[name] else "within its margin")
        compared = [label for label, reference in references.items()
                    if name not in UNRANKED and value is not None and reference.get(name) is not None]
        verdicts += [f"regressed against the {label}" for label in compared
                     if regressions({name: value}, {name: references[label][name]}, tolerance, intervals)]
        if not verdicts:
            verdicts = ["not compared"] if name in UNRANKED else ["no regression"] if compared else []
        low, high = intervals.get(name, (None, None))
        rows.append({"metric": name, "value": value,
                     "interval": str(rates[name]) if name in rates else f"{low:.4g}-{high:.4g}"
                     if low is not None and math.isfinite(low) and math.isfinite(high) else None,
                     "start model": start_metrics.get(name),
                     "baseline": baseline_text(metrics, name),
                     "verdict": "; ".join(verdicts) or None})
    return rows

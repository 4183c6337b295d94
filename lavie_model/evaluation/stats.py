"""Rates with their uncertainty: a rate counted on n samples is reported with its 95% Wilson interval, and it
beats a baseline only where the whole interval lies above it.

    wilson(hits, n)            the 95% Wilson score interval of hits / n
    binomial_p(hits, n, p0)    one-sided exact p-value of seeing >= hits of n when the true rate is p0
    Rate(hits, n)              a counted rate: .value, .low, .high, .beats(baseline), str() "31% (10/32, 18%-49%)"
    mean_interval(values)      the mean of per-sample values (a PSNR per clip) and its 95% Student-t interval
    paired_comparison(model, reference)  a model against a reference on the same clips: the clips it is ahead on
                               (a Rate) and the mean difference with its t interval; beats the reference only where
                               both intervals clear (above one half, above zero)

Why Wilson: the normal-approximation interval collapses to a point at 0 or n hits and undercovers for small n;
Wilson's stays inside [0, 1] and covers close to its nominal 95% at the sample counts used here (32-200).
Why paired: a model and a reference scored on the same clips share each clip's difficulty, so their per-clip
differences vary far less than either score; a mean lead carried by a few clips (0.8 dB over 4 clips, +-5.9 dB)
or by a minority of them (ahead on 39 of 96) is no win.
"""

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of the rate hits / n; (0, 1) when n is 0."""
    if n < 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n, got {hits} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_p(hits: int, n: int, p0: float) -> float:
    """P(X >= hits) for X ~ Binomial(n, p0): the one-sided p-value of `hits` against the rate p0."""
    if not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n, got {hits} of {n}")
    return min(1.0, sum(math.comb(n, k) * p0**k * (1 - p0) ** (n - k) for k in range(hits, n + 1)))


@dataclass(frozen=True)
class Rate:
    """hits of n, with its 95% Wilson interval."""

    hits: int
    n: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else math.nan

    @property
    def low(self) -> float:
        return wilson(self.hits, self.n)[0]

    @property
    def high(self) -> float:
        return wilson(self.hits, self.n)[1]

    def beats(self, baseline: "float | Rate") -> bool:
        """Whether the interval's lower end lies above the baseline (a rate, or another Rate's value)."""
        level = baseline.value if isinstance(baseline, Rate) else baseline
        return self.n > 0 and self.low > level

    def as_dict(self) -> dict:
        return {"value": self.value, "hits": self.hits, "n": self.n, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        if not self.n:
            return "n/a (0 samples)"
        return f"{self.value:.0%} ({self.hits}/{self.n}, {self.low:.0%}-{self.high:.0%})"


def mean_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-sample values and its 95% Student-t interval; unbounded (-inf, inf)
    for fewer than two values, whose spread is unknown."""
    from scipy.stats import t

    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.nan, -math.inf, math.inf
    mean = sum(values) / n
    if n < 2:
        return mean, -math.inf, math.inf
    half = float(t.ppf(0.975, n - 1)) * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return mean, mean - half, mean + half


def paired_comparison(model, reference) -> dict:
    """A model against a reference scored on the same samples (e.g. the PSNR of each clip, higher is better):
    {"n", "wins": Rate.as_dict() of the samples where the model scores strictly higher (a tie is no win),
    "difference": {"mean", "low", "high"} of model - reference (mean_interval: 95% Student t), "beats": both
    intervals clear (the wins' above one half, the difference's above zero), "loses": the difference's interval
    lies wholly below zero (the reference is better beyond sampling noise)}."""
    model, reference = [float(v) for v in model], [float(v) for v in reference]
    if len(model) != len(reference):
        raise ValueError(f"paired scores need one per sample each, got {len(model)} and {len(reference)}")
    differences = [m - r for m, r in zip(model, reference)]
    wins = Rate(sum(d > 0 for d in differences), len(differences))
    mean, low, high = mean_interval(differences)
    return {"n": len(differences), "wins": wins.as_dict(), "difference": {"mean": mean, "low": low, "high": high},
            "beats": wins.beats(0.5) and low > 0, "loses": high < 0}


def paired_text(comparison: dict, reference: str = "the reference") -> str:
    """A paired_comparison in words: "ahead of the latent blend on 75% (3/4, 30%-95%) of the clips, +0.80 dB
    (95% -5.10 to +6.70)"."""
    wins, difference = comparison["wins"], comparison["difference"]
    return (f"ahead of {reference} on {Rate(wins['hits'], wins['n'])} of the clips, {difference['mean']:+.2f} dB "
            f"(95% {difference['low']:+.2f} to {difference['high']:+.2f})")

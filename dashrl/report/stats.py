"""95% intervals for the report: accuracies, differences of accuracies and time ratios (numpy only).

Which interval where (docs/pipeline.md, "The report"):

- one run's accuracy on one benchmark (a proportion of ``n`` problems): the Wilson score interval;
- a configuration with several seeds (runs ``X``, ``X-s1``, ``X-s2``): the mean over seeds, with a
  t interval over the seeds' accuracies (training-seed spread), a bootstrap over problems resampled
  jointly across seeds (test-set spread), and a bootstrap that resamples seeds, then problems (both);
- a difference of two configurations' accuracies: a paired bootstrap; each replicate resamples each
  arm's seeds, then one set of problems used for both arms (the same problems on both sides);
- a ratio of training times: per seed (runs paired by seed), the geometric mean over seeds, their
  min and max, and a t interval on the log ratios when there are >= 3 seeds.

Every bootstrap draws from ``dashrl.infra.seeds.keyed_rng(seed, key)``: the params' seed and the quantity's own name, so
a number's interval does not move when another quantity is added to the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
Z_975 = 1.959963984540054  # standard normal 97.5% quantile
# Student t 97.5% quantiles for 1..30 degrees of freedom; past 30 a Cornish-Fisher expansion.
_T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
          2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
          2.0518, 2.0484, 2.0452, 2.0423)
_CHUNK = 2000  # bootstrap replicates drawn at a time (bounds memory: chunk x problems)


@dataclass(frozen=True)
class Interval:
    """An estimate and its 95% interval (``lo``/``hi`` None: too few observations for one)."""

    estimate: float
    lo: float | None
    hi: float | None
    method: str
    n: int  # observations behind it: problems, or seeds

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None


@dataclass(frozen=True)
class Ratio:
    """A time ratio over seeds: geometric mean, spread and (>= 3 seeds) a 95% interval."""

    estimate: float
    min: float
    max: float
    lo: float | None
    hi: float | None
    seeds: int
    method: str

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None


def t_quantile_975(df: int) -> float:
    """Student t 97.5% quantile with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def wilson(successes: int, n: int) -> Interval:
    """Wilson score interval of a proportion ``successes / n`` (sensible at 0, 1 and small n)."""
    if n < 1:
        raise ValueError(f"a proportion needs n >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p, z2 = successes / n, Z_975**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no rounding past 0 or 1)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, lo, hi, "Wilson", n)


def t_interval(values: Sequence[float]) -> Interval:
    """Mean of ``values`` with a t interval (None bounds with fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("a mean needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, None, None, "t over seeds", int(x.size))
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, "t over seeds", int(x.size))


def _as_matrix(scores: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(seeds, problems) float matrix; one row per seed, one column per problem (the same problems)."""
    m = np.asarray(scores, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"expected a (seeds, problems) matrix with at least one of each, got shape {m.shape}")
    return m


def _seed_means(m: np.ndarray, rng: np.random.Generator, size: int, resample_seeds: bool) -> np.ndarray:
    """(size, problems): each replicate's per-problem mean over its (resampled) seeds."""
    seeds = m.shape[0]
    if seeds == 1 or not resample_seeds:
        return np.broadcast_to(m.mean(axis=0), (size, m.shape[1]))
    counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=size)  # (size, seeds)
    return counts @ m / seeds


def _percentiles(replicates: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(replicates, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def bootstrap_mean(scores: np.ndarray | Sequence[Sequence[float]], samples: int, rng: np.random.Generator,
                   resample_seeds: bool = True) -> Interval:
    """Mean over seeds and problems of a (seeds, problems) score matrix with a percentile bootstrap.

    Each replicate resamples the seeds (rows, when ``resample_seeds`` and there are several), then
    the problems (columns, with replacement; the same problems for every seed of the replicate).
    """
    m = _as_matrix(scores)
    problems = m.shape[1]
    out = []
    for start in range(0, samples, _CHUNK):
        size = min(_CHUNK, samples - start)
        per_problem = _seed_means(m, rng, size, resample_seeds)
        weights = rng.multinomial(problems, np.full(problems, 1 / problems), size=size)
        out.append((per_problem * weights).sum(axis=1) / problems)
    lo, hi = _percentiles(np.concatenate(out))
    method = "bootstrap: seeds, then problems" if resample_seeds and m.shape[0] > 1 else "bootstrap: problems"
    return Interval(float(m.mean()), lo, hi, method, problems)


def paired_difference(a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]],
                      samples: int, rng: np.random.Generator) -> Interval:
    """Mean of ``a`` minus mean of ``b`` (each a (seeds, problems) matrix over the same problems, in
    the same order), with a paired percentile bootstrap: each replicate resamples each arm's seeds,
    then one set of problems that both arms are scored on."""
    ma, mb = _as_matrix(a), _as_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"the two arms must be scored on the same problems: {ma.shape[1]} vs {mb.shape[1]}")
    problems = ma.shape[1]
    out = []
    for start in range(0, samples, _CHUNK):
        size = min(_CHUNK, samples - start)
        diff = _seed_means(ma, rng, size, True) - _seed_means(mb, rng, size, True)
        weights = rng.multinomial(problems, np.full(problems, 1 / problems), size=size)
        out.append((diff * weights).sum(axis=1) / problems)
    lo, hi = _percentiles(np.concatenate(out))
    seeded = ma.shape[0] > 1 or mb.shape[0] > 1
    method = "paired bootstrap: seeds, then problems" if seeded else "paired bootstrap: problems"
    return Interval(float(ma.mean() - mb.mean()), lo, hi, method, problems)


def ratio_over_seeds(numerator: Mapping[str, float], denominator: Mapping[str, float]) -> Ratio | None:
    """``numerator / denominator`` paired by seed label (the keys); None when no seed is in both.

    The estimate is the geometric mean of the per-seed ratios; with >= 3 seeds the interval is a t
    interval on their logarithms, mapped back.
    """
    common = [s for s in numerator if s in denominator]
    ratios = np.array([numerator[s] / denominator[s] for s in common if denominator[s] > 0 and numerator[s] > 0])
    if ratios.size == 0:
        return None
    logs = np.log(ratios)
    estimate = float(np.exp(logs.mean()))
    if ratios.size < 3:
        return Ratio(estimate, float(ratios.min()), float(ratios.max()), None, None, int(ratios.size),
                     "per-seed ratios (an interval needs >= 3 seeds)")
    half = t_quantile_975(ratios.size - 1) * float(logs.std(ddof=1)) / math.sqrt(ratios.size)
    return Ratio(estimate, float(ratios.min()), float(ratios.max()), float(np.exp(logs.mean() - half)),
                 float(np.exp(logs.mean() + half)), int(ratios.size), "t on log ratios over seeds")


# --------------------------------------------------------------------------------------------------
# Verdicts: a claim is decided by its interval only (the point estimate never decides).

VERDICTS = ("reproduces", "does not", "inconclusive")  # what ``decide`` returns, in the findings' tally order
CLAIM_KINDS = ("better", "worse", "matches", "no_worse", "neutral", "faster")


def rule(kind: str, margin: float) -> str:
    """The verdict rule of a claim kind, in words (for the findings table)."""
    m = f"{margin:g}"
    return {
        "better": "reproduces if lo > 0; does not if hi < 0",
        "worse": "reproduces if hi < 0; does not if lo > 0",
        "matches": f"reproduces if -{m} <= lo and hi <= {m}; does not if hi < 0",
        "no_worse": f"reproduces if lo >= -{m}; does not if hi < 0",
        "neutral": f"reproduces if -{m} <= lo and hi <= {m}; does not if lo > 0 or hi < 0",
        "faster": "reproduces if hi < 1; does not if lo > 1 (an interval needs >= 3 seeds)",
    }[kind]


def decide(kind: str, lo: float | None, hi: float | None, margin: float) -> str:
    """``reproduces`` / ``does not`` / ``inconclusive`` from a 95% interval [lo, hi].

    Accuracy claims read the interval of a difference a - b: ``better`` (a > b), ``worse`` (a < b),
    ``matches`` (equivalence: the interval within +-margin; it fails when b is better, excluding 0),
    ``no_worse`` (non-inferiority: lo >= -margin), ``neutral`` (equivalence, failing on either side).
    ``faster`` reads the interval of a time ratio a / b. No interval: inconclusive.
    """
    if kind not in CLAIM_KINDS:
        raise ValueError(f"unknown claim kind {kind!r} (valid: {', '.join(CLAIM_KINDS)})")
    if lo is None or hi is None:
        return "inconclusive"
    if kind == "better":
        return "reproduces" if lo > 0 else "does not" if hi < 0 else "inconclusive"
    if kind == "worse":
        return "reproduces" if hi < 0 else "does not" if lo > 0 else "inconclusive"
    if kind == "faster":
        return "reproduces" if hi < 1 else "does not" if lo > 1 else "inconclusive"
    if kind == "no_worse":
        return "reproduces" if lo >= -margin else "does not" if hi < 0 else "inconclusive"
    if -margin <= lo and hi <= margin:
        return "reproduces"
    if hi < 0 or (kind == "neutral" and lo > 0):
        return "does not"
    return "inconclusive"

"""Statistics of the leaderboard and of judge agreement (numpy; seeded, reproducible).

* :func:`cluster_bootstrap_ci` — 95% CI of a pooled mean when observations come in
  clusters (the candidates of one scenario are not independent): scenarios are
  resampled with replacement, the candidates inside each resampled scenario are kept.
* :func:`paired_bootstrap` — difference of two systems on the same scenarios: the mean
  of per-scenario differences, its bootstrap CI, and the share of bootstrap means ≤ 0
  (a one-sided bootstrap p-value for "A is better than B").
* :func:`weighted_kappa` — Cohen's kappa with linear or quadratic weights on an ordinal
  scale; :func:`spearman` — rank correlation with average ranks for ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_B = 2000


def mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def bootstrap_ci(xs: Sequence[float], b: int = DEFAULT_B, seed: int = 0,
                 level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean of independent observations."""
    x = np.asarray(xs, dtype=float)
    if x.size == 0:
        return None, None
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(b, x.size))
    means = x[idx].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def cluster_bootstrap_ci(clusters: Sequence[tuple[float, int]], b: int = DEFAULT_B,
                         seed: int = 0, level: float = 0.95
                         ) -> tuple[float | None, float | None, float | None]:
    """(mean, lo, hi) of the pooled mean over clusters given as ``(sum, count)``.

    The pooled mean is Σ sums / Σ counts (every candidate weighs the same); a bootstrap
    replicate resamples whole clusters. Clusters with count 0 are ignored.
    """
    c = [(float(s), int(n)) for s, n in clusters if n > 0]
    if not c:
        return None, None, None
    sums = np.array([s for s, _ in c])
    ns = np.array([n for _, n in c], dtype=float)
    m = float(sums.sum() / ns.sum())
    if len(c) == 1:
        return m, m, m
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(c), size=(b, len(c)))
    reps = sums[idx].sum(axis=1) / ns[idx].sum(axis=1)
    a = (1 - level) / 2
    return m, float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def paired_bootstrap(a: Sequence[float], b_: Sequence[float], b: int = DEFAULT_B, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Paired comparison of per-unit values ``a[i]`` vs ``b_[i]`` (same scenarios)."""
    x = np.asarray(a, dtype=float) - np.asarray(b_, dtype=float)
    if x.size == 0:
        return {"n": 0, "diff": None, "ci_low": None, "ci_high": None, "p_le_0": None}
    d = float(x.mean())
    if x.size == 1:
        return {"n": 1, "diff": d, "ci_low": d, "ci_high": d, "p_le_0": None}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(b, x.size))
    reps = x[idx].mean(axis=1)
    lo_q = (1 - level) / 2
    return {"n": int(x.size), "diff": d, "ci_low": float(np.quantile(reps, lo_q)),
            "ci_high": float(np.quantile(reps, 1 - lo_q)),
            "p_le_0": float(np.mean(reps <= 0.0))}


def weighted_kappa(a: Sequence[int], b: Sequence[int], categories: Sequence[int] = (1, 2, 3, 4, 5),
                   weights: str = "quadratic") -> float | None:
    """Cohen's weighted kappa of two raters on an ordinal scale.

    κ_w = 1 − Σ w·O / Σ w·E with disagreement weights w_ij = |i−j| (linear) or
    (i−j)² (quadratic), O the observed and E the chance-expected joint proportions.
    Returns None for no data, 1.0 when both raters are constant and identical.
    """
    if len(a) != len(b):
        raise ValueError("both raters must score the same items")
    if not a:
        return None
    cats = list(categories)
    k = len(cats)
    pos = {c: i for i, c in enumerate(cats)}
    obs = np.zeros((k, k))
    for x, y in zip(a, b):
        obs[pos[x], pos[y]] += 1
    obs /= obs.sum()
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    i, j = np.indices((k, k))
    w = np.abs(i - j) if weights == "linear" else (i - j) ** 2
    den = float((w * exp).sum())
    num = float((w * obs).sum())
    if den == 0.0:
        return 1.0 if num == 0.0 else 0.0
    return 1.0 - num / den


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None if undefined."""
    if len(a) != len(b):
        raise ValueError("same length required")
    if len(a) < 2:
        return None
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return None
    r = float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))
    return max(-1.0, min(1.0, r)) if math.isfinite(r) else None

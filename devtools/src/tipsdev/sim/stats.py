"""Small statistics helpers: t-intervals over seeds, paired differences."""

from __future__ import annotations

import math

import numpy as np


def t_quantile(df: int, q: float = 0.975) -> float:
    try:
        from scipy import stats

        return float(stats.t.ppf(q, df))
    except ImportError:  # pragma: no cover - scipy is in the bench extra
        return 1.959963984540054 if df > 30 else {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776,
                                                  5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
                                                  9: 2.262}.get(df, 2.2)


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean with a t-interval over independent replicates (seeds)."""
    v = np.asarray(values, dtype=float)
    n = v.size
    m = float(v.mean()) if n else float("nan")
    if n < 2:
        return {"mean": m, "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": n}
    sd = float(v.std(ddof=1))
    h = t_quantile(n - 1, 0.5 + level / 2) * sd / math.sqrt(n)
    return {"mean": m, "lo": m - h, "hi": m + h, "sd": sd, "n": n}


def curve_ci(curves, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise mean and t-interval of (n_seeds, T) curves."""
    c = np.asarray(curves, dtype=float)
    m = c.mean(axis=0)
    if c.shape[0] < 2:
        return m, m, m
    h = t_quantile(c.shape[0] - 1, 0.5 + level / 2) * c.std(axis=0, ddof=1) / math.sqrt(c.shape[0])
    return m, m - h, m + h


def fmt_ci(ci: dict, digits: int = 4) -> str:
    if math.isnan(ci.get("lo", float("nan"))):
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"

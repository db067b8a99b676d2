"""Feature builders shared by the scorer, the generator and the simulator.

Two declared tables, as the seeds describe:

* ``CONTEXT_FEATURES`` — request-time (JIT) fields: freshness, source, fallback.
  Never cached; derived at the moment of the call.
* ``PROFILE_SCHEMA`` — batched user-level features computed by the recommender
  and shipped on every call as ``profile_features``: name, dtype, TTL, source,
  null fallback. A missing or null (or ill-typed) feature uses its fallback,
  never an error.

Vectors:

* ``context_vector`` — D=7: bias, sin/cos of the hour, weekend flag,
  task load (log-scaled), overdue share, mean priority.
* ``profile_vector`` — 5 dims: completion rate, dismiss rate, mean dwell
  clipped at 10 min, preferred-hour alignment as a cosine, log tip volume (scaled).
  The dwell has two encodings, versioned with the feature set:

  - ``ctx7+prof5-v1`` (linucb-v2, thompson-v2): ``dwell_ms / 600 000`` — linear in
    [0, 1], but real dwells are seconds, so it is 0.007–0.033 for every persona of the
    simulator: a ridge model (λ = 1) shrinks a coefficient on a feature that small to
    nothing, i.e. the dwell is as good as absent;
  - ``ctx7+prof5-v2`` (egreedy-v2): ``log1p(dwell_s) / log1p(600)`` — the same clip at
    10 min, logarithmic, so seconds to minutes span ~0.2–0.5 and a within-user change
    (the simulator's strain moves dwell by ×e^{±0.35}) moves it by ~0.05, the scale of
    the other profile features. Changing an encoding is a new feature version: the
    policy's update id changes with it (decisions scored with the other version are
    refused by the reward update, see :func:`tipsml.bandits.update_id`), and its state
    should start afresh (``tips.reset``) when a policy switches version.
* ``FS_*`` — which policy uses which vector (egreedy-v1/linucb/thompson: D=7,
  egreedy-v2: D=12 with v2 profile encoding, linucb-v2/thompson-v2: D=12 with v1).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ContextFeature:
    name: str
    dtype: str
    freshness: str
    source: str
    fallback: Any


@dataclass(frozen=True)
class ProfileFeature:
    name: str
    dtype: str
    ttl_s: int
    source: str
    fallback: Any
    lo: float | None = None
    hi: float | None = None


CONTEXT_FEATURES: dict[str, ContextFeature] = {
    f.name: f
    for f in (
        ContextFeature("hour_of_day", "int", "jit", "request.context or server clock (UTC)",
                       "server clock hour"),
        ContextFeature("day_of_week", "int", "jit", "request.context or server clock (UTC)",
                       "server clock weekday"),
        ContextFeature("tasks", "list[Task]", "jit", "request.context (live task feed)", []),
    )
}

PROFILE_SCHEMA: dict[str, ProfileFeature] = {
    f.name: f
    for f in (
        ProfileFeature("completion_rate", "float", 86400, "recommender.profile", 0.3, 0.0, 1.0),
        ProfileFeature("dismiss_rate", "float", 86400, "recommender.profile", 0.3, 0.0, 1.0),
        ProfileFeature("mean_dwell_ms", "float", 86400, "recommender.profile", 15000.0, 0.0, None),
        ProfileFeature("preferred_hour", "int", 7 * 86400, "recommender.profile", None, 0, 23),
        ProfileFeature("tip_volume", "int", 86400, "recommender.profile", 0, 0, None),
    )
}

CONTEXT_DIM = 7
PROFILE_DIM = 5
DWELL_CLIP_MS = 600_000.0  # 10 minutes
TIP_VOLUME_SCALE = math.log1p(1000.0)
TASK_LOAD_SCALE = math.log1p(20.0)

DWELL_LOG_SCALE = math.log1p(DWELL_CLIP_MS / 1000.0)  # log1p(600 s)

FEATURE_VERSION_CTX = "ctx7-v1"
FEATURE_VERSION_CTX_PROFILE = "ctx7+prof5-v1"
FEATURE_VERSION_CTX_PROFILE_V2 = "ctx7+prof5-v2"  # log-scaled dwell


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:  # an int beyond float range (JSON allows 1000…0): fallback
            return None
        return f if math.isfinite(f) else None
    return None


# (name, lo, hi, fallback, is int) of every profile feature: read once, not per request
_PROFILE_SPECS = tuple((name, -math.inf if spec.lo is None else spec.lo,
                        math.inf if spec.hi is None else spec.hi, spec.fallback,
                        spec.dtype == "int") for name, spec in PROFILE_SCHEMA.items())


def resolve_profile(profile: dict | None) -> dict[str, Any]:
    """Every declared profile feature with its value or its fallback (range-checked)."""
    get = (profile or {}).get
    out: dict[str, Any] = {}
    for name, lo, hi, fallback, is_int in _PROFILE_SPECS:
        v = get(name)
        if type(v) is not float or v - v != 0.0:  # the usual value: a finite float
            v = _num(v)
        if v is None or v < lo or v > hi:
            out[name] = fallback
        else:
            out[name] = int(v) if is_int else v
    return out


def resolve_time(context: Any, now: _dt.datetime | None = None) -> tuple[int, int]:
    hour = getattr(context, "hour_of_day", None) if context is not None else None
    dow = getattr(context, "day_of_week", None) if context is not None else None
    if hour is None or dow is None:
        now = now or _dt.datetime.now(_dt.UTC)
        hour = now.hour if hour is None else hour
        dow = now.weekday() if dow is None else dow
    return int(hour), int(dow)


def _context_values(hour: int, dow: int, tasks: list | None) -> list[float]:
    tasks = tasks or []
    n = len(tasks)
    overdue = sum(1 for t in tasks if getattr(t, "overdue", None)) if n else 0
    prios = [t.priority for t in tasks if getattr(t, "priority", None) is not None]
    ang = 2.0 * math.pi * hour / 24.0
    return [
        1.0,
        math.sin(ang),
        math.cos(ang),
        1.0 if dow >= 5 else 0.0,
        min(math.log1p(n) / TASK_LOAD_SCALE, 1.5),
        overdue / n if n else 0.0,
        (sum(prios) / len(prios)) / 4.0 if prios else 0.0,
    ]


def context_vector(hour: int, dow: int, tasks: list | None) -> np.ndarray:
    return np.array(_context_values(hour, dow, tasks), dtype=np.float64)


def _profile_values(p: dict[str, Any], hour: int, encoding: int) -> list:
    """The 5 profile features of a resolved profile (:func:`resolve_profile`)."""
    dwell_ms = min(max(float(p["mean_dwell_ms"]), 0.0), DWELL_CLIP_MS)
    if encoding == 2:
        dwell = math.log1p(dwell_ms / 1000.0) / DWELL_LOG_SCALE
    else:
        dwell = dwell_ms / DWELL_CLIP_MS
    ph = p["preferred_hour"]
    align = 0.0 if ph is None else math.cos(2.0 * math.pi * (hour - ph) / 24.0)
    vol = min(math.log1p(max(float(p["tip_volume"]), 0.0)) / TIP_VOLUME_SCALE, 1.5)
    return [p["completion_rate"], p["dismiss_rate"], dwell, align, vol]


def profile_vector(profile: dict | None, hour: int, encoding: int = 1) -> np.ndarray:
    """The 5 profile features; ``encoding`` 1 (linear dwell) or 2 (log dwell), see above."""
    return np.array(_profile_values(resolve_profile(profile), hour, encoding), dtype=np.float64)


@dataclass(frozen=True)
class FeatureSet:
    name: str
    dim: int
    version: str
    uses_profile: bool
    profile_encoding: int = 1  # 1: linear dwell, 2: log dwell (profile_vector)


FS_CTX = FeatureSet("ctx7", CONTEXT_DIM, FEATURE_VERSION_CTX, False)
FS_CTX_PROFILE = FeatureSet("ctx7+prof5", CONTEXT_DIM + PROFILE_DIM, FEATURE_VERSION_CTX_PROFILE,
                            True)
FS_CTX_PROFILE_V2 = FeatureSet("ctx7+prof5", CONTEXT_DIM + PROFILE_DIM,
                               FEATURE_VERSION_CTX_PROFILE_V2, True, profile_encoding=2)
FEATURE_NAMES = {
    "ctx7": ("bias", "sin_hour", "cos_hour", "weekend", "task_load_log", "overdue_share",
             "mean_priority"),
    "prof5": ("completion_rate", "dismiss_rate", "mean_dwell", "preferred_hour_cos",
              "tip_volume_log"),
}


def feature_names(fs: FeatureSet) -> list[str]:
    names = list(FEATURE_NAMES["ctx7"])
    if fs.uses_profile:
        names += list(FEATURE_NAMES["prof5"])
        names[CONTEXT_DIM + 2] = ("mean_dwell_log" if fs.profile_encoding == 2
                                  else "mean_dwell_linear")
    return names


def build_vector(fs: FeatureSet, context: Any, profile: dict | None,
                 now: _dt.datetime | None = None) -> np.ndarray:
    hour, dow = resolve_time(context, now)
    x = context_vector(hour, dow, getattr(context, "tasks", None) if context is not None else None)
    if fs.uses_profile:
        x = np.concatenate([x, profile_vector(profile, hour, fs.profile_encoding)])
    return x


def build_vectors(feature_sets, context: Any, profile: dict | None,
                  now: _dt.datetime | None = None,
                  when: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """``{fs.version: build_vector(fs, context, profile)}`` for several feature sets, the
    request's time, context and profile resolved once (the scorer's live and shadow
    policies share them); the same values as :func:`build_vector`, one array per
    feature version (policies sharing a version share the array). ``when``: the
    request's (hour, day of week) when the caller resolved it already
    (:func:`resolve_time`), so the features and the log agree on it."""
    hour, dow = when if when is not None else resolve_time(context, now)
    ctx = _context_values(hour, dow,
                          getattr(context, "tasks", None) if context is not None else None)
    out: dict[str, np.ndarray] = {}
    resolved = None
    for fs in feature_sets:
        if fs.version in out:
            continue
        if fs.uses_profile:
            if resolved is None:
                resolved = resolve_profile(profile)
            vals = ctx + _profile_values(resolved, hour, fs.profile_encoding)
        else:
            vals = ctx
        out[fs.version] = np.array(vals, dtype=np.float64)
    return out

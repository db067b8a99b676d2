"""Personas and the hidden reward model of the simulator (seeded, documented, no I/O).

The world
---------
A *user* is drawn from a persona with per-user noise. Each user gets ``rounds`` tip
opportunities, ``tips_per_day`` a day, at hours drawn from the persona's time slots
(±1 h jitter); the weekday advances with the days.

Every day the user has a latent **strain** ``s`` (AR(1) over days: ``s_d = φ s_{d-1} +
√(1-φ²) ε``, φ = 0.85, so it is ~N(0, 1) and persists for about a week). Strain is
what makes the profile features carry signal *within* a user:

* the task list grows and gets more overdue with strain (the context sees a little of it);
* the recommender's daily profile batch (``PROFILE_SCHEMA`` names) reflects it:
  ``completion_rate = base − 0.10·s``, ``dismiss_rate = base + 0.10·s``,
  ``mean_dwell_ms = base·exp(−0.35·s)`` (each with small measurement noise),
  ``preferred_hour`` (constant per user), ``tip_volume`` (tips shown so far);
* and the user's response to each arm depends on it (below).

Hidden reward model
-------------------
For arm ``a`` at hour ``h``, weekday flag ``we``, task load ``L = log1p(n)/log1p(20)``,
overdue share ``o`` and strain ``s``::

    logit P(engage | a) = bias[persona, a]
                        + amp[a] · cos(2π (h − peak[persona, a]) / 24)
                        + task[a] · (L, o)         (prioritize ← o, task_breakdown ← L)
                        + weekend[a] · we
                        + k_user · strain[a] · s   (k_user ~ U(0.7, 1.3))
                        + u[user, a]               (u ~ N(0, 0.35²): per-user taste)

    P(completed) = P(engage) · c,   P(accepted) = P(engage) · (1 − c)
    P(dismissed) = (1 − P(engage)) · d,   P(ignored) = (1 − P(engage)) · (1 − d)

with ``c`` the persona's completion propensity (± per-user noise) and ``d`` its dismiss
propensity. Rewards come from :data:`tipsml.rewards.REWARD_TABLE` (completed 1,
accepted 0.5, dismissed 0, ignored 0), so ``E[r | a] = P(engage | a)·(0.5 + 0.5·c)``.

``strain`` per arm: break_reminder +0.9, task_breakdown +0.6, prioritize +0.2,
focus_block −0.8, plan_tomorrow −0.7 — on a strained day a break or a breakdown helps,
a deep-focus block or planning tomorrow does not. Only egreedy-v2 (D=12) sees
strain through the profile features; egreedy-v1 / linucb / thompson (D=7) see only its
faint echo in the task list.

The reaction of round t is drawn by inverse CDF from one uniform ``U[user, t]`` fixed
by the seed (common random numbers): two policies that pick the same arm in the same
round of the same seed see the same reaction, which makes paired comparisons sharp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tipsml.features import FS_CTX, FS_CTX_PROFILE, FeatureSet, context_vector, profile_vector
from tipsml.rewards import REWARD_TABLE
from tipsml.settings import DEFAULT_ARMS

ARMS: tuple[str, ...] = tuple(DEFAULT_ARMS)
REACTIONS: tuple[str, ...] = ("completed", "accepted", "dismissed", "ignored")
REACTION_REWARD = np.array([REWARD_TABLE[r] for r in REACTIONS])

STRAIN_PHI = 0.85
STRAIN_EFFECT = {"focus_block": -0.8, "break_reminder": 0.9, "task_breakdown": 0.6,
                 "prioritize": 0.2, "plan_tomorrow": -0.7}
HOUR_AMP = {"focus_block": 0.7, "break_reminder": 0.5, "task_breakdown": 0.3,
            "prioritize": 0.4, "plan_tomorrow": 0.9}
WEEKEND = {"focus_block": -0.5, "break_reminder": 0.3, "task_breakdown": -0.2,
           "prioritize": -0.3, "plan_tomorrow": 0.2}
TASK_LOAD = {"task_breakdown": 0.8}
OVERDUE = {"prioritize": 1.0}
USER_TASTE_SD = 0.35


@dataclass(frozen=True)
class Persona:
    name: str
    about: str
    slots: tuple[tuple[int, float], ...]  # (hour, weight)
    bias: dict[str, float]                # base engagement logit per arm
    peak: dict[str, int]                  # hour at which the arm works best
    completion: float                     # c: P(completed | engaged)
    dismiss: float                        # d: P(dismissed | not engaged)
    profile: dict[str, float]             # base profile features
    tasks_mean: float
    overdue_base: float                   # logit of a task being overdue at s = 0
    tips_before: int = 20                 # tip volume at the start


PERSONAS: dict[str, Persona] = {p.name: p for p in (
    Persona(
        "student", "a university student in exam season",
        slots=((9, 0.3), (14, 0.3), (22, 0.4)),
        bias={"focus_block": -0.2, "break_reminder": -0.6, "task_breakdown": -0.3,
              "prioritize": -0.7, "plan_tomorrow": -0.5},
        peak={"focus_block": 10, "break_reminder": 15, "task_breakdown": 11,
              "prioritize": 9, "plan_tomorrow": 22},
        completion=0.45, dismiss=0.4,
        profile={"completion_rate": 0.55, "dismiss_rate": 0.25, "mean_dwell_ms": 9000,
                 "preferred_hour": 10},
        tasks_mean=3.0, overdue_base=-1.2, tips_before=40),
    Persona(
        "engineer", "a software engineer with too many parallel tasks",
        slots=((10, 0.35), (15, 0.4), (19, 0.25)),
        bias={"focus_block": -0.1, "break_reminder": -0.8, "task_breakdown": -0.4,
              "prioritize": -0.3, "plan_tomorrow": -0.9},
        peak={"focus_block": 10, "break_reminder": 16, "task_breakdown": 14,
              "prioritize": 10, "plan_tomorrow": 18},
        completion=0.35, dismiss=0.6,
        profile={"completion_rate": 0.3, "dismiss_rate": 0.5, "mean_dwell_ms": 4000,
                 "preferred_hour": 14},
        tasks_mean=6.0, overdue_base=-0.6, tips_before=300),
    Persona(
        "parent", "a freelance designer and parent with a fragmented day",
        slots=((7, 0.25), (13, 0.35), (21, 0.4)),
        bias={"focus_block": -0.9, "break_reminder": -0.4, "task_breakdown": -0.2,
              "prioritize": -0.4, "plan_tomorrow": -0.3},
        peak={"focus_block": 13, "break_reminder": 14, "task_breakdown": 13,
              "prioritize": 8, "plan_tomorrow": 21},
        completion=0.4, dismiss=0.35,
        profile={"completion_rate": 0.4, "dismiss_rate": 0.3, "mean_dwell_ms": 12000,
                 "preferred_hour": 21},
        tasks_mean=4.0, overdue_base=-0.8, tips_before=120),
    Persona(
        "manager", "a team manager whose day is full of meetings",
        slots=((8, 0.4), (12, 0.3), (17, 0.3)),
        bias={"focus_block": -0.6, "break_reminder": -0.7, "task_breakdown": -0.8,
              "prioritize": 0.0, "plan_tomorrow": -0.2},
        peak={"focus_block": 8, "break_reminder": 12, "task_breakdown": 9,
              "prioritize": 8, "plan_tomorrow": 17},
        completion=0.55, dismiss=0.2,
        profile={"completion_rate": 0.7, "dismiss_rate": 0.1, "mean_dwell_ms": 20000,
                 "preferred_hour": 8},
        tasks_mean=5.0, overdue_base=-1.0, tips_before=15),
    Persona(
        "night_owl", "a freelance writer who works late",
        slots=((11, 0.2), (18, 0.3), (23, 0.5)),
        bias={"focus_block": -0.3, "break_reminder": -0.5, "task_breakdown": -0.6,
              "prioritize": -0.6, "plan_tomorrow": -0.6},
        peak={"focus_block": 23, "break_reminder": 19, "task_breakdown": 18,
              "prioritize": 12, "plan_tomorrow": 1},
        completion=0.5, dismiss=0.3,
        profile={"completion_rate": 0.5, "dismiss_rate": 0.3, "mean_dwell_ms": 15000,
                 "preferred_hour": 23},
        tasks_mean=2.5, overdue_base=-0.9, tips_before=80),
)}
DEFAULT_PERSONAS: tuple[str, ...] = tuple(PERSONAS)


@dataclass(frozen=True)
class WorldConfig:
    personas: tuple[str, ...] = DEFAULT_PERSONAS
    tips_per_day: int = 3
    arms: tuple[str, ...] = ARMS


@dataclass
class Episode:
    """Everything a seed fixes, for ``n_users × rounds``: the same for every policy."""

    seed: int
    arms: tuple[str, ...]
    user_ids: list[str]
    personas: list[str]
    hour: np.ndarray            # (U, T) int
    dow: np.ndarray             # (U, T) int
    tasks: list[list[list[dict]]]  # [u][t] -> wire tasks
    profile: list[list[dict]]   # [u][t] -> profile_features (wire)
    x7: np.ndarray              # (U, T, 7)   features of the ctx7 policies
    x12: np.ndarray             # (U, T, 12)  ctx7+prof5-v1 (linear dwell)
    x12n: np.ndarray            # (U, T, 12)  ctx7+prof5-v2 (log dwell)
    probs: np.ndarray           # (U, T, K, 4) reaction probabilities per arm
    expected: np.ndarray        # (U, T, K) expected reward per arm
    uniform: np.ndarray         # (U, T) the reaction draw (common random numbers)
    strain: np.ndarray          # (U, T)
    extra: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.hour.shape[0]

    @property
    def rounds(self) -> int:
        return self.hour.shape[1]

    def features(self, fs: FeatureSet | bool) -> np.ndarray:
        """The vectors a policy with feature set ``fs`` sees (a bool: with profile or not, v1)."""
        if isinstance(fs, bool):
            return self.x12 if fs else self.x7
        if not fs.uses_profile:
            return self.x7
        return self.x12n if fs.profile_encoding == 2 else self.x12

    def context(self, u: int, t: int) -> dict:
        return {"hour_of_day": int(self.hour[u, t]), "day_of_week": int(self.dow[u, t]),
                "tasks": self.tasks[u][t]}

    def reaction(self, u: int, t: int, arm_index: int) -> str:
        cdf = np.cumsum(self.probs[u, t, arm_index])
        i = int(np.searchsorted(cdf, self.uniform[u, t], side="right"))
        return REACTIONS[min(i, len(REACTIONS) - 1)]

    def slice(self, t0: int, t1: int) -> Episode:
        """Rounds [t0, t1) of the same users (e.g. a warm-up and an evaluation period)."""
        return Episode(self.seed, self.arms, self.user_ids, self.personas,
                       self.hour[:, t0:t1], self.dow[:, t0:t1],
                       [row[t0:t1] for row in self.tasks], [row[t0:t1] for row in self.profile],
                       self.x7[:, t0:t1], self.x12[:, t0:t1], self.x12n[:, t0:t1],
                       self.probs[:, t0:t1],
                       self.expected[:, t0:t1], self.uniform[:, t0:t1], self.strain[:, t0:t1],
                       dict(self.extra))

    def oracle(self) -> np.ndarray:
        """(U, T) expected reward of the best arm (the oracle knows the hidden model)."""
        return self.expected.max(axis=2)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class _TaskView:
    """Duck-typed Task for :func:`tipsml.features.context_vector` (no pydantic on the hot path)."""

    __slots__ = ("overdue", "priority")

    def __init__(self, d: dict):
        self.priority = d.get("priority")
        self.overdue = d.get("overdue")


def strain_days(rng, n_days: int, phi: float = STRAIN_PHI) -> np.ndarray:
    """The user's latent daily strain: a stationary AR(1) with unit variance."""
    s = np.zeros(n_days)
    s[0] = rng.normal()
    for d in range(1, n_days):
        s[d] = phi * s[d - 1] + math.sqrt(1 - phi ** 2) * rng.normal()
    return s


def day_profiles(rng, s: np.ndarray, base_cr: float, base_dr: float, base_dw: float,
                 pref_h: int, rate_k: float = 0.10, dwell_k: float = 0.35) -> list[dict]:
    """The daily profile batch (what the recommender computes overnight): completion and
    dismiss rates and dwell move with the day's strain ``s``."""
    return [{
        "completion_rate": round(float(np.clip(base_cr - rate_k * s[d] + rng.normal(0, 0.02),
                                               0.0, 1.0)), 4),
        "dismiss_rate": round(float(np.clip(base_dr + rate_k * s[d] + rng.normal(0, 0.02),
                                            0.0, 1.0)), 4),
        "mean_dwell_ms": round(
            float(base_dw * math.exp(-dwell_k * s[d] + rng.normal(0, 0.05))), 1),
        "preferred_hour": pref_h,
    } for d in range(len(s))]


def draw_rounds(rng, u: int, T: int, tips_per_day: int, slot_h, slot_w, start_dow: int,
                s: np.ndarray, tasks_mean: float, overdue_base: float, tips_before: int,
                day_prof: list[dict], x7, x12, x12n):
    """One user's rounds: hour, weekday, task list and profile per round; fills the user's
    rows of the feature arrays. Returns (day index, hour, weekday, strain, tasks, profiles)."""
    d_idx = np.arange(T) // tips_per_day
    h = (rng.choice(slot_h, size=T, p=slot_w) + rng.integers(-1, 2, size=T)) % 24
    wd = (start_dow + d_idx) % 7
    sd = s[d_idx]
    n_tasks = np.minimum(rng.poisson(np.maximum(tasks_mean * np.exp(0.25 * sd), 0.1)), 20)
    p_over = _sigmoid(overdue_base + 0.5 * sd)
    total = int(n_tasks.sum())
    prio_flat = rng.integers(1, 5, size=total)
    over_flat = rng.random(total) < np.repeat(p_over, n_tasks)
    offs = np.concatenate([[0], np.cumsum(n_tasks)])
    u_tasks, u_prof = [], []
    for t in range(T):
        a0, a1 = offs[t], offs[t + 1]
        tl = [{"id": i + 1, "title": f"task {i + 1}", "priority": int(prio_flat[a0 + i]),
               "overdue": bool(over_flat[a0 + i])} for i in range(a1 - a0)]
        prof = dict(day_prof[d_idx[t]])
        prof["tip_volume"] = int(tips_before + t)
        ht, wdt = int(h[t]), int(wd[t])
        xc = context_vector(ht, wdt, [_TaskView(x) for x in tl])
        x7[u, t] = xc
        x12[u, t, :FS_CTX.dim] = xc
        x12[u, t, FS_CTX.dim:] = profile_vector(prof, ht)
        x12n[u, t, :FS_CTX.dim] = xc
        x12n[u, t, FS_CTX.dim:] = profile_vector(prof, ht, 2)
        u_tasks.append(tl)
        u_prof.append(prof)
    return d_idx, h, wd, sd, u_tasks, u_prof


def make_episode(seed: int, n_users: int, rounds: int, cfg: WorldConfig | None = None,
                 user_prefix: str = "sim") -> Episode:
    """Draw users, contexts, profiles and reaction uniforms for one seed."""
    cfg = cfg or WorldConfig()
    rng = np.random.default_rng([seed, 7919])
    arms = tuple(cfg.arms)
    k = len(arms)
    names = list(cfg.personas)
    U, T = n_users, rounds
    hour = np.zeros((U, T), dtype=np.int64)
    dow = np.zeros((U, T), dtype=np.int64)
    strain_t = np.zeros((U, T))
    probs = np.zeros((U, T, k, 4))
    x7 = np.zeros((U, T, FS_CTX.dim))
    x12 = np.zeros((U, T, FS_CTX_PROFILE.dim))
    x12n = np.zeros((U, T, FS_CTX_PROFILE.dim))
    tasks_all: list[list[list[dict]]] = []
    prof_all: list[list[dict]] = []
    personas = [names[i % len(names)] for i in rng.permutation(U)]
    arm_bias = np.zeros(k)
    for u in range(U):
        p = PERSONAS[personas[u]]
        taste = rng.normal(0.0, USER_TASTE_SD, k)
        k_user = rng.uniform(0.7, 1.3)
        c_user = float(np.clip(p.completion + rng.normal(0, 0.05), 0.05, 0.95))
        d_user = float(np.clip(p.dismiss + rng.normal(0, 0.05), 0.0, 1.0))
        pref_h = int((p.profile["preferred_hour"] + rng.integers(-1, 2)) % 24)
        base_cr = float(np.clip(p.profile["completion_rate"] + rng.normal(0, 0.05), 0.02, 0.98))
        base_dr = float(np.clip(p.profile["dismiss_rate"] + rng.normal(0, 0.05), 0.02, 0.98))
        base_dw = float(p.profile["mean_dwell_ms"] * math.exp(rng.normal(0, 0.2)))
        start_dow = int(rng.integers(7))
        slot_h = np.array([h for h, _ in p.slots])
        slot_w = np.array([w for _, w in p.slots])
        slot_w = slot_w / slot_w.sum()
        n_days = T // cfg.tips_per_day + 2
        sdays = strain_days(rng, n_days)
        day_prof = day_profiles(rng, sdays, base_cr, base_dr, base_dw, pref_h)
        for a, arm in enumerate(arms):
            arm_bias[a] = p.bias.get(arm, -0.5) + taste[a]
        d_idx, h, wd, sd, u_tasks, u_prof = draw_rounds(
            rng, u, T, cfg.tips_per_day, slot_h, slot_w, start_dow, sdays, p.tasks_mean,
            p.overdue_base, p.tips_before, day_prof, x7, x12, x12n)
        hour[u], dow[u], strain_t[u] = h, wd, sd
        load, over = x7[u, :, 4], x7[u, :, 5]
        we = (wd >= 5).astype(float)
        for a, arm in enumerate(arms):
            z = (arm_bias[a]
                 + HOUR_AMP.get(arm, 0.0) * np.cos(2 * np.pi * (h - p.peak.get(arm, 12)) / 24)
                 + TASK_LOAD.get(arm, 0.0) * load + OVERDUE.get(arm, 0.0) * over
                 + WEEKEND.get(arm, 0.0) * we
                 + k_user * STRAIN_EFFECT.get(arm, 0.0) * sd)
            e = _sigmoid(z)
            probs[u, :, a] = np.stack([e * c_user, e * (1 - c_user), (1 - e) * d_user,
                                       (1 - e) * (1 - d_user)], axis=1)
        tasks_all.append(u_tasks)
        prof_all.append(u_prof)
    expected = probs @ REACTION_REWARD
    uniform = np.random.default_rng([seed, 104729]).random((U, T))
    user_ids = [f"{user_prefix}-s{seed}-u{u}" for u in range(U)]
    return Episode(seed, arms, user_ids, personas, hour, dow, tasks_all, prof_all, x7, x12, x12n,
                   probs, expected, uniform, strain_t)

"""A held-out world: nobody tunes on it (seeded, documented, no I/O).

The persona world (:mod:`tipsdev.sim.world`) is where hyper-parameters are chosen
(``bench/sim_sweep.py``). This one checks that the choices generalise. It differs in
every respect the policies could have over-fitted to:

* **other personas** — a shift nurse, a founder, a teacher, a retiree, a remote
  customer-support agent: other base rates, other peak hours, other time slots, other
  profile baselines, another strain response per arm (:data:`STRAIN_EFFECT2`);
* **mixed membership** — a user is a Dirichlet(0.6, 0.6) mixture of two personas: the
  engagement logit is the weighted sum of the two personas' terms, the profile
  baselines are mixed the same way, the time slots are the dominant persona's;
* **drifting preferences** — the user's own taste per arm is a random walk over days
  (daily step sd 0.06: after 100 days sd ≈ 0.6 around the start), and every persona's
  arm biases move linearly by N(0, 0.4²) over ``DRIFT_DAYS`` days (a season changes).

Everything else (the reaction model, the reward table, common random numbers per
(user, round), the features the policies see) is as in the persona world, so the same
policies and the same scorer code run on it unchanged. ``python -m tipsdev.sim --world
heldout`` (``make sim-heldout``) reports every policy on it with the defaults.
"""

from __future__ import annotations

import math

import numpy as np

from tipsdev.sim.world import (
    REACTION_REWARD,
    Episode,
    Persona,
    WorldConfig,
    _sigmoid,
    day_profiles,
    draw_rounds,
    strain_days,
)
from tipsml.features import FS_CTX, FS_CTX_PROFILE

STRAIN_PHI = 0.8
STRAIN_EFFECT2 = {"focus_block": -0.5, "break_reminder": 0.7, "task_breakdown": 0.3,
                  "prioritize": 0.5, "plan_tomorrow": -0.4}
HOUR_AMP2 = {"focus_block": 0.6, "break_reminder": 0.6, "task_breakdown": 0.4,
             "prioritize": 0.5, "plan_tomorrow": 0.8}
WEEKEND2 = {"focus_block": -0.3, "break_reminder": 0.4, "task_breakdown": -0.1,
            "prioritize": -0.4, "plan_tomorrow": 0.3}
TASK_LOAD2 = {"task_breakdown": 0.6, "prioritize": 0.3}
OVERDUE2 = {"prioritize": 0.8, "focus_block": -0.3}
USER_TASTE_SD2 = 0.4
TASTE_STEP_SD = 0.06     # daily random-walk step of a user's taste per arm
SEASON_SD = 0.4          # persona bias drift per arm over DRIFT_DAYS
DRIFT_DAYS = 100
MIX_ALPHA = 0.6

PERSONAS2: dict[str, Persona] = {p.name: p for p in (
    Persona(
        "nurse", "a hospital nurse on rotating shifts",
        slots=((6, 0.3), (15, 0.3), (23, 0.4)),
        bias={"focus_block": -0.9, "break_reminder": -0.1, "task_breakdown": -0.6,
              "prioritize": -0.5, "plan_tomorrow": -0.4},
        peak={"focus_block": 7, "break_reminder": 3, "task_breakdown": 16,
              "prioritize": 6, "plan_tomorrow": 22},
        completion=0.5, dismiss=0.3,
        profile={"completion_rate": 0.45, "dismiss_rate": 0.3, "mean_dwell_ms": 7000,
                 "preferred_hour": 15},
        tasks_mean=3.5, overdue_base=-1.0, tips_before=60),
    Persona(
        "founder", "a startup founder switching contexts all day",
        slots=((8, 0.3), (13, 0.3), (20, 0.4)),
        bias={"focus_block": 0.0, "break_reminder": -1.0, "task_breakdown": -0.5,
              "prioritize": -0.1, "plan_tomorrow": -0.6},
        peak={"focus_block": 8, "break_reminder": 14, "task_breakdown": 13,
              "prioritize": 9, "plan_tomorrow": 21},
        completion=0.3, dismiss=0.55,
        profile={"completion_rate": 0.25, "dismiss_rate": 0.55, "mean_dwell_ms": 3000,
                 "preferred_hour": 8},
        tasks_mean=8.0, overdue_base=-0.3, tips_before=500),
    Persona(
        "teacher", "a secondary-school teacher marking in the evening",
        slots=((7, 0.3), (16, 0.3), (21, 0.4)),
        bias={"focus_block": -0.4, "break_reminder": -0.5, "task_breakdown": -0.2,
              "prioritize": -0.6, "plan_tomorrow": 0.1},
        peak={"focus_block": 19, "break_reminder": 16, "task_breakdown": 20,
              "prioritize": 7, "plan_tomorrow": 21},
        completion=0.6, dismiss=0.25,
        profile={"completion_rate": 0.65, "dismiss_rate": 0.2, "mean_dwell_ms": 16000,
                 "preferred_hour": 20},
        tasks_mean=4.0, overdue_base=-1.1, tips_before=30),
    Persona(
        "retiree", "a retiree volunteering and learning a language",
        slots=((9, 0.5), (11, 0.3), (17, 0.2)),
        bias={"focus_block": -0.7, "break_reminder": -0.8, "task_breakdown": -0.3,
              "prioritize": -0.9, "plan_tomorrow": -0.1},
        peak={"focus_block": 10, "break_reminder": 12, "task_breakdown": 10,
              "prioritize": 9, "plan_tomorrow": 17},
        completion=0.65, dismiss=0.15,
        profile={"completion_rate": 0.75, "dismiss_rate": 0.1, "mean_dwell_ms": 25000,
                 "preferred_hour": 9},
        tasks_mean=2.0, overdue_base=-1.6, tips_before=10),
    Persona(
        "support", "a remote customer-support agent with a ticket queue",
        slots=((10, 0.35), (14, 0.35), (18, 0.3)),
        bias={"focus_block": -0.5, "break_reminder": -0.3, "task_breakdown": -0.7,
              "prioritize": 0.1, "plan_tomorrow": -0.8},
        peak={"focus_block": 10, "break_reminder": 15, "task_breakdown": 11,
              "prioritize": 14, "plan_tomorrow": 18},
        completion=0.4, dismiss=0.45,
        profile={"completion_rate": 0.4, "dismiss_rate": 0.4, "mean_dwell_ms": 6000,
                 "preferred_hour": 14},
        tasks_mean=7.0, overdue_base=-0.5, tips_before=200),
)}
HELDOUT_PERSONAS: tuple[str, ...] = tuple(PERSONAS2)


def make_heldout_episode(seed: int, n_users: int, rounds: int, cfg: WorldConfig | None = None,
                         user_prefix: str = "held") -> Episode:
    """Draw users (two-persona mixtures), drifting tastes, contexts, profiles, reactions.
    ``cfg.personas`` is ignored unless it names held-out personas."""
    cfg = cfg or WorldConfig()
    rng = np.random.default_rng([seed, 6007, 2])
    arms = tuple(cfg.arms)
    k = len(arms)
    names = [p for p in cfg.personas if p in PERSONAS2] or list(HELDOUT_PERSONAS)
    U, T = n_users, rounds
    n_days = T // cfg.tips_per_day + 2
    season = {p: rng.normal(0.0, SEASON_SD, k) for p in names}  # bias drift per persona
    hour = np.zeros((U, T), dtype=np.int64)
    dow = np.zeros((U, T), dtype=np.int64)
    strain_t = np.zeros((U, T))
    probs = np.zeros((U, T, k, 4))
    x7 = np.zeros((U, T, FS_CTX.dim))
    x12 = np.zeros((U, T, FS_CTX_PROFILE.dim))
    x12n = np.zeros((U, T, FS_CTX_PROFILE.dim))
    tasks_all, prof_all, labels = [], [], []
    for u in range(U):
        pair = rng.choice(len(names), size=2, replace=len(names) < 2)
        w = rng.dirichlet([MIX_ALPHA, MIX_ALPHA])
        ps = [PERSONAS2[names[i]] for i in pair]
        main = ps[int(np.argmax(w))]
        labels.append(main.name)
        taste0 = rng.normal(0.0, USER_TASTE_SD2, k)
        steps = rng.normal(0.0, TASTE_STEP_SD, (n_days, k))
        steps[0] = 0.0
        taste = taste0 + np.cumsum(steps, axis=0)                # (days, K)
        k_user = rng.uniform(0.6, 1.4)
        c_user = float(np.clip(sum(wi * p.completion for wi, p in zip(w, ps))
                               + rng.normal(0, 0.05), 0.05, 0.95))
        d_user = float(np.clip(sum(wi * p.dismiss for wi, p in zip(w, ps))
                               + rng.normal(0, 0.05), 0.0, 1.0))
        def mix(key, w=w, ps=ps):
            return sum(wi * p.profile[key] for wi, p in zip(w, ps))

        pref_h = int((main.profile["preferred_hour"] + rng.integers(-1, 2)) % 24)
        base_cr = float(np.clip(mix("completion_rate") + rng.normal(0, 0.05), 0.02, 0.98))
        base_dr = float(np.clip(mix("dismiss_rate") + rng.normal(0, 0.05), 0.02, 0.98))
        base_dw = float(mix("mean_dwell_ms") * math.exp(rng.normal(0, 0.2)))
        tasks_mean = float(sum(wi * p.tasks_mean for wi, p in zip(w, ps)))
        over_base = float(sum(wi * p.overdue_base for wi, p in zip(w, ps)))
        tips_before = int(sum(wi * p.tips_before for wi, p in zip(w, ps)))
        start_dow = int(rng.integers(7))
        slot_h = np.array([h for h, _ in main.slots])
        slot_w = np.array([x for _, x in main.slots])
        slot_w = slot_w / slot_w.sum()
        sdays = strain_days(rng, n_days, STRAIN_PHI)
        day_prof = day_profiles(rng, sdays, base_cr, base_dr, base_dw, pref_h,
                                rate_k=0.08, dwell_k=0.3)
        d_idx, h, wd, sd, u_tasks, u_prof = draw_rounds(
            rng, u, T, cfg.tips_per_day, slot_h, slot_w, start_dow, sdays, tasks_mean,
            over_base, tips_before, day_prof, x7, x12, x12n)
        hour[u], dow[u], strain_t[u] = h, wd, sd
        load, over = x7[u, :, 4], x7[u, :, 5]
        we = (wd >= 5).astype(float)
        frac = np.minimum(d_idx / DRIFT_DAYS, 1.0)
        for a, arm in enumerate(arms):
            z = np.zeros(T)
            for wi, p, i in zip(w, ps, pair):
                z += wi * (p.bias.get(arm, -0.5) + season[names[i]][a] * frac
                           + HOUR_AMP2.get(arm, 0.0)
                           * np.cos(2 * np.pi * (h - p.peak.get(arm, 12)) / 24))
            z += (TASK_LOAD2.get(arm, 0.0) * load + OVERDUE2.get(arm, 0.0) * over
                  + WEEKEND2.get(arm, 0.0) * we + k_user * STRAIN_EFFECT2.get(arm, 0.0) * sd
                  + taste[d_idx, a])
            e = _sigmoid(z)
            probs[u, :, a] = np.stack([e * c_user, e * (1 - c_user), (1 - e) * d_user,
                                       (1 - e) * (1 - d_user)], axis=1)
        tasks_all.append(u_tasks)
        prof_all.append(u_prof)
    expected = probs @ REACTION_REWARD
    uniform = np.random.default_rng([seed, 104729, 2]).random((U, T))
    user_ids = [f"{user_prefix}-s{seed}-u{u}" for u in range(U)]
    return Episode(seed, arms, user_ids, labels, hour, dow, tasks_all, prof_all, x7, x12, x12n,
                   probs, expected, uniform, strain_t, {"world": "heldout"})

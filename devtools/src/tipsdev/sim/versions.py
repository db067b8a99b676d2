"""Prompt versions in the simulator: hidden style preferences, rotation vs the bandit.

The persona world (:mod:`tipsdev.sim.world`, unchanged) says how likely a user engages
with a tip *kind*. Here the *wording* matters too: each persona has a hidden preference
per prompt version (:data:`STYLE_PREF`, a logit shift of P(engage)), each tip kind a
smaller one (:data:`ARM_STYLE`), and each user a little noise of their own:

    logit P(engage | a, v) = logit P_world(engage | a) + pref[persona, v] + arm[a, v] + u[user, v]

P(completed | engaged) stays the world's, so E[r | a, v] follows from the table as before;
the reaction of (user, round) is still drawn from the world's uniform (common random
numbers: two version strategies that pick the same version see the same reaction).

The tip kind of each round is the one a bandit serves (``arm_policy``, default
``egreedy-pooled``: its own learning is unaffected by versions only in expectation, so
the arm sequence is fixed first, with version-neutral rewards, and the version
strategies are compared on that same sequence). Strategies:

* ``rotation`` — TIP_PROMPT_VERSION=v1,v2-mentor,…: a sticky bucket per user (hash);
* ``bandit`` — :class:`tipsml.versions.VersionBandit` per tip kind, its statistics the
  rewards attributed to each version, refreshed once per round (the generator's copy is
  at most a second old), propensity logged;
* ``oracle`` — the best version for this user and kind (upper bound).

Regret over versions = E[r | a, best version for the user] − E[r | a, chosen version].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tipsdev.sim.world import REACTION_REWARD, REACTIONS, Episode
from tipsml.prompts import sticky_bucket
from tipsml.versions import VersionBandit

VERSIONS = ("v1", "v2-mentor", "v3-few-shot", "v4-grounded")
# hidden logit shift of P(engage) per persona and version: grounded, task-naming tips
# work best on average, but not for everybody (the manager prefers the mentor's calm)
STYLE_PREF = {
    "student":   {"v1": 0.0, "v2-mentor": 0.10, "v3-few-shot": 0.20, "v4-grounded": 0.30},
    "engineer":  {"v1": 0.0, "v2-mentor": -0.10, "v3-few-shot": 0.15, "v4-grounded": 0.45},
    "parent":    {"v1": 0.0, "v2-mentor": 0.25, "v3-few-shot": 0.05, "v4-grounded": 0.20},
    "manager":   {"v1": 0.0, "v2-mentor": 0.35, "v3-few-shot": 0.10, "v4-grounded": 0.15},
    "night_owl": {"v1": 0.0, "v2-mentor": 0.05, "v3-few-shot": 0.25, "v4-grounded": 0.30},
}
ARM_STYLE = {"task_breakdown": {"v4-grounded": 0.10}, "break_reminder": {"v2-mentor": 0.10}}
USER_STYLE_SD = 0.05


def _logit(p):
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


@dataclass
class VersionWorld:
    """E[r | a, v] and reaction probabilities per (user, round, arm, version)."""

    ep: Episode
    versions: tuple[str, ...] = VERSIONS

    def __post_init__(self):
        ep = self.ep
        U, T, K = ep.expected.shape
        V = len(self.versions)
        rng = np.random.default_rng([ep.seed, 4242])
        shift = np.zeros((U, K, V))
        for u in range(U):
            pref = STYLE_PREF.get(ep.personas[u], {})
            for j, v in enumerate(self.versions):
                shift[u, :, j] += pref.get(v, 0.0) + rng.normal(0.0, USER_STYLE_SD)
                for a, arm in enumerate(ep.arms):
                    shift[u, a, j] += ARM_STYLE.get(arm, {}).get(v, 0.0)
        e = ep.probs[..., 0] + ep.probs[..., 1]                  # (U, T, K) P(engage)
        c = np.where(e > 0, ep.probs[..., 0] / np.maximum(e, 1e-12), 0.0)
        d = np.where(e < 1, ep.probs[..., 2] / np.maximum(1 - e, 1e-12), 0.0)
        ev = 1 / (1 + np.exp(-(_logit(e)[..., None] + shift[:, None, :, :])))  # (U, T, K, V)
        self.probs = np.stack([ev * c[..., None], ev * (1 - c[..., None]),
                               (1 - ev) * d[..., None], (1 - ev) * (1 - d[..., None])], axis=-1)
        self.expected = self.probs @ REACTION_REWARD              # (U, T, K, V)

    def reaction(self, u: int, t: int, a: int, j: int) -> int:
        cdf = np.cumsum(self.probs[u, t, a, j])
        return min(int(np.searchsorted(cdf, self.ep.uniform[u, t], side="right")),
                   len(REACTIONS) - 1)


def play_versions(vw: VersionWorld, arms: np.ndarray, strategy: str,
                  rng: np.random.Generator, epsilon: float = 0.05, per_arm: bool = True,
                  experiment: str = "prompt-rotation") -> dict:
    """One strategy on a fixed (U, T) arm sequence: chosen versions, propensities,
    rewards, expected and best-version expected reward."""
    ep = vw.ep
    U, T = arms.shape
    V = len(vw.versions)
    bandit = VersionBandit(vw.versions, epsilon, per_arm)
    stats: dict = {}
    chosen = np.zeros((U, T), dtype=np.int64)
    prop = np.ones((U, T))
    rew = np.zeros((U, T))
    exp = np.zeros((U, T))
    best = np.zeros((U, T))
    buckets = [sticky_bucket(uid, experiment, V) for uid in ep.user_ids]
    for t in range(T):
        snap = dict(stats)  # the generator's copy: refreshed, not live
        for u in range(U):
            a = int(arms[u, t])
            ev = vw.expected[u, t, a]
            if strategy == "rotation":
                j = buckets[u]
            elif strategy == "oracle":
                j = int(np.argmax(ev))
            elif strategy == "bandit":
                c = bandit.choose(snap, ep.arms[a], rng)
                j = vw.versions.index(c.version)
                prop[u, t] = c.propensity
            else:
                raise ValueError(strategy)
            ri = vw.reaction(u, t, a, j)
            r = float(REACTION_REWARD[ri])
            chosen[u, t], rew[u, t], exp[u, t], best[u, t] = j, r, ev[j], ev.max()
            key = (bandit.key(ep.arms[a]), vw.versions[j])
            n0, s0 = stats.get(key, (0.0, 0.0))
            stats[key] = (n0 + 1, s0 + r)  # every tip's reward (default 0 for silence)
    return {"version": chosen, "propensity": prop, "reward": rew, "expected": exp,
            "best": best}


def arm_sequence(ep: Episode, policy: str = "egreedy-pooled", stream: int = 77) -> np.ndarray:
    """The tip kinds a policy serves on this episode (version-neutral world)."""
    from tipsdev.sim.inproc import policy_rng, run_policy
    from tipsdev.sim.runner import policies_from_env

    pol = policies_from_env([policy])[policy]
    return run_policy(ep, pol, policy_rng(ep.seed, stream)).arm

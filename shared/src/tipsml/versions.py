"""Prompt versions chosen by the loop: a bandit over prompt versions (pure logic, no I/O).

``TIP_PROMPT_VERSION=bandit:v1,v2-mentor,v3-few-shot`` makes the generator pick the
version of every tip with this bandit instead of the sticky rotation (a plain comma
list keeps the rotation). Per tip kind (arm) — tip kinds differ in what reads well —
each version has the statistics of the rewards attributed to it: ``n`` tips rewarded
and ``Σ r`` (the feedback consumer adds them, once per decision, to sharded counters;
:meth:`tipsml.state.StateStore.add_version_reward`). The choice is Thompson sampling
on a normal approximation of each version's Beta(1 + Σr, 1 + n − Σr) posterior mixed
with a uniform floor:

    with probability ε pick a version uniformly, else the argmax of draws
    v_j ~ N(m_j, s_j²),  m_j = (1 + Σr_j) / (2 + n_j),  s_j² = m_j (1 − m_j) / (3 + n_j)

and its **propensity** is exact for that procedure:
``p(j) = ε / V + (1 − ε) · P(j = argmax)``, with ``P(argmax)`` the quadrature of
:func:`tipsml.bandits.thompson_probs`. The floor ε (``PROMPT_BANDIT_EPSILON``, 0.05)
keeps every version's propensity ≥ ε/V, so the version decision can be evaluated
off-policy from the exposure log (IPS / SNIPS weights stay bounded by V/ε).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bandits import thompson_probs

BANDIT_PREFIX = "bandit:"
ANY_ARM = "*"  # statistics pooled over tip kinds (per_arm=False)


def parse_mode(spec: list[str]) -> tuple[str, list[str]]:
    """``TIP_PROMPT_VERSION`` → (mode, versions): ``["bandit:v1", "v2"]`` → bandit."""
    if spec and spec[0].startswith(BANDIT_PREFIX):
        first = spec[0][len(BANDIT_PREFIX):]
        return "bandit", [v for v in [first, *spec[1:]] if v]
    return "rotation", list(spec)


@dataclass(frozen=True)
class VersionChoice:
    version: str
    propensity: float
    probs: dict[str, float]
    explored: bool


@dataclass(frozen=True)
class VersionBandit:
    versions: tuple[str, ...]
    epsilon: float = 0.05
    per_arm: bool = True

    def key(self, arm: str) -> str:
        return arm if self.per_arm else ANY_ARM

    def posterior(self, stats: dict, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """(means, sds) per version from ``stats[(arm, version)] = (n, Σr)``."""
        k = self.key(arm)
        n = np.array([stats.get((k, v), (0.0, 0.0))[0] for v in self.versions], dtype=float)
        s = np.array([stats.get((k, v), (0.0, 0.0))[1] for v in self.versions], dtype=float)
        m = (1.0 + s) / (2.0 + n)
        sd = np.sqrt(np.clip(m * (1.0 - m), 1e-6, None) / (3.0 + n))
        return m, sd

    def probs(self, stats: dict, arm: str) -> np.ndarray:
        m, sd = self.posterior(stats, arm)
        v = len(self.versions)
        return self.epsilon / v + (1.0 - self.epsilon) * thompson_probs(m, sd)

    def choose(self, stats: dict, arm: str, rng: np.random.Generator) -> VersionChoice:
        v = len(self.versions)
        m, sd = self.posterior(stats, arm)
        explored = bool(rng.random() < self.epsilon)
        if explored:
            j = int(rng.integers(v))
        else:
            j = int(np.argmax(m + sd * rng.standard_normal(v)))
        p = self.epsilon / v + (1.0 - self.epsilon) * thompson_probs(m, sd)
        return VersionChoice(self.versions[j], float(p[j]),
                             dict(zip(self.versions, map(float, p))), explored)


def stat_field(arm: str, version: str) -> str:
    """The hash field of one (arm, version) counter in the sharded statistics."""
    return f"{arm}\x1f{version}"


def parse_field(f: str) -> tuple[str, str]:
    arm, _, version = f.partition("\x1f")
    return arm, version

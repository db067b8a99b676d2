"""In-process (fast) mode: the scorer's policy code and the reward update, without I/O.

Per user and policy it keeps exactly what Redis keeps (one packed arm vector per arm,
``tipsml.bandits`` layout), chooses with :meth:`Policy.choose` on the features the
scorer would build, and applies each reward with :func:`sherman_morrison_update` — the
numpy reference of the Lua script the feedback consumer runs. Rewards apply before the
user's next round, as in NATS mode (which waits for the consumer between rounds).

How reactions reach the learner (:class:`FeedbackModel`):

* ``realistic`` (the default) — the app sends what it can know: completed, accepted,
  dismissed. An *ignored* tip sends nothing. When the decision's reward window closes
  (``window`` rounds later: the default reward of round t applies before round
  t + window) the service applies ``default_reward`` (``DEFAULT_REWARD``, 0.0 = the
  table's ``ignored``) exactly once, as the feedback consumer does; ``None`` turns it off,
  and then an ignored tip is never learned from.
* ``explicit`` — the former simulator: a ``feedback.ignored`` event at once for every
  ignored tip, which no real app can send.

With ``window=1`` and ``default_reward=0.0`` the realistic client learns exactly what the
explicit one does (same updates, same order), so the figures are unchanged by it; longer
windows delay the default reward, and no default reward biases the learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tipsdev.sim.world import REACTIONS, Episode
from tipsml.bandits import (
    Policy,
    initial_arm,
    shared_add,
    shared_full,
    shared_theta,
    sherman_morrison_update,
)
from tipsml.rewards import REWARD_TABLE

GLOBAL = "*global*"
SHARED = "*shared*"  # a pooled policy's shared statistics (per arm, bandits.shared_add)


@dataclass(frozen=True)
class FeedbackModel:
    client: str = "realistic"           # realistic | explicit
    default_reward: float | None = 0.0  # realistic: applied at window close; None = off
    window: int = 1                     # realistic: reward window in rounds (≥ 1)

    def __post_init__(self):
        if self.client not in ("realistic", "explicit"):
            raise ValueError(f"client must be realistic or explicit, not {self.client!r}")
        if self.window < 1:
            raise ValueError("window must be at least 1 round")

    @property
    def label(self) -> str:
        if self.client == "explicit":
            return "explicit ignored"
        if self.default_reward is None:
            return "realistic, no default reward"
        plural = "s" if self.window > 1 else ""
        return (f"realistic, default reward {self.default_reward:g} at window close "
                f"({self.window} round{plural})")


EXPLICIT = FeedbackModel("explicit")
REALISTIC = FeedbackModel()


@dataclass
class Trace:
    """What one policy did on one episode (arrays are (users, rounds))."""

    policy: str
    seed: int
    arm: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    expected: np.ndarray       # E[r] of the chosen arm (hidden model)
    oracle: np.ndarray         # E[r] of the best arm
    reaction: np.ndarray       # index into REACTIONS
    state: dict = field(default_factory=dict)  # key -> list of packed arm vectors (in-process)
    meta: dict = field(default_factory=dict)   # NATS mode: user ids, decision ids, run id

    @property
    def mean_reward(self) -> float:
        return float(self.reward.mean())

    @property
    def mean_expected(self) -> float:
        return float(self.expected.mean())

    def regret_curve(self) -> np.ndarray:
        """Mean over users of the cumulative (expected) regret after each round."""
        return np.cumsum((self.oracle - self.expected).mean(axis=0))

    def reward_curve(self) -> np.ndarray:
        return np.cumsum(self.reward.mean(axis=0))


class StateBook:
    """Per-user (or global) arm models of one policy, as packed float64 vectors; a pooled
    policy also keeps the shared statistics (key ``SHARED``), which every update feeds as
    the feedback consumer's global step does, and which :meth:`prior` reads like the
    scorer's merged copy (call :meth:`refresh` to take a new copy: the scorer's is at
    most ``GLOBAL_REFRESH_S`` old; the simulator refreshes once per round)."""

    def __init__(self, policy: Policy, arms: tuple[str, ...], init: dict | None = None):
        self.p = policy
        self.arms = arms
        self.d: dict[str, list[np.ndarray]] = {}
        if init:
            self.d = {k: [None if v is None else v.copy() for v in vs] for k, vs in init.items()}
        self._prior: np.ndarray | None = None
        if policy.pooled:
            self.d.setdefault(SHARED, [None] * len(arms))
            self.refresh()

    def refresh(self) -> None:
        if self.p.pooled:
            full = [shared_full(s, self.p.dim, self.p.shared_lam) for s in self.d[SHARED]]
            self._prior = shared_theta(full, self.p.dim)

    def prior(self) -> np.ndarray | None:
        """(K, D) θ of the shared model (pooled), as of the last :meth:`refresh`."""
        return self._prior

    def key(self, user: str) -> str:
        return GLOBAL if self.p.global_model else user

    def get(self, user: str) -> list[np.ndarray]:
        k = self.key(user)
        vs = self.d.get(k)
        if vs is None:
            vs = self.d[k] = [initial_arm(self.p.dim, self.p.lam) for _ in self.arms]
        return vs

    def blobs(self, user: str) -> list[bytes]:
        return [v.tobytes() for v in self.get(user)]

    def update(self, user: str, arm_index: int, x: np.ndarray, r: float) -> None:
        vs = self.get(user)
        vs[arm_index] = sherman_morrison_update(vs[arm_index], x, r)
        if self.p.pooled:
            sh = self.d[SHARED]
            sh[arm_index] = shared_add(sh[arm_index], x, r)


def run_policy(ep: Episode, policy: Policy, rng: np.random.Generator, *, learn: bool = True,
               init_state: dict | None = None, progress=None,
               feedback: FeedbackModel = REALISTIC) -> Trace:
    """Play ``policy`` on the episode; ``learn=False`` freezes it at ``init_state``.
    ``feedback`` says which rewards reach the learner and when (see the module doc)."""
    U, T = ep.n_users, ep.rounds
    arms = list(ep.arms)
    book = StateBook(policy, ep.arms, init_state)
    X = ep.features(policy.features)
    arm = np.zeros((U, T), dtype=np.int64)
    prop = np.zeros((U, T))
    rew = np.zeros((U, T))
    react = np.zeros((U, T), dtype=np.int64)
    rmap = np.array([REWARD_TABLE[r] for r in REACTIONS])
    silent = feedback.client == "realistic"
    dflt = feedback.default_reward
    pending: dict[int, list] = {}  # round at which the window closes -> [(user, arm, x)]
    counts = {"reactions": 0, "defaults": 0, "silent": 0}
    for t in range(T):
        for uid, a, x in pending.pop(t, ()):  # windows closing now: the default reward
            book.update(uid, a, x, dflt)
            counts["defaults"] += 1
        book.refresh()
        prior = book.prior()
        for u in range(U):
            uid = ep.user_ids[u]
            x = X[u, t]
            c = policy.choose(arms, book.blobs(uid), x, rng, prior)
            reaction = ep.reaction(u, t, c.index)
            ri = REACTIONS.index(reaction)
            r = float(rmap[ri])
            arm[u, t], prop[u, t], rew[u, t], react[u, t] = c.index, c.propensity, r, ri
            if not learn:
                continue
            if silent and reaction == "ignored":  # the app sends nothing
                if dflt is None:
                    counts["silent"] += 1
                else:
                    pending.setdefault(t + feedback.window, []).append((uid, c.index, x))
            else:
                book.update(uid, c.index, x, r)
                counts["reactions"] += 1
        if progress is not None:
            progress(U)
    exp = np.take_along_axis(ep.expected, arm[:, :, None], axis=2)[:, :, 0]
    counts["open_at_end"] = sum(len(v) for v in pending.values())
    return Trace(policy.name, ep.seed, arm, prop, rew, exp, ep.oracle(), react, book.d,
                 meta={"feedback": feedback.label, "updates": counts})


def policy_rng(seed: int, stream: int) -> np.random.Generator:
    """The policy's own randomness: independent of the world's (which is fixed by the seed)."""
    return np.random.default_rng([seed, 31337, stream])


def replay(ep: Episode, policy: Policy, arms: np.ndarray) -> tuple[np.ndarray, StateBook]:
    """Re-run ``policy`` on ``ep`` forcing the arms of a logged run (e.g. NATS mode).

    Returns, for every (user, round), the probability the policy gives the forced arm in
    the replayed state (the propensity the scorer should have logged), and the final state.
    """
    U, T = arms.shape
    book = StateBook(policy, ep.arms)
    X = ep.features(policy.features)
    prop = np.zeros((U, T))
    rng = np.random.default_rng(0)
    for u in range(U):
        uid = ep.user_ids[u]
        for t in range(T):
            a = int(arms[u, t])
            book.refresh()
            prop[u, t] = policy.selection_probs(list(ep.arms), book.blobs(uid), X[u, t], rng,
                                                book.prior())[a]
            book.update(uid, a, X[u, t], REWARD_TABLE[ep.reaction(u, t, a)])
    return prop, book

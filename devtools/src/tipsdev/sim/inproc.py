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


@dataclass
class Replay:
    """A logged run replayed in process: for every (user, round) the policy's full
    distribution over arms in the state the forced history gives, and the final state."""

    probs: np.ndarray        # (U, T, K) selection probabilities
    propensity: np.ndarray   # (U, T) the forced arm's probability (what should be logged)
    book: StateBook


def replay(ep: Episode, policy: Policy, arms: np.ndarray) -> Replay:
    """Re-run ``policy`` on ``ep`` forcing the arms of a logged run (e.g. NATS mode)."""
    U, T = arms.shape
    book = StateBook(policy, ep.arms)
    X = ep.features(policy.features)
    probs = np.zeros((U, T, len(ep.arms)))
    rng = np.random.default_rng(0)
    for u in range(U):
        uid = ep.user_ids[u]
        for t in range(T):
            a = int(arms[u, t])
            book.refresh()
            probs[u, t] = policy.selection_probs(list(ep.arms), book.blobs(uid), X[u, t], rng,
                                                 book.prior())
            book.update(uid, a, X[u, t], REWARD_TABLE[ep.reaction(u, t, a)])
    prop = np.take_along_axis(probs, arms[:, :, None], axis=2)[:, :, 0]
    return Replay(probs, prop, book)


def choice_fit(probs: np.ndarray, arms: np.ndarray, expected: np.ndarray) -> dict:
    """Do logged choices look like draws from the distributions the policy gave them?

    ``probs`` (N, K) the policy's distribution at each decision (e.g. :func:`replay` of the
    logged arms), ``arms`` (N,) the arms chosen, ``expected`` (N, K) each arm's expected
    reward. Given the history, each choice is one fresh draw, so each decision's deviation
    from its distribution has mean 0 whatever came before (a martingale difference): the
    sums' z-scores are ~N(0, 1) whatever path the learning took, from a single run — far
    sharper than comparing two runs' mean rewards, whose spread is mostly the learning's
    own randomness.

    Returns ``reward_z`` (expected reward of the chosen arms against the distribution's
    mean), ``prob_z`` (the chosen arms' own probabilities against their expectation Σp²:
    a sampler that explores too little or too much, or ignores ties, moves it) and
    ``arm_z`` (K,) (how often each arm was chosen against its summed probability; 0 where
    an arm could never be chosen).
    """
    probs = probs.reshape(-1, probs.shape[-1])
    arms = arms.reshape(-1)
    expected = expected.reshape(-1, probs.shape[-1])
    got = expected[np.arange(len(arms)), arms]
    mean = (probs * expected).sum(1)
    var = (probs * expected ** 2).sum(1) - mean ** 2
    reward_z = float((got - mean).sum() / np.sqrt(max(var.sum(), 1e-300)))
    p_got = probs[np.arange(len(arms)), arms]
    p_mean = (probs ** 2).sum(1)
    p_var = (probs ** 3).sum(1) - p_mean ** 2
    prob_z = float((p_got - p_mean).sum() / np.sqrt(max(p_var.sum(), 1e-300)))
    chosen = np.eye(probs.shape[1])[arms]
    dev = (chosen - probs).sum(0)
    var_k = (probs * (1 - probs)).sum(0)
    arm_z = np.divide(dev, np.sqrt(var_k), out=np.zeros_like(dev), where=var_k > 0)
    return {"reward_z": reward_z, "prob_z": prob_z, "arm_z": arm_z, "n": len(arms)}

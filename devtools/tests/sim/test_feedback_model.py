"""The simulator's feedback models: what reaches the learner when ignored tips send nothing."""

import numpy as np
import pytest

from tipsdev.sim.inproc import EXPLICIT, FeedbackModel, policy_rng, run_policy
from tipsdev.sim.runner import policies_from_env
from tipsdev.sim.world import REACTIONS, make_episode

IGNORED = REACTIONS.index("ignored")


@pytest.fixture(scope="module")
def ep():
    return make_episode(3, 30, 60)


@pytest.mark.parametrize("policy", ["egreedy-v1", "linucb", "thompson", "egreedy-v2"])
def test_default_reward_with_a_one_round_window_learns_what_explicit_did(ep, policy):
    """Window closing before the next tip + default 0.0 = the former explicit `ignored`
    event: the same updates before every decision, so the same choices and propensities
    (only the last round's windows are still open when the episode ends)."""
    pol = policies_from_env([policy])[policy]
    a = run_policy(ep, pol, policy_rng(3, 0), feedback=EXPLICIT)
    b = run_policy(ep, pol, policy_rng(3, 0), feedback=FeedbackModel("realistic", 0.0, 1))
    np.testing.assert_array_equal(a.arm, b.arm)
    np.testing.assert_array_equal(a.propensity, b.propensity)
    assert b.meta["updates"]["open_at_end"] == int((b.reaction[:, -1] == IGNORED).sum())
    n_a = sum(int(v[0]) for vs in a.state.values() for v in vs)
    n_b = sum(int(v[0]) for vs in b.state.values() for v in vs)
    assert n_a == n_b + b.meta["updates"]["open_at_end"]


def test_every_decision_is_learned_from_once_with_the_default(ep):
    pol = policies_from_env(["egreedy-v1"])["egreedy-v1"]
    for window in (1, 3, 7):
        tr = run_policy(ep, pol, policy_rng(3, 1), feedback=FeedbackModel("realistic", 0.0, window))
        u = tr.meta["updates"]
        ignored = int((tr.reaction == IGNORED).sum())
        assert u["defaults"] + u["open_at_end"] == ignored
        assert u["reactions"] == tr.reaction.size - ignored
        # windows still open at the end: the ignored tips of the last `window` rounds
        last = tr.reaction[:, tr.reaction.shape[1] - window:]
        assert u["open_at_end"] == int((last == IGNORED).sum())
        n = sum(int(v[0]) for vs in tr.state.values() for v in vs)
        assert n == u["reactions"] + u["defaults"]  # state updates = what was applied


def test_without_the_default_silence_is_never_learned_from(ep):
    pol = policies_from_env(["egreedy-v1"])["egreedy-v1"]
    tr = run_policy(ep, pol, policy_rng(3, 1), feedback=FeedbackModel("realistic", None))
    u = tr.meta["updates"]
    assert u["defaults"] == 0 and u["silent"] == int((tr.reaction == IGNORED).sum()) > 0
    n = sum(int(v[0]) for vs in tr.state.values() for v in vs)
    assert n == u["reactions"]
    # the arm models only see reacted-to tips: their mean reward is above what was served
    rs = sum(float(v[1]) for vs in tr.state.values() for v in vs)
    assert rs / n > tr.mean_reward


def test_default_reward_value_is_applied(ep):
    pol = policies_from_env(["egreedy-v1"])["egreedy-v1"]
    tr = run_policy(ep, pol, policy_rng(3, 1), feedback=FeedbackModel("realistic", 0.25, 2))
    reacted = sum(float(v[1]) for vs in tr.state.values() for v in vs)
    want = tr.reward.sum() + 0.25 * tr.meta["updates"]["defaults"]
    assert reacted == pytest.approx(want)


def test_bad_feedback_models_are_refused():
    with pytest.raises(ValueError):
        FeedbackModel("telepathic")
    with pytest.raises(ValueError):
        FeedbackModel("realistic", 0.0, 0)

"""The simulated world: seeded, consistent with the scorer's features, and with signal in
the profile features (no servers needed)."""

import numpy as np
import pytest

from tipsdev.sim.world import PERSONAS, REACTIONS, make_episode
from tipsml.contract import Context
from tipsml.features import FS_CTX, FS_CTX_PROFILE, build_vector
from tipsml.rewards import REWARD_TABLE


@pytest.fixture(scope="module")
def ep():
    return make_episode(3, 30, 60)


def test_at_least_four_personas_with_several_slots():
    assert len(PERSONAS) >= 4
    assert all(len(p.slots) >= 3 for p in PERSONAS.values())


def test_seeded_and_reproducible(ep):
    again = make_episode(3, 30, 60)
    other = make_episode(4, 30, 60)
    np.testing.assert_array_equal(ep.x12, again.x12)
    np.testing.assert_array_equal(ep.uniform, again.uniform)
    assert ep.profile == again.profile and ep.tasks == again.tasks
    assert not np.array_equal(ep.x12, other.x12)


def test_features_are_the_scorers(ep):
    rng = np.random.default_rng(0)
    for _ in range(40):
        u, t = int(rng.integers(ep.n_users)), int(rng.integers(ep.rounds))
        ctx = Context.model_validate(ep.context(u, t))
        np.testing.assert_allclose(build_vector(FS_CTX, ctx, ep.profile[u][t]), ep.x7[u, t],
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(build_vector(FS_CTX_PROFILE, ctx, ep.profile[u][t]),
                                   ep.x12[u, t], rtol=0, atol=1e-12)


def test_reaction_model_is_a_distribution_and_rewards_follow_the_table(ep):
    np.testing.assert_allclose(ep.probs.sum(axis=3), 1.0, atol=1e-12)
    table = np.array([REWARD_TABLE[r] for r in REACTIONS])
    np.testing.assert_allclose(ep.expected, ep.probs @ table)
    assert (ep.oracle()[:, :, None] >= ep.expected - 1e-15).all()
    # inverse-CDF draws reproduce the probabilities
    u, t, a = 0, 0, 0
    cdf = np.cumsum(ep.probs[u, t, a])
    assert ep.reaction(u, t, a) == REACTIONS[int(np.searchsorted(cdf, ep.uniform[u, t], "right"))]


def test_profile_features_carry_within_user_signal(ep):
    # completion rate tracks (minus) the latent strain within each user, and strain moves
    # which arm is best: the profile features are informative beyond the context
    cr = np.array([[p["completion_rate"] for p in row] for row in ep.profile])
    corr = [np.corrcoef(cr[u], ep.strain[u])[0, 1] for u in range(ep.n_users)
            if ep.strain[u].std() > 0.1]
    assert np.median(corr) < -0.8
    best = ep.expected.argmax(axis=2)
    changes = np.mean([len(set(best[u].tolist())) > 1 for u in range(ep.n_users)])
    assert changes > 0.8

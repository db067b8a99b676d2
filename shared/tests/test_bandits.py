"""Policy math against direct numpy computations (pure logic, no servers)."""

import numpy as np
import pytest

from tipsml.bandits import Policy, initial_arm, pack, sherman_morrison_update, split
from tipsml.features import FS_CTX, FS_CTX_PROFILE, build_vector, profile_vector, resolve_profile
from tipsml.contract import Context, Task

ARMS = ["a", "b", "c"]


def _sequence(rng, n, dim):
    return [(rng.integers(3), rng.normal(size=dim), float(rng.random())) for _ in range(n)]


def _direct(seq, dim, lam, k=3):
    A = [lam * np.eye(dim) for _ in range(k)]
    b = [np.zeros(dim) for _ in range(k)]
    for a, x, r in seq:
        A[a] += np.outer(x, x)
        b[a] += r * x
    return A, b


def _run_sm(seq, dim, lam, k=3):
    vs = [initial_arm(dim, lam) for _ in range(k)]
    for a, x, r in seq:
        vs[a] = sherman_morrison_update(vs[a], x, r)
    return vs


@pytest.mark.parametrize("dim", [7, 12])
def test_sherman_morrison_matches_inverse(dim):
    rng = np.random.default_rng(1)
    seq = _sequence(rng, 300, dim)
    A, b = _direct(seq, dim, 1.0)
    vs = _run_sm(seq, dim, 1.0)
    for k in range(3):
        n, rs, bk, ainv = split(vs[k], dim)
        np.testing.assert_allclose(ainv, np.linalg.inv(A[k]), atol=1e-9)
        np.testing.assert_allclose(bk, b[k], atol=1e-9)
        assert n == sum(1 for a, _, _ in seq if a == k)


def test_linucb_scores_and_choice_match_numpy():
    rng = np.random.default_rng(2)
    dim, alpha = 7, 0.7
    seq = _sequence(rng, 200, dim)
    A, b = _direct(seq, dim, 1.0)
    blobs = [pack(v) for v in _run_sm(seq, dim, 1.0)]
    pol = Policy("linucb", "linucb", FS_CTX, alpha=alpha)
    x = rng.normal(size=dim)
    ch = pol.choose(ARMS, blobs, x, np.random.default_rng(0))
    ucb = [np.linalg.solve(A[k], b[k]) @ x + alpha * np.sqrt(x @ np.linalg.inv(A[k]) @ x)
           for k in range(3)]
    for k, a in enumerate(ARMS):
        assert ch.scores[a] == pytest.approx(ucb[k], rel=1e-9)
    assert ch.arm == ARMS[int(np.argmax(ucb))]
    assert ch.propensity == 1.0


def test_egreedy_propensity_is_selection_frequency():
    rng = np.random.default_rng(3)
    dim = 7
    blobs = [pack(v) for v in _run_sm(_sequence(rng, 100, dim), dim, 1.0)]
    pol = Policy("egreedy-v1", "egreedy", FS_CTX, epsilon=0.2)
    x = rng.normal(size=dim)
    g = np.random.default_rng(4)
    picks = {}
    props = {}
    for _ in range(20000):
        c = pol.choose(ARMS, blobs, x, g)
        picks[c.arm] = picks.get(c.arm, 0) + 1
        props[c.arm] = c.propensity
    for a, p in props.items():
        assert picks[a] / 20000 == pytest.approx(p, abs=0.012)
    probs = pol.selection_probs(ARMS, blobs, x)
    assert probs.sum() == pytest.approx(1.0)


def test_thompson_propensity_close_to_frequency():
    rng = np.random.default_rng(5)
    dim = 7
    blobs = [pack(v) for v in _run_sm(_sequence(rng, 30, dim), dim, 1.0)]
    pol = Policy("thompson", "thompson", FS_CTX, v=0.5, samples=2000)
    x = rng.normal(size=dim)
    g = np.random.default_rng(6)
    counts = {a: 0 for a in ARMS}
    props = {a: [] for a in ARMS}
    for _ in range(4000):
        c = pol.choose(ARMS, blobs, x, g)
        counts[c.arm] += 1
        props[c.arm].append(c.propensity)
    for a in ARMS:
        if counts[a] > 100:
            assert counts[a] / 4000 == pytest.approx(np.mean(props[a]), abs=0.04)


def test_profile_features_fallbacks_and_dims():
    assert resolve_profile(None)["completion_rate"] == 0.3
    r = resolve_profile({"completion_rate": 7, "dismiss_rate": "x", "mean_dwell_ms": None})
    assert r["completion_rate"] == 0.3 and r["dismiss_rate"] == 0.3
    v = profile_vector({"mean_dwell_ms": 10_000_000, "preferred_hour": 9, "tip_volume": 1000}, 9)
    assert v[2] == 1.0 and v[3] == pytest.approx(1.0) and v[4] == pytest.approx(1.0)
    ctx = Context(hour_of_day=6, day_of_week=6,
                  tasks=[Task(title="t", priority=4, overdue=True), Task(title="u")])
    x7 = build_vector(FS_CTX, ctx, None)
    x12 = build_vector(FS_CTX_PROFILE, ctx, {"preferred_hour": 18})
    assert x7.shape == (7,) and x12.shape == (12,)
    assert x7[3] == 1.0 and x7[5] == 0.5 and x7[6] == 1.0  # mean over tasks with a priority
    assert x12[10] == pytest.approx(-1.0)  # 12 h away from the preferred hour

"""Off-policy estimators: exact cases, and validation against online runs in the simulator."""

import numpy as np
import pytest

from tipsdev.ope import Logged, dr, evaluate, ips, snips, target_probs_from_entry, validate_pair


def synthetic(n=20000, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = np.c_[np.ones(n), rng.random((n, 2))]
    true_q = np.clip(0.2 + 0.5 * x[:, 1:2] * (np.arange(k) / k) + 0.1 * x[:, 2:3], 0, 1)
    a = rng.integers(k, size=n)          # uniform logging
    p = np.full(n, 1.0 / k)
    r = (rng.random(n) < true_q[np.arange(n), a]).astype(float)
    pi = np.zeros((n, k))
    pi[:, k - 1] = 0.9
    pi[:, 0] = 0.1                       # a fixed stochastic target
    truth = float((pi * true_q).sum(axis=1).mean())
    return Logged([f"a{i}" for i in range(k)], a, p, r, pi, x, rng.integers(200, size=n)), truth


def test_estimators_cover_the_truth_on_synthetic_data():
    d, truth = synthetic()
    for e in (ips(d), snips(d), dr(d)):
        assert e["lo"] <= truth <= e["hi"], (e, truth)
        assert e["hi"] - e["lo"] < 0.06


def test_on_policy_ips_is_the_logged_mean():
    d, _ = synthetic(2000)
    d.pi = np.full_like(d.pi, 0.25)
    assert abs(ips(d)["value"] - d.r.mean()) < 1e-12
    assert abs(snips(d)["value"] - d.r.mean()) < 1e-12


def test_target_probs_rebuilt_from_logged_entries():
    arms = ["a", "b", "c", "d", "e"]
    eg = {"policy": "egreedy-v2",
          "policy_version": "egreedy-v2/egreedy/ctx7+prof5-v1/eps=0.2,lambda=1",
          "scores": {"a": 0.1, "b": 0.5, "c": 0.5, "d": 0.0, "e": -1}}
    p = target_probs_from_entry(eg, arms)
    np.testing.assert_allclose(p, [0.04, 0.44, 0.44, 0.04, 0.04])
    lu = {"policy": "linucb", "policy_version": "linucb/linucb/ctx7-v1/alpha=0.5,lambda=1",
          "scores": {"a": 0.1, "b": 0.7, "c": 0.5, "d": 0.0, "e": -1}}
    np.testing.assert_allclose(target_probs_from_entry(lu, arms), [0, 1, 0, 0, 0])


def test_target_probs_tie_as_the_scorer_does():
    """Scores equal up to float32 rounding of the stored state are a tie in the scorer's
    pick and so in the rebuilt distribution: an own-policy IPS weight is then exactly 1."""
    from tipsml.bandits import Policy
    from tipsml.features import FS_CTX

    arms = ["a", "b", "c", "d", "e"]
    scores = [3e-8, 0.0, -2e-8, 0.0, -0.4]
    c = Policy("egreedy-v1", "egreedy", FS_CTX, epsilon=0.1).pick(
        arms, scores, None, np.random.default_rng(1))
    eg = {"policy_version": "egreedy-v1/egreedy/ctx7-v1/eps=0.1,lambda=1",
          "scores": dict(zip(arms, scores))}
    p = target_probs_from_entry(eg, arms)
    np.testing.assert_allclose(p, [0.245, 0.245, 0.245, 0.245, 0.02])
    assert p[arms.index(c.arm)] == pytest.approx(c.propensity)


def test_ope_matches_online_within_10pct_in_the_simulator():
    row = validate_pair("egreedy-v1", "egreedy-v2", users=150, warmup=60, rounds=80, seed=1)
    for k in ("snips", "dr"):
        assert row[k]["within_10pct"], row
    assert row["valid_logging"]


def test_linucb_logging_is_flagged_invalid():
    row = validate_pair("linucb", "egreedy-v1", users=40, warmup=20, rounds=20, seed=2)
    assert row["valid_logging"] is False
    d, _ = synthetic(100)
    d.info["support_ok"] = False
    assert evaluate(d)["support_ok"] is False

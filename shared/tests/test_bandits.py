"""Policy math against direct numpy computations (pure logic, no servers)."""

import numpy as np
import pytest

from tipsml.bandits import Policy, initial_arm, pack, sherman_morrison_update, split
from tipsml.contract import Context, Task
from tipsml.features import FS_CTX, FS_CTX_PROFILE, build_vector, profile_vector, resolve_profile

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


# ---------------------------------------------------------------- Thompson: exact propensity

def _draws(mean, sd, n, seed):
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(mean))
    for _ in range(n // 250_000):
        d = mean + sd * rng.standard_normal((250_000, len(mean)))
        counts += np.bincount(d.argmax(axis=1), minlength=len(mean))
    return counts / counts.sum()


@pytest.mark.parametrize("mean,sd", [
    ([0.31, 0.25, 0.40, 0.28, 0.35], [0.05, 0.10, 0.03, 0.20, 0.08]),   # typical
    ([0.30, 0.31, 0.20, 0.50, 0.00], [0.30, 0.003, 0.05, 0.30, 0.001]),  # widths 300× apart
    ([0.30] * 5, [0.1] * 5),                                              # exact tie: 1/5 each
    ([0.30] * 5, [0.001, 0.1, 0.2, 0.3, 0.01]),                           # same mean, widths differ
    ([0.1, 0.9], [0.2, 0.3]),                                             # K=2 has a closed form
])
def test_thompson_probs_match_a_million_draws(mean, sd):
    """Tolerance 0.002 absolute per arm: the 10⁶-draw reference has sd ≤ 0.0005."""
    from tipsml.bandits import thompson_probs

    mean, sd = np.array(mean), np.array(sd)
    p = thompson_probs(mean, sd)
    assert p.sum() == pytest.approx(1.0, abs=1e-12) and (p >= 0).all()
    np.testing.assert_allclose(p, _draws(mean, sd, 1_000_000, 7), atol=0.002, rtol=0)
    if len(mean) == 2:  # P(a1 > a0) = Φ((μ1 − μ0)/√(σ0² + σ1²))
        import math

        z = (mean[1] - mean[0]) / math.hypot(*sd)
        assert p[1] == pytest.approx(0.5 * math.erfc(-z / math.sqrt(2)), abs=1e-4)


def test_norm_cdf_against_math_erfc():
    import math

    from tipsml.bandits import norm_cdf

    z = np.linspace(-9, 9, 3601)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in z])
    assert np.abs(norm_cdf(z) - want).max() < 1e-7


def test_thompson_choice_states_the_exact_propensity():
    from dataclasses import replace

    from tipsml.bandits import thompson_probs

    rng = np.random.default_rng(8)
    dim = 7
    blobs = [pack(v) for v in _run_sm(_sequence(rng, 40, dim), dim, 1.0)]
    pol = Policy("thompson", "thompson", FS_CTX, v=0.5)
    x = rng.normal(size=dim)
    _, b, ainv = pol.stack(blobs)
    u = ainv @ x
    mean = np.vecdot(u, b)  # the maths of Policy's numpy path (bandits._vecdot)
    sd = 0.5 * np.sqrt(np.vecdot(u, x))
    np.testing.assert_allclose(pol.selection_probs(ARMS, blobs, x), thompson_probs(mean, sd),
                               rtol=1e-12, atol=1e-15)  # the C part's sums, another order
    m, ux = pol.arm_stats(blobs, x)  # what choose and selection_probs use
    want = thompson_probs(np.array(m), 0.5 * np.sqrt(np.array(ux)))
    np.testing.assert_allclose(pol.selection_probs(ARMS, blobs, x), want, rtol=0, atol=0)
    g = np.random.default_rng(9)
    for _ in range(50):
        c = pol.choose(ARMS, blobs, x, g)
        assert c.propensity == pytest.approx(want[c.index], abs=1e-15)
    # the former estimate is still there, under its own policy version
    mc = replace(pol, propensity="mc")
    assert mc.version != pol.version and "p=exact" in pol.version and "m=256" in mc.version
    assert 0 < mc.choose(ARMS, blobs, x, g).propensity <= 1


def test_update_id_changes_with_lambda_and_features_only():
    from dataclasses import replace

    from tipsml.features import FS_CTX_PROFILE_V2

    pol = Policy("egreedy-v1", "egreedy", FS_CTX)
    assert replace(pol, epsilon=0.3).update_id == pol.update_id  # ε does not enter the update
    assert replace(pol, lam=2.0).update_id != pol.update_id
    assert replace(pol, features=FS_CTX_PROFILE_V2).update_id != pol.update_id


def test_dwell_log_encoding_is_versioned_and_not_tiny():
    from tipsml.features import FS_CTX_PROFILE_V2

    assert FS_CTX_PROFILE_V2.version != FS_CTX_PROFILE.version
    ctx = Context(hour_of_day=9, day_of_week=1)
    for dwell_ms in (4000, 9000, 20000):  # the simulator's personas: 0.007-0.033 linear
        p = {"mean_dwell_ms": dwell_ms}
        lin = build_vector(FS_CTX_PROFILE, ctx, p)[9]
        log = build_vector(FS_CTX_PROFILE_V2, ctx, p)[9]
        assert lin < 0.04 and 0.2 < log < 0.5
    big = build_vector(FS_CTX_PROFILE_V2, ctx, {"mean_dwell_ms": 10_000_000})
    assert big[9] == pytest.approx(1.0)
    assert build_vector(FS_CTX_PROFILE_V2, ctx, {"mean_dwell_ms": 0})[9] == 0.0


@pytest.mark.parametrize("path", ["c", "numpy"])
def test_choose_many_is_choose_per_policy(path, monkeypatch):
    """The scorer's one-pass choice of all its policies (issue 12) gives exactly what
    each policy's own choose gives: same arms, propensities, scores, and the same draws
    from the generator in the same order (every layout mix, shared and own vectors), with
    the C part and without it."""
    from types import SimpleNamespace

    from tipsml import bandits
    from tipsml.bandits import build_policies, choose_many, encode_arm
    from tipsml.features import build_vectors, resolve_time

    if path == "numpy":
        monkeypatch.setattr(bandits, "_hot", None)
        monkeypatch.setattr(bandits, "_HOT_PICK", False)
    elif bandits._hot is None:
        pytest.skip("the C part is not built (TIPSML_NO_C or no compiler)")

    settings = SimpleNamespace(ridge_lambda=0.7, epsilon=0.3, linucb_alpha=0.5, thompson_v=0.3,
                               thompson_samples=64, thompson_propensity="exact",
                               global_policies=[])
    pols = build_policies(settings)
    arms = ["a", "b", "c", "d"]
    rng = np.random.default_rng(5)
    names = sorted(pols)
    for trial in range(60):
        pick = [names[i] for i in rng.permutation(len(names))[:int(rng.integers(1, 6))]]
        ps = [pols[n] for n in pick]
        blobs = []
        for p in ps:
            row = []
            for _ in arms:
                kind = rng.integers(4)  # missing, prior, layout 1, layout 2
                v = initial_arm(p.dim, 0.7)
                for _ in range(int(rng.integers(0, 6))):
                    v = sherman_morrison_update(v, rng.normal(size=p.dim), float(rng.random()))
                row.append(None if kind == 0 else b"" if kind == 1 else
                           pack(v) if kind == 2 else encode_arm(v, p.dim))
            blobs.append(row)
        ctx = Context(hour_of_day=int(rng.integers(24)), day_of_week=int(rng.integers(7)),
                      tasks=[Task(priority=int(rng.integers(5)))])
        prof = {"completion_rate": float(rng.random()), "mean_dwell_ms": 30000.0}
        byv = build_vectors([p.features for p in ps], ctx, prof)
        xs = [byv[p.features.version] for p in ps]
        for p, x in zip(ps, xs):
            np.testing.assert_array_equal(x, build_vector(p.features, ctx, prof))
        # the time resolved by the caller (the scorer resolves it once per request)
        again = build_vectors([p.features for p in ps], ctx, prof, when=resolve_time(ctx))
        assert all(np.array_equal(again[v], byv[v]) for v in byv)
        priors = [rng.normal(size=(len(arms), p.dim)) if p.pooled and rng.random() < 0.7
                  else None for p in ps]  # a pooled policy's shared θ_s per arm
        r1, r2 = np.random.default_rng(trial), np.random.default_rng(trial)
        want = [p.choose(arms, b, x, r1, pr) for p, b, x, pr in zip(ps, blobs, xs, priors)]
        got = choose_many(ps, arms, blobs, xs, r2, priors)
        assert got == want
        assert r1.random() == r2.random()  # the same draws were consumed


def test_resolve_profile_is_the_schema_applied_value_by_value():
    """The resolver's precomputed table (issue 12) gives what PROFILE_SCHEMA says: a
    number within the feature's range (an int feature truncated), else its fallback."""
    import math
    import random

    from tipsml.features import PROFILE_SCHEMA, _num, resolve_profile

    def by_the_schema(profile):
        out = {}
        for name, spec in PROFILE_SCHEMA.items():
            v = _num((profile or {}).get(name))
            if v is None or (spec.lo is not None and v < spec.lo) or \
                    (spec.hi is not None and v > spec.hi):
                out[name] = spec.fallback
            else:
                out[name] = int(v) if spec.dtype == "int" else v
        return out

    rnd = random.Random(1)
    vals = [None, True, False, 0, 1, -1, 23, 24, 0.5, -0.0, 1.0, 1.5, 1e300, math.inf,
            -math.inf, math.nan, 10**400, "x", [1], {}, 15000.0, 7.9, 23.0, 23.5]
    for _ in range(5000):
        p = {n: rnd.choice(vals) for n in PROFILE_SCHEMA if rnd.random() < 0.8}
        assert repr(resolve_profile(p)) == repr(by_the_schema(p)), p
    assert resolve_profile(None) == by_the_schema(None)


@pytest.mark.parametrize("c_pick", [True, False])
@pytest.mark.parametrize("kind", ["egreedy", "linucb"])
def test_float32_rounding_does_not_break_a_tie(kind, c_pick, monkeypatch):
    """An arm whose mean is 0 in exact arithmetic reads as ±1e-8 from the float32 state:
    still a tie with the arms at 0 (uniform choice, the propensity says so), as the
    float64 simulator sees it; a real difference of 1e-5 is not a tie. The C pick (where
    built) and the Python pick alike."""
    from tipsml import bandits

    monkeypatch.setattr(bandits, "_HOT_PICK", bandits._HOT_PICK and c_pick)
    pol = Policy(f"t-{kind}", kind, FS_CTX, epsilon=0.1, alpha=0.0)
    arms = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(5)
    noisy, real, ux = [3e-8, 0.0, -2e-8, 0.0, 0.0], [1e-5, 0.0, 0.0, 0.0, 0.0], [0.0] * 5
    tied = 0.02 + 0.9 / 5 if kind == "egreedy" else 1 / 5
    picks = [pol.pick(arms, noisy, ux, rng) for _ in range(500)]
    assert {round(c.propensity, 12) for c in picks} == {round(tied, 12)}
    assert {c.arm for c in picks} == set(arms)
    picks = [pol.pick(arms, real, ux, rng) for _ in range(500)]
    if kind == "egreedy":  # a is the greedy arm: 0.92, any other 0.02
        assert {(c.arm == "a", round(c.propensity, 12)) for c in picks} == {(True, 0.92),
                                                                           (False, 0.02)}
    else:
        assert {(c.arm, c.propensity) for c in picks} == {("a", 1.0)}

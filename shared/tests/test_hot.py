"""The C part of the bandit maths (``tipsml._hot``) against the numpy path it replaces on
the scorer's hot path: the same numbers to 1e-12 (relative; the sums are taken in another
order, nothing else differs) on every row layout the state store holds, with and without
a pooled prior, and Thompson propensities on widths up to 10⁴ apart. Pure logic."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tipsml import bandits
from tipsml.bandits import (
    QUAD_BREAKS,
    Policy,
    _legendre,
    encode_arm,
    initial_arm,
    pack,
    sherman_morrison_update,
    thompson_probs_numpy,
)
from tipsml.features import FS_CTX, FS_CTX_PROFILE_V2

hot = bandits._hot
needs_c = pytest.mark.skipif(hot is None, reason="the C part is not built")


def test_the_c_part_is_built_where_a_compiler_is():
    """`make setup` builds it (shared/setup.py); a silent fallback would hide a broken
    build behind the numpy path, so this fails unless the numpy path was asked for."""
    if os.environ.get("TIPSML_NO_C", "") not in ("", "0"):
        pytest.skip("TIPSML_NO_C asks for the Python paths")
    assert hot is not None, "tipsml._hot is not built: rerun `make setup` (needs gcc)"


def _close(got, want, rel=1e-12):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= rel * np.maximum(1.0, np.abs(want))), (got, want)


def _row(rng, kind: int, dim: int, lam: float):
    v = initial_arm(dim, lam)
    for _ in range(int(rng.integers(0, 30))):
        v = sherman_morrison_update(v, rng.normal(size=dim), float(rng.random()))
    return [None, b"", pack(v), encode_arm(v, dim), b"\x00" * 12][kind]


@needs_c
@pytest.mark.parametrize("kind", ["egreedy", "linucb", "thompson"])
@pytest.mark.parametrize("pooled", [False, True])
def test_arm_stats_match_numpy_on_every_layout_mix(kind, pooled):
    rng = np.random.default_rng(3)
    for trial in range(200):
        fs = FS_CTX if trial % 2 else FS_CTX_PROFILE_V2
        lam = float(rng.choice([0.7, 1.0, 50.0]))
        pol = Policy(f"t-{kind}", kind, fs, lam=lam, pooled=pooled)
        k = int(rng.integers(1, 9))
        # every mix: all layout 2 (the usual case), all layout 1, both, missing, other dims
        kinds = rng.choice([[3], [2], [0, 1, 2, 3, 4]][trial % 3], size=k)
        blobs = [_row(rng, int(c), pol.dim, lam) for c in kinds]
        x = rng.normal(size=pol.dim) * rng.choice([1e-3, 1.0, 30.0])
        prior = rng.normal(size=(k, pol.dim)) if pooled and trial % 4 else None
        got = hot.arm_stats(blobs, x, lam, True, None if prior is None else prior, lam)
        want = pol.arm_stats_numpy(blobs, x, prior, True)
        _close(got[0], want[0])
        _close(got[1], want[1])
        m, ux = pol.arm_stats(blobs, x, prior, kind != "egreedy")
        assert m == got[0] and (ux is None if kind == "egreedy" else ux == got[1])


@needs_c
def test_thompson_probs_match_numpy():
    rng = np.random.default_rng(4)
    g, w = _legendre(3)
    for trial in range(400):
        k = int(rng.integers(1, 10))
        mean = rng.normal(size=k) * rng.choice([1e-3, 0.3, 5.0])
        sd = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), size=k))  # widths up to 10⁴ apart
        if trial % 7 == 0:
            sd[int(rng.integers(k))] = 0.0  # floored at 1e-12, as numpy does
        if trial % 11 == 0:
            mean[:] = mean[0]  # exact ties
        got = hot.thompson_probs(mean, sd, QUAD_BREAKS, g, w)
        want = thompson_probs_numpy(mean, sd)
        _close(got, want)
        assert abs(sum(got) - 1.0) < 1e-12 and min(got) >= 0.0
    for nodes in (2, 4, 8):  # another rule: another node count
        g, w = _legendre(nodes)
        mean, sd = np.array([0.3, 0.31, 0.2]), np.array([0.3, 0.003, 0.05])
        _close(hot.thompson_probs(mean, sd, QUAD_BREAKS, g, w),
               thompson_probs_numpy(mean, sd, nodes))


@needs_c
def test_bad_arguments_are_errors_not_crashes():
    x = np.ones(7)
    with pytest.raises(TypeError):
        hot.arm_stats((b"",), x, 1.0, True)          # rows: a list
    with pytest.raises(TypeError):
        hot.arm_stats([bytearray(10)], x, 1.0, True)  # rows: bytes or None
    with pytest.raises(ValueError):
        hot.arm_stats([None], np.ones(7, dtype=np.int64), 1.0, True)  # x: float64
    with pytest.raises(ValueError):
        hot.arm_stats([None], np.ones(40), 1.0, True)  # beyond the C part's dimension
    with pytest.raises(ValueError):
        hot.arm_stats([None, None], x, 1.0, True, np.ones(7), 1.0)  # prior: K·D values
    with pytest.raises(TypeError):
        hot.arm_stats([None], x)
    with pytest.raises(ValueError):
        hot.thompson_probs(np.ones(3), np.ones(2), QUAD_BREAKS, *_legendre(3))
    assert hot.thompson_probs(np.ones(1), np.ones(1), QUAD_BREAKS, *_legendre(3)) == [1.0]


def test_policy_reads_rows_the_c_part_does_not_take():
    """bytearray rows (not what Redis returns, but a caller may hold them) go to numpy."""
    rng = np.random.default_rng(5)
    pol = Policy("t", "linucb", FS_CTX)
    blobs = [_row(rng, 3, pol.dim, 1.0) for _ in range(3)]
    x = rng.normal(size=pol.dim)
    m, ux = pol.arm_stats([bytearray(b) for b in blobs], x)
    _close(m, pol.arm_stats_numpy(blobs, x)[0])
    _close(ux, pol.arm_stats_numpy(blobs, x)[1])


@needs_c
def test_draws_are_numpys_own():
    """Generator.integers(n) and Generator.random() reproduced on the same bit generator:
    the same numbers in the same order, the rejection loop (n just above 2³¹) included,
    for every bit generator numpy ships."""
    for bg in (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64,
               np.random.MT19937):
        a, b = np.random.Generator(bg(7)), np.random.Generator(bg(7))
        cap = b.bit_generator.capsule
        sizes = np.random.default_rng(1).integers(1, 12, size=2000).tolist()
        sizes += [2**31 + 11] * 200 + [1] * 10 + [2**32 - 1] * 5
        for n in sizes:
            assert int(a.integers(n)) == hot.draw_below(cap, n)
            if n % 3 == 0:
                assert a.random() == hot.draw_double(cap)
        assert a.random() == b.random()  # still in step
    assert bandits._HOT_PICK  # the import-time check agreed


@needs_c
@pytest.mark.parametrize("kind", ["egreedy", "linucb"])
def test_pick_in_c_is_the_python_pick(kind, monkeypatch):
    """Same arm, propensity, exploration flag and scores, and the same draws consumed,
    on ties (a new user's arms), near-ties (either side of TIE_TOL) and ordinary means."""
    pol = Policy(f"t-{kind}", kind, FS_CTX, epsilon=0.3, alpha=0.7)
    rng = np.random.default_rng(11)
    cases = []
    for trial in range(3000):
        k = int(rng.integers(1, 8))
        mean = rng.normal(size=k).tolist()
        if trial % 3 == 0:
            mean = [0.0] * k  # a new user: every arm tied
        elif trial % 3 == 1 and k > 1:
            mean[1] = mean[0] + float(rng.choice([0.0, 5e-13, 5e-7, 2e-6]))
        ux = np.abs(rng.normal(size=k)).tolist()
        if trial % 5 == 0:
            ux[0] = -1e-17  # rounding below zero: clipped
        cases.append((["a", "b", "c", "d", "e", "f", "g"][:k], mean, ux))
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    got = [pol.pick(a, m, u, r1) for a, m, u in cases]
    monkeypatch.setattr(bandits, "_HOT_PICK", False)
    want = [pol.pick(a, m, u, r2) for a, m, u in cases]
    assert got == want
    assert r1.random() == r2.random()
    with pytest.raises(ValueError):
        hot.pick(2, [0.0], None, 0.1, r1.bit_generator.capsule)
    with pytest.raises(TypeError):
        hot.pick(1, [0.0, 1.0], [0.0], 0.1, r1.bit_generator.capsule)  # ux: one per arm
    with pytest.raises(ValueError):
        hot.pick(0, [], None, 0.1, r1.bit_generator.capsule)


@needs_c
def test_round6_is_numpys_round():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=5000) * 10.0 ** rng.integers(-8, 4, size=5000),
                        np.array([0.5e-6, 1.5e-6, 2.5e-6, -0.5e-6, 0.0, -0.0, 1e300, np.inf])])
    assert hot.round6(x) == x.round(6).tolist()


def test_pick_takes_arrays_too():
    """A caller's numpy arrays (not the plain floats the scorer passes) go to the Python
    pick, before any draw: the same choice and the same generator state."""
    pol = Policy("t-linucb", "linucb", FS_CTX, alpha=0.7)
    r1, r2 = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(50):
        m = np.zeros(3)
        assert pol.pick(["a", "b", "c"], m, np.ones(3), r1) == \
            pol.pick(["a", "b", "c"], m.tolist(), [1.0] * 3, r2)
    assert r1.random() == r2.random()

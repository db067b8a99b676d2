"""Pooled policies (per-user models shrunk toward a shared model): the maths against its
closed form, and the Lua steps against their numpy twins on a real redis-server (or a
Redis Cluster with ``--cluster``): the user's update, the shared statistics, exactly once,
and the repair of a crash between the two steps."""

import time

import numpy as np
import pytest
from redis.crc import key_slot

from tipsml.bandits import (
    HEADER,
    POOLED_POLICIES,
    Policy,
    build_policies,
    decode_arm,
    initial_arm,
    pack,
    shared_add,
    shared_full,
    shared_theta,
    sherman_morrison_update,
    stored_update,
    update_id,
)
from tipsml.features import FS_CTX_PROFILE_V2
from tipsml.settings import BaseServiceSettings
from tipsml.state import (
    GLOBAL_SHARDS,
    StateStore,
    decision_key,
    event_key,
    generation_key,
    global_marker_key,
    global_shard,
    global_shard_key,
    state_key,
)

D = FS_CTX_PROFILE_V2.dim
ARMS = ["a", "b", "c"]


def _pooled(lam=50.0, shared_lam=1.0, eps=0.03):
    return Policy("egreedy-pooled", "egreedy", FS_CTX_PROFILE_V2, lam=lam, epsilon=eps,
                  pooled=True, shared_lam=shared_lam)


def _data(rng, n):
    return rng.uniform(-1, 1, (n, D)), rng.uniform(0, 1, n)


def test_user_model_is_the_closed_form_posterior_mean():
    rng = np.random.default_rng(1)
    lam_p, lam_s = 50.0, 1.0
    xs_all, rs_all = _data(rng, 400)           # everybody's rewards on one arm
    stats = None
    for x, r in zip(xs_all, rs_all):
        stats = shared_add(stats, x, r)
    xs32 = xs_all.astype("<f4").astype(float)
    theta_s = np.linalg.solve(lam_s * np.eye(D) + xs32.T @ xs32, xs32.T @ rs_all)
    got_s = shared_theta([pack(shared_full(stats, D, lam_s))], D)[0]
    np.testing.assert_allclose(got_s, theta_s, rtol=1e-9, atol=1e-12)
    # the user's own 12 rewards, stored as an ordinary ridge state with λ_p
    xu, ru = _data(rng, 12)
    v = initial_arm(D, lam_p)
    for x, r in zip(xu, ru):
        v = sherman_morrison_update(v, x, r)
    want = np.linalg.solve(lam_p * np.eye(D) + xu.T @ xu, xu.T @ ru + lam_p * theta_s)
    p = _pooled(lam_p, lam_s)
    x = rng.uniform(-1, 1, D)
    c = p.choose(["a"], [pack(v)], x, np.random.default_rng(0), prior=got_s[None, :])
    assert c.scores["a"] == pytest.approx(float(x @ want), rel=1e-9, abs=1e-12)


def test_new_user_starts_at_the_population_model_and_prior_none_is_plain_ridge():
    rng = np.random.default_rng(2)
    prior = rng.normal(0, 1, (len(ARMS), D))
    x = rng.uniform(-1, 1, D)
    p = _pooled(eps=0.0)
    c = p.choose(ARMS, [None] * len(ARMS), x, np.random.default_rng(0), prior=prior)
    np.testing.assert_allclose([c.scores[a] for a in ARMS], prior @ x, rtol=1e-12)
    assert c.arm == ARMS[int(np.argmax(prior @ x))] and c.propensity == 1.0
    # without a prior θ_u shrinks toward 0: all scores 0 for a new user
    c0 = p.choose(ARMS, [None] * len(ARMS), x, np.random.default_rng(0))
    assert all(s == 0.0 for s in c0.scores.values())


def test_pooled_egreedy_propensity_is_exact():
    rng = np.random.default_rng(3)
    prior = rng.normal(0, 1, (len(ARMS), D))
    x = rng.uniform(-1, 1, D)
    p = _pooled(eps=0.2)
    probs = p.selection_probs(ARMS, [None] * 3, x, prior=prior)
    g = int(np.argmax(prior @ x))
    assert probs[g] == pytest.approx(0.2 / 3 + 0.8) and probs.sum() == pytest.approx(1.0)
    seen = np.zeros(3)
    r = np.random.default_rng(4)
    for _ in range(20000):
        c = p.choose(ARMS, [None] * 3, x, r, prior=prior)
        assert c.propensity == pytest.approx(probs[c.index])
        seen[c.index] += 1
    np.testing.assert_allclose(seen / seen.sum(), probs, atol=0.01)


def test_registry_settings_and_update_ids():
    s = BaseServiceSettings(pooled_lambda=25.0, pooled_epsilon=0.05, ridge_lambda=2.0,
                            global_policies=["egreedy-pooled", "linucb"])
    reg = build_policies(s)
    for name in POOLED_POLICIES:
        p = reg[name]
        assert p.pooled and not p.global_model and p.lam == 25.0 and p.shared_lam == 2.0
        assert p.global_lam == 2.0 and p.update_id == update_id(p.features.version, 25.0)
        assert "pooled" in p.version
    assert reg["egreedy-pooled"].epsilon == 0.05 and reg["egreedy-v2"].epsilon == 0.1
    assert reg["linucb"].global_model
    st = StateStore(_NoRedis(), lam=2.0, pooled_lambda=25.0,
                    global_policies=["egreedy-pooled"])
    assert "egreedy-pooled" in st.user_policies and "egreedy-pooled" not in st.global_policies
    assert st.hyper["egreedy-pooled"] == reg["egreedy-pooled"].update_id
    assert st.hyper["egreedy-v2"] == reg["egreedy-v2"].update_id
    assert "lam:egreedy-pooled=25.0" in st.hyper_args and "sh:egreedy-pooled" in st.hyper_args


class _NoRedis:
    def register_script(self, src):
        return None


def test_shared_keys_are_spread_over_slots_apart_from_the_user():
    user_slot = key_slot(state_key("egreedy-pooled", "alice").encode())
    shard_slots = {key_slot(global_shard_key("egreedy-pooled", s).encode())
                   for s in range(GLOBAL_SHARDS)}
    assert len(shard_slots) == GLOBAL_SHARDS  # no single hot slot for the shared part
    for s in range(GLOBAL_SHARDS):  # each marker lives in its shard's slot
        assert key_slot(global_marker_key("egreedy-pooled", s, "d1").encode()) == \
            key_slot(global_shard_key("egreedy-pooled", s).encode())
    assert key_slot(decision_key("d1", "alice").encode()) == user_slot


# ------------------------------------------------------------------ real Redis


def _record(st, user, did, x, arm="a"):
    return {"decision_id": did, "user_id": user, "arm": arm, "policy": "egreedy-pooled",
            "propensity": 0.5, "ts": time.time(), "learners": ["egreedy-pooled"],
            "vectors": {"egreedy-pooled": ("", x)},
            "hyper": {"egreedy-pooled": st.hyper["egreedy-pooled"]}}


async def _clean(r, policy="egreedy-pooled"):
    await r.delete(*[global_shard_key(policy, s) for s in range(GLOBAL_SHARDS)])


@pytest.mark.system
@pytest.mark.cluster
async def test_lua_user_and_shared_steps_equal_numpy_exactly_once(redis_client, uid):
    """Twin equality: per-user state (λ_p) and the shared statistics after a mix of
    rewards, duplicates and a crash between the two steps."""
    st = StateStore(redis_client, pooled_lambda=50.0, global_refresh_s=0)
    await _clean(redis_client)
    rng = np.random.default_rng(7)
    users = [f"pool-{uid}-{i}" for i in range(3)]
    recs = []
    for i in range(24):
        x = rng.uniform(-1, 1, D)
        recs.append(_record(st, users[i % 3], f"d{i}-{uid}", x, ARMS[i % 2]))
    await st.record_decisions(recs)
    want_user: dict[tuple, bytes | None] = {}
    want_shared: dict[str, np.ndarray] = {}
    for i, rec in enumerate(recs):
        r = float(rng.choice([0.0, 0.5, 1.0]))
        did, user, arm = rec["decision_id"], rec["user_id"], rec["arm"]
        if i % 5 == 4:
            # a crash between the steps: only the user's script ran (claim 'applied') ...
            await st._apply(keys=[event_key(f"e{i}", user), decision_key(did, user),
                                  generation_key(did, user),
                                  *[state_key(p, user) for p in st.user_policies]],
                            args=[repr(r), 600, repr(st.lam), user, "1", 0,
                                  ",".join(st.user_policies), *st.hyper_args])
            # ... the redelivery answers duplicate and runs the shared step once
            res = await st.apply_reward(f"e{i}", did, user, r)
            assert res.outcome == "duplicate" and res.globals_applied == 1
        else:
            res = await st.apply_reward(f"e{i}", did, user, r)
            assert res.outcome == "applied" and res.globals_applied == 1
        again = await st.apply_reward(f"e{i}", did, user, r)  # a plain redelivery
        assert again.outcome == "duplicate" and again.globals_applied == 0
        other = await st.apply_reward(f"e{i}-second", did, user, 1.0)  # a second reaction
        assert other.outcome == "already_rewarded" and other.globals_applied == 0
        x = rec["vectors"]["egreedy-pooled"][1]
        k = (user, arm)
        want_user[k] = stored_update(want_user.get(k), x, r, 50.0)
        want_shared[arm] = shared_add(want_shared.get(arm), x, r)
    for (user, arm), blob in want_user.items():
        got = await redis_client.hget(state_key("egreedy-pooled", user), arm)
        np.testing.assert_allclose(decode_arm(got, D), decode_arm(blob, D), rtol=1e-6, atol=1e-7)
    tot = await st.global_stats("egreedy-pooled", D, ARMS[:2])
    for arm, v in want_shared.items():
        assert tot[arm][0] == v[0]  # every decision counted once in the shared part
        np.testing.assert_allclose(tot[arm], v, rtol=1e-12, atol=1e-12)
    # the scorer's prior is the shared ridge solution of those statistics
    p = build_policies(BaseServiceSettings())["egreedy-pooled"]
    prior = await st.shared_prior(p, ARMS[:2])
    want = shared_theta([pack(shared_full(want_shared[a], D, p.shared_lam)) for a in ARMS[:2]], D)
    np.testing.assert_allclose(prior, want, rtol=1e-9, atol=1e-12)
    # each decision's shared contribution landed in its own shard
    for rec in recs[:4]:
        s = global_shard(rec["decision_id"])
        assert await redis_client.exists(global_marker_key("egreedy-pooled", s, rec["decision_id"]))
    await _clean(redis_client)


@pytest.mark.system
@pytest.mark.cluster
async def test_mismatched_pooled_lambda_is_refused(redis_client, uid):
    scorer_side = StateStore(redis_client, pooled_lambda=50.0)
    consumer = StateStore(redis_client, pooled_lambda=20.0)
    user = f"mm-{uid}"
    rec = _record(scorer_side, user, f"d-{uid}", np.ones(D) * 0.1)
    await scorer_side.record_decisions([rec])
    res = await consumer.apply_reward(f"e-{uid}", rec["decision_id"], user, 1.0)
    assert res.outcome == "hyper_mismatch" and "egreedy-pooled" in res.detail
    assert not await redis_client.exists(state_key("egreedy-pooled", user))
    ok = await scorer_side.apply_reward(f"e-{uid}", rec["decision_id"], user, 1.0)
    assert ok.outcome == "applied"
    v = decode_arm(await redis_client.hget(state_key("egreedy-pooled", user), "a"), D)
    assert v[0] == 1 and v[HEADER + D] == pytest.approx(1 / 50.0 - 0.01 / (50 * 50 + 50 * 0.12),
                                                        rel=1e-3)
    await _clean(redis_client)


async def test_a_stalled_refresh_serves_the_previous_shared_model_within_the_deadline():
    """Redis stalls (SIGSTOP, a slow master): the scorer must not wait for the shared
    model's refresh beyond its Redis deadline — the previous copy serves."""
    import asyncio

    p = build_policies(BaseServiceSettings())["egreedy-pooled"]
    good = [pack(shared_full(shared_add(None, np.ones(D) * 0.5, 1.0), D, 1.0))] * 2

    class Stalling(StateStore):
        stall = False

        async def global_models(self, policy, arms):
            if self.stall:
                await asyncio.sleep(5)
            return good

    st = Stalling(_NoRedis())
    first = await st.shared_prior(p, ["a", "b"], timeout_s=0.05)
    st.stall = True
    t0 = time.monotonic()
    again = await st.shared_prior(p, ["a", "b"], timeout_s=0.05)
    assert time.monotonic() - t0 < 0.5
    np.testing.assert_array_equal(again, first)
    fresh = Stalling(_NoRedis())
    fresh.stall = True
    with pytest.raises(asyncio.TimeoutError):  # nothing to fall back on: the request falls back
        await fresh.shared_prior(p, ["a", "b"], timeout_s=0.05)


async def test_a_fresh_shared_model_is_read_without_a_task():
    """The scorer's usual read of a pooled policy's prior: the fresh cache, synchronously
    (no task, timer or await on the hot path); a due refresh goes the awaited way."""
    p = build_policies(BaseServiceSettings())["egreedy-pooled"]
    good = [pack(shared_full(shared_add(None, np.ones(D) * 0.5, 1.0), D, 1.0))] * 2

    class Cached(StateStore):
        merges = 0

        async def _merge_global(self, policy, dim, lam, arms):
            self.merges += 1
            return list(good)

    st = Cached(_NoRedis())
    assert st.shared_prior_nowait(p, ["a", "b"]) is None  # nothing merged yet
    th = await st.shared_prior(p, ["a", "b"], timeout_s=0.05)
    assert st.shared_prior_nowait(p, ["a", "b"]) is th
    assert st.shared_prior_nowait(p, ["b", "a"]) is None  # another arm order: its own merge
    st.global_refresh_s = 0.0
    assert st.shared_prior_nowait(p, ["a", "b"]) is None  # a refresh is due
    again = await st.shared_prior(p, ["a", "b"], timeout_s=0.05)
    assert st.merges == 2
    np.testing.assert_array_equal(again, th)

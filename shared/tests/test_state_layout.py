"""The Redis Cluster layout: one hash slot per user, every script key declared, idle
expiry, the float32 arm layout against float64 (real redis-server where Redis is used)."""

import time

import numpy as np
import pytest
from redis.crc import key_slot

from tipsml.bandits import (
    decode_arm,
    encode_arm,
    initial_arm,
    sherman_morrison_update,
    stored_update,
    tri_len,
)
from tipsml.state import (
    StateStore,
    decision_key,
    event_key,
    generation_key,
    pulls_key,
    state_key,
    user_of_tag,
    utag,
)


@pytest.mark.parametrize("user", ["alice", "u:1:2", "a}b", "{x}", "}", "émile", "x" * 200])
def test_every_key_of_a_user_shares_one_slot(user):
    keys = [state_key("egreedy-v1", user), state_key("egreedy-v2", user), pulls_key("linucb", user),
            decision_key("d" * 32, user), event_key("default:" + "d" * 32, user),
            generation_key("d" * 32, user)]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert all(k.startswith("tips:") for k in keys)  # the Redis ACL key patterns
    assert user_of_tag(utag(user)) == user


def test_float32_triangle_round_trip_and_update_close_to_float64():
    rng = np.random.default_rng(0)
    v = initial_arm(12, 1.0)
    blob = None
    for _ in range(2000):
        x = rng.uniform(-1, 1, 12).astype("<f4").astype(float)
        r = float(rng.uniform(-1, 1))
        v = sherman_morrison_update(v, x, r)
        blob = stored_update(blob, x, r)
    assert len(blob) == tri_len(12) * 4 == 368
    g = decode_arm(blob, 12)
    assert g[0] == v[0]
    a, ga = v[14:].reshape(12, 12), g[14:].reshape(12, 12)
    assert np.allclose(ga, ga.T)  # symmetric by construction
    assert np.abs(ga - a).max() / np.abs(a).max() < 1e-5
    assert decode_arm(encode_arm(v, 12), 12) == pytest.approx(v, rel=1e-6, abs=1e-7)


@pytest.mark.system
async def test_reward_sets_idle_expiry_and_reads_the_former_float64_layout(redis_client, uid):
    st = StateStore(redis_client, state_ttl_s=1234)
    user = f"ttl-{uid}"
    old = sherman_morrison_update(initial_arm(7, 1.0), np.ones(7), 0.5)
    await redis_client.hset(state_key("egreedy-v1", user), "a", old.astype("<f8").tobytes())
    x = np.linspace(0.1, 0.7, 7)
    rec = {"decision_id": f"d-{uid}", "user_id": user, "arm": "a", "policy": "egreedy-v1",
           "propensity": 0.5, "ts": time.time(), "learners": ["egreedy-v1"],
           "vectors": {"egreedy-v1": ("", x)}, "hyper": {"egreedy-v1": st.hyper["egreedy-v1"]}}
    await st.record_decisions([rec])
    assert 0 < await redis_client.ttl(pulls_key("egreedy-v1", user)) <= 1234
    res = await st.apply_reward(f"e-{uid}", rec["decision_id"], user, 1.0)
    assert res.outcome == "applied"
    assert 0 < await redis_client.ttl(state_key("egreedy-v1", user)) <= 1234
    got = await redis_client.hget(state_key("egreedy-v1", user), "a")
    assert len(got) == tri_len(7) * 4  # rewritten in the compact layout
    want = decode_arm(stored_update(old.astype("<f8").tobytes(), x, 1.0), 7)
    np.testing.assert_allclose(decode_arm(got, 7), want, rtol=1e-6, atol=1e-7)
    again = await st.apply_reward(f"e-{uid}", rec["decision_id"], user, 1.0)
    assert again.outcome == "duplicate"


@pytest.mark.parametrize("state_ttl", [0, 86400, 3600.5])
def test_record_bytes_are_what_packing_the_commands_gives(state_ttl):
    """The decision log's direct RESP (StateStore._record_resp) is byte for byte what
    tipsml.resp.pack makes of _record_commands: live and global policies, shared and own
    feature vectors, a fallback, users and arms that are not ASCII, float and int times."""
    from tipsml.resp import pack

    store = StateStore.from_url("redis://127.0.0.1:1/0", global_policies=["linucb"])
    store.state_ttl_s = state_ttl
    x7, x12 = np.linspace(0, 1, 7), np.linspace(-1, 1, 12)
    recs = []
    for i, (pol, user, arm) in enumerate([("egreedy-v1", "alice", "reminder"),
                                          ("linucb", "émile", "célébration"),
                                          ("egreedy-v2", "u:{1}", "nudge")]):
        recs.append({
            "decision_id": f"{i:032x}", "user_id": user, "policy": pol, "arm": arm,
            "propensity": 0.925 if i else 1 / 3, "ts": 1764480000.123 + i if i != 2 else 1764480000,
            "learners": ["egreedy-v1", "linucb", "egreedy-v2"],
            "vectors": {"egreedy-v1": ("k1", x7), "linucb": ("k2", x7), "egreedy-v2": ("k3", x12)},
            "hyper": {"egreedy-v1": "ctx7:lam=1", "linucb": "ctx7:lam=1"},
            **({"fallback": True} if i == 1 else {}),
        })
    cmds = store._record_commands(recs)
    data, n = store._record_resp(recs)
    assert n == len(cmds) and data == b"".join(pack(*c) for c in cmds)
    assert store._record_resp_python(recs) == (data, n)  # where the C packer is not built

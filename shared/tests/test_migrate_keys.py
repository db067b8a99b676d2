"""tipsml.migrate_keys on a real redis-server: the former layout moves to the cluster
layout, a second run changes nothing, and the moved records keep working."""

import argparse
import time

import numpy as np
import pytest

from tipsml.bandits import (
    decode_arm,
    encode_arm,
    initial_arm,
    pack,
    sherman_morrison_update,
    stored_update,
)
from tipsml.migrate_keys import run
from tipsml.state import (
    GLOBAL_SHARDS,
    StateStore,
    decision_key,
    event_key,
    generation_key,
    global_shard_key,
    pulls_key,
    state_key,
)

pytestmark = pytest.mark.system


async def _old_layout(r, uid):
    rng = np.random.default_rng(3)
    v = initial_arm(7, 1.0)
    for _ in range(5):
        v = sherman_morrison_update(v, rng.uniform(0, 1, 7), 1.0)
    await r.hset(f"tips:st:egreedy-v1:{uid}", mapping={"a": pack(v)})
    await r.expire(f"tips:st:egreedy-v1:{uid}", 1000)
    await r.hset(f"tips:pulls:egreedy-v1:{uid}", mapping={"a": 5})
    x = rng.uniform(0, 1, 7)
    for did, rewarded in ((f"{uid}-d1", False), (f"{uid}-d2", True)):
        f = {"user": uid, "arm": "a", "policy": "egreedy-v1", "learners": "egreedy-v1",
             "propensity": "0.5", "ts": repr(time.time()), "version": "v",
             "skey:egreedy-v1": f"tips:st:egreedy-v1:{uid}", "x:egreedy-v1": x.tobytes(),
             "hp:egreedy-v1": "ctx7-v1/lambda=1.0"}
        if rewarded:
            f["rewarded"] = "1.0"
        await r.hset(f"tips:dec:{did}", mapping=f)
        await r.expire(f"tips:dec:{did}", 5000)
    await r.set(f"tips:evt:default:{uid}-d2", "applied", ex=5000)
    await r.hset(f"tips:gen:{uid}-d1", mapping={"prompt_version": "v3", "user_id": uid})
    g = initial_arm(7, 1.0)
    for _ in range(3):
        g = sherman_morrison_update(g, rng.uniform(0, 1, 7), 0.5)
    await r.hset(f"tips:stg:lin-{uid}", mapping={"a": pack(g)})
    return v, x, g


async def test_migration_moves_old_keys_once_and_they_keep_working(redis_client, stack, uid):
    r = redis_client
    v, _, g = await _old_layout(r, uid)
    args = argparse.Namespace(src=stack.redis_url, dst=None, ridge_lambda=1.0, dry_run=False,
                              keep=False)
    first = await run(args)
    assert first["state"] >= 1 and first["decision"] >= 2 and first["generation"] >= 1
    assert first["event_claim"] >= 1 and first["global_model"] >= 1
    again = await run(args)
    assert not any(k in again for k in ("state", "decision", "generation", "global_model"))
    # old keys gone, new keys in the user's slot
    assert await r.exists(f"tips:st:egreedy-v1:{uid}", f"tips:dec:{uid}-d1") == 0
    blob = await r.hget(state_key("egreedy-v1", uid), "a")
    assert blob == encode_arm(v, 7) and 0 < await r.ttl(state_key("egreedy-v1", uid)) <= 1000
    assert await r.hget(pulls_key("egreedy-v1", uid), "a") == b"5"
    assert await r.hget(generation_key(f"{uid}-d1", uid), "prompt_version") == b"v3"
    assert await r.get(event_key(f"default:{uid}-d2", uid)) == b"applied"
    # the global model became sufficient statistics: merged back it is the same model
    st = StateStore(r, global_refresh_s=0)
    from tipsml.bandits import Policy
    from tipsml.features import FS_CTX
    merged = await st.global_models(Policy(f"lin-{uid}", "linucb", FS_CTX), ["a"])
    np.testing.assert_allclose(np.frombuffer(merged[0], dtype="<f8"), g, rtol=1e-9, atol=1e-9)
    for s in range(GLOBAL_SHARDS):
        await r.delete(global_shard_key(f"lin-{uid}", s))
    # the moved decisions: one is rewarded already, the other applies once on the moved state
    res = await st.apply_reward(f"{uid}-e1", f"{uid}-d1", uid, 1.0)
    assert res.outcome == "applied"
    rec = await st.get_decision(f"{uid}-d1", uid)
    assert rec["hp:egreedy-v1"] == "ctx7-v1/lambda=1.0"
    want = stored_update(encode_arm(v, 7), np.frombuffer(rec["x:egreedy-v1"], dtype="<f8"), 1.0)
    got = await r.hget(state_key("egreedy-v1", uid), "a")
    np.testing.assert_allclose(decode_arm(got, 7), decode_arm(want, 7), rtol=1e-6, atol=1e-7)
    assert (await st.apply_reward(f"{uid}-e2", f"{uid}-d2", uid, 1.0)).outcome == \
        "already_rewarded"
    assert await r.exists(decision_key(f"{uid}-d2", uid)) == 1

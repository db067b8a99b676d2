"""Helpers for feedback tests: make decisions through the real scorer, publish feedback,
and compute the expected bandit state directly with numpy."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from tipsml.bandits import decode_arm, dim_of, stored_update
from tipsml.messaging.connection import request_json
from tipsml.state import StateStore, state_key


async def make_decisions(nc, users: list[str], per_user: int, policy: str = "egreedy-v1"):
    out = []
    for u in users:
        for i in range(per_user):
            r = await request_json(nc, "tips.score", {
                "user_id": u, "policy": policy,
                "context": {"hour_of_day": (i * 5) % 24, "day_of_week": i % 7,
                            "tasks": [{"title": "t", "priority": i % 5, "overdue": i % 2 == 0}]},
                "profile_features": {"completion_rate": 0.5, "preferred_hour": 10}})
            assert r["ok"], r
            out.append((u, r))
    await asyncio.sleep(0.5)  # decision records are written right after the replies
    return out


async def publish_feedback(js, event_id, decision_id, user_id, reaction=None, reward=None,
                           msg_id=True):
    body = {"event_id": event_id, "decision_id": decision_id, "user_id": user_id, "ts": 0}
    if reaction:
        body["reaction"] = reaction
    if reward is not None:
        body["reward"] = reward
    hdr = {"Nats-Msg-Id": event_id} if msg_id else None
    return await js.publish(f"feedback.{reaction or 'explicit'}", json.dumps(body).encode(),
                            headers=hdr)


async def expected_state(store: StateStore, rewarded: dict[str, float], lam: float = 1.0):
    """{state_key: {arm: full float64 vector}} from decision records + rewards, with numpy
    (rounded to the stored float32 layout after every update, as the Lua script does)."""
    exp: dict[str, dict[str, bytes]] = {}
    users = await store.decision_users(rewarded)
    for did, r in rewarded.items():
        rec = await store.get_decision(did, users.get(did))
        arm = rec["arm"]
        for p in rec["learners"].split(","):
            skey = rec[f"skey:{p}"]
            x = np.frombuffer(rec[f"x:{p}"], dtype="<f8")
            cur = exp.setdefault(skey, {}).get(arm)
            exp[skey][arm] = stored_update(cur, x, r, getattr(store, "lams", {}).get(p, lam))
    return {k: {a: decode_arm(b, dim_of(b)) for a, b in v.items()} for k, v in exp.items()}


async def assert_state_matches(redis, expected) -> None:
    for skey, arms in expected.items():
        got = await redis.hgetall(skey)
        for arm, v in arms.items():
            b = got[arm.encode()]
            g = decode_arm(b, dim_of(b))
            assert g[0] == v[0], f"{skey}/{arm}: {g[0]} updates, expected {v[0]}"
            # float32 storage rounds after every update, and concurrent consumers apply in
            # another order than this loop: equal up to float32 rounding of the running
            # sums (absolute, at the scale of the largest entry)
            np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(v).max()),
                                       err_msg=f"{skey}/{arm}")


async def wait_for(cond, timeout=30.0, every=0.1):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await cond():
            return True
        await asyncio.sleep(every)
    return False


async def applied_updates(store: StateStore, user: str, policy: str = "egreedy-v1") -> int:
    raw = await store.r.hgetall(state_key(policy, user))
    return int(sum(decode_arm(v, dim_of(v))[0] for v in raw.values()))

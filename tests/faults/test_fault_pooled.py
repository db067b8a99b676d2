"""The pooled policy (per-user models shrunk toward a shared model) under the real workers:
scorer and feedback consumers as subprocesses on a real nats-server + redis-server, a
feedback consumer SIGKILLed mid-stream, duplicates with and without Nats-Msg-Id.

Every reward moves the user's model exactly once (the Redis state equals the numpy
recomputation with λ_p) *and* the shared statistics exactly once (their sums equal the
numpy sums over the rewarded decisions: no decision lost or counted twice by the
second, marker-guarded step), and the scorer serves a new user the shared model's
scores (its prior), read from the merged shards.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from tests.chaoslib import (
    FAST_FEEDBACK,
    Ledger,
    dlq_count,
    exactly_once_report,
    feedback_body,
    make_decisions,
    publish_until_acked,
    random_reaction,
    score,
    wait_applied,
)
from tipsml.bandits import pack, shared_add, shared_full, shared_theta
from tipsml.contract import ScoreRequest
from tipsml.features import FS_CTX_PROFILE_V2, build_vector

pytestmark = [pytest.mark.system]

POLICY = "egreedy-pooled"
SCORER_ENV = {"REDIS_TIMEOUT_S": "0.25", "DEFAULT_POLICY": POLICY,
              "SHADOW_POLICIES": "egreedy-v2", "GLOBAL_REFRESH_S": "0.2"}


async def test_pooled_rewards_apply_exactly_once_in_user_and_shared_parts(own_stack, workers,
                                                                          clients):
    nc, js, r, store = clients
    workers.spawn("scorer.main", SCORER_ENV)
    users = [f"pool-{i}" for i in range(8)]
    decs = await make_decisions(nc, users, 25, redis=r)
    assert all(d["policy"] == POLICY for _, d in decs)
    cons = [workers.spawn("feedback_consumer.main", FAST_FEEDBACK) for _ in range(2)]
    rng = random.Random(15)
    ledger = Ledger()
    events = []
    for u, d in decs:
        rc, rw, val = random_reaction(rng)
        e = f"pool-{d['decision_id']}"
        ledger.add(e, d["decision_id"], u, val)
        events.append((e, d["decision_id"], u, rc, rw))
    stream = [(ev, True) for ev in events]
    stream += [(ev, True) for ev in rng.sample(events, len(events) * 15 // 100)]
    stream += [(ev, False) for ev in rng.sample(events, len(events) * 10 // 100)]
    rng.shuffle(stream)
    half = len(stream) // 2

    async def publish(part):
        await asyncio.gather(*(
            publish_until_acked(js, f"feedback.{rc or 'explicit'}",
                                feedback_body(e, d, u, rc, rw), e if with_id else None)
            for (e, d, u, rc, rw), with_id in part))

    await publish(stream[:half])
    await asyncio.sleep(0.3)
    cons[0].kill()  # SIGKILL mid-stream: its unacked messages come back to the other
    await publish(stream[half:])
    took = await wait_applied(r, ledger.events, timeout=120)
    assert took is not None, "not every event got applied"
    await asyncio.sleep(3.0)  # past ack_wait: a straggling redelivery would show now
    rep = await exactly_once_report(r, store, ledger)
    assert rep["outcomes"] == {"applied": len(events)}
    assert rep["lost"] == 0 and rep["doubled"] == 0 and rep["mismatched_arms"] == 0
    assert await dlq_count(js) == 0
    # the shared part: each rewarded decision's x counted once, in float64 sums
    want: dict[str, np.ndarray] = {}
    users_of = {d: u for d, u, _ in ledger.events.values()}
    for did, rw in ledger.rewarded.items():
        rec = await store.get_decision(did, users_of[did])
        x = np.frombuffer(rec[f"x:{POLICY}"], dtype="<f8")
        want[rec["arm"]] = shared_add(want.get(rec["arm"]), x, rw)
    dim = FS_CTX_PROFILE_V2.dim
    got = await store.global_stats(POLICY, dim)
    assert set(got) == set(want)
    for arm, v in want.items():
        assert got[arm][0] == v[0], f"{arm}: {got[arm][0]} shared updates, expected {v[0]}"
        np.testing.assert_allclose(got[arm], v, rtol=1e-9, atol=1e-9)
    assert sum(v[0] for v in got.values()) == len(events)
    # a new user is served the shared model's scores (the prior), from the merged shards
    await asyncio.sleep(0.5)  # > GLOBAL_REFRESH_S
    reply = await score(nc, "pool-newcomer", 3)
    arms = list(reply["scores"])
    theta = shared_theta([pack(shared_full(got.get(a), dim, 1.0)) for a in arms], dim)
    req = ScoreRequest.model_validate({"user_id": "x", **_req(3)})
    x = build_vector(FS_CTX_PROFILE_V2, req.context, req.profile_features)
    np.testing.assert_allclose([reply["scores"][a] for a in arms], theta @ x, rtol=1e-6,
                               atol=1e-9)
    assert reply["propensity"] in (pytest.approx(0.03 / len(arms) + 0.97),
                                   pytest.approx(0.03 / len(arms)))


def _req(i: int) -> dict:
    """The context and profile chaoslib.score sends for round i."""
    return {"context": {"hour_of_day": (i * 5) % 24, "day_of_week": i % 7,
                        "tasks": [{"title": "t", "priority": i % 5, "overdue": i % 2 == 0}]},
            "profile_features": {"completion_rate": 0.5, "preferred_hour": 10}}

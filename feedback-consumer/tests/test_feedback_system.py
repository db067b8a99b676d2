"""Feedback → reward → state, over real NATS JetStream + Redis."""

import asyncio
import json
import uuid

import pytest
from fb_helpers import (
    applied_updates,
    assert_state_matches,
    expected_state,
    make_decisions,
    publish_feedback,
    wait_for,
)

from tipsml.rewards import REWARD_TABLE
from tipsml.state import StateStore, event_key, state_key

pytestmark = [pytest.mark.system, pytest.mark.cluster]


@pytest.fixture
def store(stack):
    return StateStore.from_url(stack.redis_url)


async def test_reaction_updates_state_like_numpy(nc, scorer_service, feedback_service, store,
                                                 redis_client, uid):
    js = nc.jetstream()
    decs = await make_decisions(nc, [uid], 6)
    rewarded = {}
    for i, (u, r) in enumerate(decs):
        reaction = ["completed", "accepted", "dismissed"][i % 3]
        await publish_feedback(js, f"e-{uid}-{i}", r["decision_id"], u, reaction)
        rewarded[r["decision_id"]] = REWARD_TABLE[reaction]
    assert await wait_for(lambda: _eq(applied_updates(store, uid), 6))
    await assert_state_matches(redis_client, await expected_state(store, rewarded))
    st = await _stats(nc, uid)
    assert sum(a["updates"] for a in st["arms"].values()) == 6
    assert sum(a["reward_sum"] for a in st["arms"].values()) == pytest.approx(
        sum(rewarded.values()))


async def _eq(coro, n):
    return (await coro) == n


async def _stats(nc, uid):
    from tipsml.messaging.connection import request_json
    return await request_json(nc, "tips.stats", {"user_id": uid, "policy": "egreedy-v1"})


async def test_same_feedback_many_times_moves_state_once(nc, scorer_service, feedback_service,
                                                         store, redis_client, uid):
    js = nc.jetstream()
    (u, r), = await make_decisions(nc, [uid], 1)
    for _ in range(10):  # same Nats-Msg-Id: deduplicated by the stream
        await publish_feedback(js, f"dup-{uid}", r["decision_id"], u, "completed")
    for _ in range(10):  # no header: reaches the consumer, deduplicated by the Lua claim
        await publish_feedback(js, f"dup-{uid}", r["decision_id"], u, "completed", msg_id=False)
    # a different event for an already-rewarded decision does not apply either
    await publish_feedback(js, f"other-{uid}", r["decision_id"], u, "dismissed")
    assert await wait_for(lambda: _eq(applied_updates(store, uid), 1))
    await asyncio.sleep(1.0)
    assert await applied_updates(store, uid) == 1
    await assert_state_matches(redis_client,
                               await expected_state(store, {r["decision_id"]: 1.0}))
    outcome = await redis_client.get(event_key(f"other-{uid}", u))
    assert outcome == b"already_rewarded"


async def test_unknown_decision_counted_not_applied(nc, feedback_service, redis_client, uid):
    js = nc.jetstream()
    await publish_feedback(js, f"unk-{uid}", "no-such-decision", uid, "completed")
    assert await wait_for(lambda: _get(redis_client, event_key(f"unk-{uid}", uid)))
    assert await redis_client.get(event_key(f"unk-{uid}", uid)) == b"expired"
    assert await redis_client.exists(state_key("egreedy-v1", uid)) == 0


async def _get(r, k):
    return await r.get(k) is not None


async def test_user_mismatch_is_not_applied(nc, scorer_service, feedback_service, store,
                                            redis_client, uid):
    js = nc.jetstream()
    (u, r), = await make_decisions(nc, [uid], 1)
    await publish_feedback(js, f"mm-{uid}", r["decision_id"], "someone-else", "completed")
    # the decision lives in its user's hash slot (tips:dec:{user}:id): another user's event
    # cannot even see it, so it is an unknown decision — retried for the grace, then expired
    k = event_key(f"mm-{uid}", "someone-else")
    assert await wait_for(lambda: _get(redis_client, k), timeout=60)
    assert await redis_client.get(k) == b"expired"
    assert await applied_updates(store, uid) == 0


@pytest.mark.parametrize("body", [
    b"not json",
    json.dumps({"event_id": "x", "decision_id": "d", "user_id": "u"}).encode(),  # no reaction
    json.dumps({"event_id": "x", "decision_id": "d", "user_id": "u", "reward": 1.5}).encode(),
    json.dumps({"event_id": "x", "decision_id": "d", "user_id": "u", "reaction": "loved"}).encode(),
])
async def test_poison_message_goes_to_dead_letter(nc, feedback_service, body):
    js = nc.jetstream()
    marker = uuid.uuid4().hex
    await js.publish("feedback.poison", body, headers={"Nats-Msg-Id": marker})
    sub = await js.pull_subscribe("dlq.feedback", durable=None, stream="DEADLETTER")
    found = None
    for _ in range(20):
        try:
            msgs = await sub.fetch(100, timeout=0.5)
        except Exception:
            continue
        for m in msgs:
            if (m.headers or {}).get("Nats-Msg-Id") == f"dlq:{marker}":
                found = m
        if found:
            break
    assert found is not None
    assert found.data == body
    assert found.headers["Tips-Dlq-Reason"].startswith("invalid_request")
    assert found.headers["Tips-Origin-Subject"] == "feedback.poison"


async def test_dead_letter_replay_applies_once(nc, stack, scorer_service, feedback_service, store,
                                               uid):
    """A valid event parked in the DLQ (e.g. after a long Redis outage) is replayed by the CLI."""
    import os
    import subprocess
    import sys

    js = nc.jetstream()
    (u, r), = await make_decisions(nc, [uid], 1)
    body = json.dumps({"event_id": f"rp-{uid}", "decision_id": r["decision_id"], "user_id": u,
                       "reaction": "completed"}).encode()
    await js.publish("dlq.feedback", body, headers={
        "Nats-Msg-Id": f"dlq:rp-{uid}", "Tips-Dlq-Reason": "unapplied after 8 deliveries",
        "Tips-Origin-Subject": "feedback.completed", "Tips-Deliveries": "8"})
    env = dict(os.environ, **stack.env())
    for _ in range(2):  # replaying twice cannot double the reward
        out = subprocess.run([sys.executable, "-m", "feedback_consumer.dlq", "replay", "--subject",
                              "dlq.feedback"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    assert await wait_for(lambda: _eq(applied_updates(store, uid), 1))
    await asyncio.sleep(0.5)
    assert await applied_updates(store, uid) == 1

"""Applying rewards leaves no reference cycles behind (issue 12, round 5 found a cycle per
request in the scorer whose garbage collections stopped the process for 8-25 ms). With the
consumer warm (its Redis pool grown by a concurrent burst: a *new* connection may leave a
cycle in redis-py's handshake, e.g. the ``CLIENT SETINFO`` that Redis < 7.2 refuses, once
per connection), rewards applied, a duplicate and an unknown decision, with the collector
saving what it finds: none of the workers' objects and nothing of redis-py may be left in a
cycle. (What nats-py leaves is not asserted: its ``fetch`` of a batch that waits for more
messages than came ends in a timed-out ``next_msg``, whose TimeoutError and frames form a
cycle, once per such fetch — not per message under load.)"""

from __future__ import annotations

import asyncio

import pytest
from fb_helpers import applied_updates, make_decisions, publish_feedback, wait_for

from tipsdev.testing import CyclesLeft
from tipsml.state import StateStore

pytestmark = pytest.mark.system

REACTIONS = ["completed", "accepted", "dismissed"]


async def test_applying_rewards_leaves_no_cycles(nc, scorer_service, feedback_service, stack,
                                                 uid):
    js = nc.jetstream()
    store = StateStore.from_url(stack.redis_url)
    users = [f"{uid}-{k}" for k in range(3)]
    decs = await make_decisions(nc, users, 8)
    warm, measured = decs[:16], decs[16:]
    await asyncio.gather(*(publish_feedback(js, f"w-{uid}-{i}", r["decision_id"], u,
                                            REACTIONS[i % 3]) for i, (u, r) in enumerate(warm)))
    assert await wait_for(lambda: _applied(store, users, 16), timeout=20)
    await asyncio.sleep(0.3)
    try:
        with CyclesLeft() as cycles:
            for i, (u, r) in enumerate(measured):
                await publish_feedback(js, f"e-{uid}-{i}", r["decision_id"], u, REACTIONS[i % 3])
            await publish_feedback(js, f"dup-{uid}", measured[0][1]["decision_id"],
                                   measured[0][0], "completed", msg_id=False)  # the Lua claim
            await publish_feedback(js, f"unknown-{uid}", "0" * 32, users[0], "completed")
            assert await wait_for(lambda: _applied(store, users, 24), timeout=20)
            await asyncio.sleep(1.5)  # the unknown decision: retried for its grace (1 s)
    finally:
        await store.close()
    assert not cycles.found, sorted(cycles.found.items())
    redis_frames = sorted(f for f in cycles.frames if "/redis/" in f)
    assert not redis_frames, redis_frames


async def _applied(store, users, n: int) -> bool:
    return sum([await applied_updates(store, u) for u in users]) >= n

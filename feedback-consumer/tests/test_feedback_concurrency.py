"""Several consumer processes, thousands of rewards, kill -9 mid-batch: state moves exactly once.

Runs on its own embedded stack (module scope) with the scorer and the consumers as
real subprocesses, so nothing else consumes FEEDBACK meanwhile.
"""

import asyncio
import random

import nats
import pytest
import redis.asyncio as aioredis
from fb_helpers import (
    assert_state_matches,
    expected_state,
    make_decisions,
    publish_feedback,
    wait_for,
)

from tipsdev.launcher import EmbeddedStack
from tipsdev.testing import spawn_worker, wait_responding
from tipsml.rewards import REWARD_TABLE
from tipsml.state import StateStore, event_key

pytestmark = [pytest.mark.system, pytest.mark.slow]

FAST_REDELIVERY = {"FEEDBACK_ACK_WAIT_S": "2", "FEEDBACK_BACKOFF_S": "[0.2,0.5]",
                   "FEEDBACK_BATCH": "64", "SHADOW_POLICIES": "egreedy-v2,linucb"}


@pytest.fixture(scope="module")
def own_stack():
    with EmbeddedStack() as st:
        env = st.env()
        scorer = spawn_worker("scorer.main", env)
        yield st, env
        scorer.stop()


async def _total_applied(r) -> int:
    n = 0
    async for _k in r.scan_iter("tips:evt:*", count=1000):
        n += 1
    return n


async def _applied_count(r, event_ids) -> int:
    vals = await r.mget([event_key(e, u) for e, u in event_ids])
    return sum(1 for v in vals if v is not None)


async def _setup(own_stack, n_users, per_user):
    st, env = own_stack
    nc = await nats.connect(st.nats_url)
    await wait_responding(nc, "tips.stats")
    r = aioredis.from_url(st.redis_url)
    store = StateStore(r)
    users = [f"cu-{i}-{random.randrange(10**9)}" for i in range(n_users)]
    decs = await make_decisions(nc, users, per_user)
    return nc, r, store, decs


async def test_several_consumers_thousands_of_rewards_equal_sequential(own_stack):
    st, env = own_stack
    nc, r, store, decs = await _setup(own_stack, 20, 100)  # 2,000 decisions
    workers = [spawn_worker("feedback_consumer.main", {**env, **FAST_REDELIVERY})
               for _ in range(3)]
    try:
        js = nc.jetstream()
        rng = random.Random(7)
        rewarded, events = {}, []
        for _i, (u, d) in enumerate(decs):
            reaction = rng.choice(["completed", "accepted", "dismissed", "ignored"])
            events.append((f"c-{d['decision_id']}", d["decision_id"], u, reaction))
            rewarded[d["decision_id"]] = REWARD_TABLE[reaction]
        dups = rng.sample(events, 300)
        batch = events + dups
        rng.shuffle(batch)
        await asyncio.gather(*(publish_feedback(js, e, d, u, rc, msg_id=(i % 2 == 0))
                               for i, (e, d, u, rc) in enumerate(batch)))
        ids = [(e, u) for e, _, u, _ in events]
        assert await wait_for(lambda: _eq(_applied_count(r, ids), len(ids)), timeout=90)
        await asyncio.sleep(1.0)
        outcomes = await r.mget([event_key(e, u) for e, u in ids])
        assert all(o == b"applied" for o in outcomes)
        await assert_state_matches(r, await expected_state(store, rewarded))
    finally:
        for w in workers:
            w.stop()
        await nc.close()
        await r.aclose()


async def _eq(coro, n):
    return (await coro) == n


async def test_kill_minus_9_mid_batch_then_restart_applies_each_once(own_stack):
    st, env = own_stack
    nc, r, store, decs = await _setup(own_stack, 10, 150)  # 1,500 decisions
    js = nc.jetstream()
    rewarded, ids = {}, []
    for i, (u, d) in enumerate(decs):
        e = f"k-{d['decision_id']}"
        ids.append((e, u))
        rewarded[d["decision_id"]] = 1.0 if i % 3 else 0.5
    await asyncio.gather(*(publish_feedback(js, e, d["decision_id"], u,
                                            "completed" if i % 3 else "accepted")
                           for i, ((e, _), (u, d)) in enumerate(zip(ids, decs))))
    w = spawn_worker("feedback_consumer.main", {**env, **FAST_REDELIVERY, "FEEDBACK_BATCH": "200"})
    assert await wait_for(lambda: _ge(_applied_count(r, ids), 150), timeout=60, every=0.01)
    w.kill()  # SIGKILL, mid-batch
    done_at_kill = await _applied_count(r, ids)
    assert done_at_kill < len(ids)
    ci = await js.consumer_info("FEEDBACK", "feedback-consumer")
    assert ci.num_ack_pending > 0  # delivered to the dead process, not acked: to be redelivered
    w2 = spawn_worker("feedback_consumer.main", {**env, **FAST_REDELIVERY})
    try:
        assert await wait_for(lambda: _eq(_applied_count(r, ids), len(ids)), timeout=90)
        await asyncio.sleep(2.5)  # past ack_wait: any straggling redelivery has happened
        outcomes = await r.mget([event_key(e, u) for e, u in ids])
        assert all(o == b"applied" for o in outcomes)
        await assert_state_matches(r, await expected_state(store, rewarded))
    finally:
        w2.stop()
        await nc.close()
        await r.aclose()


async def _ge(coro, n):
    return (await coro) >= n

"""Feedback racing its decision record.

The scorer replies first and writes the decision record (the reward join) afterwards, in
the background. A client that reacts at once — or any backlog in the decision writer —
lets the feedback reach the consumer before the record exists. The reward is then
marked ``expired`` (and the idempotency claim makes that final), although the decision is
real and within its reward window: a reaction is lost.

Here: tips.score at 200 req/s, feedback published the moment each reply arrives.
Counted: events marked ``expired`` whose decision record does exist afterwards.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaoslib import FAST_FEEDBACK, SHORT, feedback_body, record, score, wait_applied
from tipsml.state import decision_key, event_key

pytestmark = [pytest.mark.system, pytest.mark.slow]

RACE_FEEDBACK = {**FAST_FEEDBACK, "FEEDBACK_MISSING_GRACE_S": "10"}  # the production grace



async def test_immediate_feedback_is_not_lost_to_the_decision_write_race(own_stack, workers,
                                                                          clients):
    nc, js, r, _store = clients
    workers.spawn("scorer.main", {"REDIS_TIMEOUT_S": "0.25"})
    workers.spawn("feedback_consumer.main", RACE_FEEDBACK)
    n, rate = (400, 200) if SHORT else (1500, 200)
    events: dict[str, tuple[str, str]] = {}

    async def one(i):
        rep = await score(nc, f"race-{i % 30}", i, timeout=2.0)
        if rep.get("ok") and not rep.get("fallback"):
            e = f"race-{rep['decision_id']}"
            events[e] = (rep["decision_id"], f"race-{i % 30}")
            await js.publish("feedback.completed",
                             feedback_body(e, rep["decision_id"], f"race-{i % 30}", "completed"),
                             headers={"Nats-Msg-Id": e})

    t0 = time.monotonic()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    await asyncio.gather(*tasks)
    assert await wait_applied(r, events, timeout=60) is not None
    await asyncio.sleep(1.0)
    outcomes, raced = {}, 0
    for e, (did, u) in events.items():
        o = (await r.get(event_key(e, u)) or b"missing").decode()
        outcomes[o] = outcomes.get(o, 0) + 1
        if o == "expired" and await r.exists(decision_key(did, u)):
            raced += 1
    record("feedback immediately after the decision (200 req/s)",
           injected="feedback racing the async decision write", requests_failed=0,
           unique_events=len(events), outcomes=outcomes, rewards_lost=raced,
           rewards_doubled=0, recovered_s=None)
    # measured only: how often the race is lost depends on the machine's load (0 on an idle
    # machine, 27 % of 1,500 with load average 5 on 2 cores); the deterministic case is below


async def test_feedback_arriving_before_its_decision_record_is_applied_later(own_stack, workers,
                                                                             clients):
    """Deterministic form: the decision record lands 0.5 s after the feedback (a backlogged
    decision writer). The reward must still be applied once the record exists."""
    import numpy as np

    from tipsml.state import pulls_key, state_key

    _nc, js, r, store = clients
    workers.spawn("feedback_consumer.main", RACE_FEEDBACK)
    did, user = "late-decision-1", "late-user"
    sk = state_key("egreedy-v1", user)
    await js.publish("feedback.completed", feedback_body("late-e1", did, user, "completed"),
                     headers={"Nats-Msg-Id": "late-e1"})
    await asyncio.sleep(0.5)
    await store.record_decisions([{
        "decision_id": did, "user_id": user, "arm": "a", "policy": "egreedy-v1",
        "policy_version": "t", "propensity": 0.5, "ts": time.time(), "learners": ["egreedy-v1"],
        "vectors": {"egreedy-v1": (sk, np.ones(7))}, "pulls_key": pulls_key("egreedy-v1", user)}])
    await asyncio.sleep(3.0)  # past ack_wait and the first backoffs
    outcome = await r.get(event_key("late-e1", user))
    blob = await r.hget(sk, "a")
    record("feedback 0.5 s before its decision record", injected="decision writer lag 0.5 s",
           requests_failed=0, unique_events=1, outcomes={(outcome or b"missing").decode(): 1},
           rewards_lost=0 if blob else 1, rewards_doubled=0, recovered_s=None)
    assert outcome == b"applied" and blob is not None, (
        f"reward dropped as {outcome!r}: the feedback overtook its decision record")

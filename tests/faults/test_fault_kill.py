"""kill -9 of workers while traffic flows.

* Feedback consumers are SIGKILLed mid-stream (two of them, one after the other, so for a
  while nobody consumes) and restarted: every published reward is applied exactly once —
  the final Redis state equals the numpy recomputation from the published events.
* The scorer is SIGKILLed under tips.score traffic: clients get ``unavailable`` at once
  (no responders), never a hang, and succeed again once a new scorer is up.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tests.chaoslib import (
    FAST_FEEDBACK,
    SHORT,
    LatencyLog,
    Ledger,
    dlq_count,
    exactly_once_report,
    feedback_body,
    make_decisions,
    publish_until_acked,
    random_reaction,
    record,
    score_traffic,
    wait_applied,
)

pytestmark = [pytest.mark.system, pytest.mark.slow]

SCORER_ENV = {"REDIS_TIMEOUT_S": "0.25"}


async def test_kill9_feedback_consumers_while_feedback_flows(own_stack, workers, clients):
    nc, js, r, store = clients
    workers.spawn("scorer.main", SCORER_ENV)
    n_users, per_user = (10, 40) if SHORT else (20, 75)  # 400 / 1,500 decisions
    decs = await make_decisions(nc, [f"k9-{i}" for i in range(n_users)], per_user, redis=r)
    cons = [workers.spawn("feedback_consumer.main", FAST_FEEDBACK) for _ in range(2)]
    rng = random.Random(9)
    ledger = Ledger()
    events = []
    for u, d in decs:
        rc, rw, val = random_reaction(rng)
        e = f"k9-{d['decision_id']}"
        ledger.add(e, d["decision_id"], u, val)
        events.append((e, d["decision_id"], u, rc, rw))
    # 15 % republished with the same Nats-Msg-Id (stream dedup), 10 % without any
    # (only the consumer's idempotency claim protects those)
    stream = [(ev, True) for ev in events]
    stream += [(ev, True) for ev in rng.sample(events, len(events) * 15 // 100)]
    stream += [(ev, False) for ev in rng.sample(events, len(events) * 10 // 100)]
    rng.shuffle(stream)
    duration = 3.0 if SHORT else 6.0
    chunk = 100  # bursts of concurrent publishes: kills land mid-batch
    pace = duration / (len(stream) / chunk)
    killed_at: list[float] = []

    async def publisher():
        for j in range(0, len(stream), chunk):
            await asyncio.gather(*(
                publish_until_acked(js, f"feedback.{rc or 'explicit'}",
                                    feedback_body(e, d, u, rc, rw), e if with_id else None)
                for (e, d, u, rc, rw), with_id in stream[j:j + chunk]))
            await asyncio.sleep(pace)

    async def killer():
        await asyncio.sleep(duration * 0.3)
        cons[0].kill()  # SIGKILL
        killed_at.append(time.monotonic())
        await asyncio.sleep(duration * 0.2)
        cons[1].kill()  # now nobody consumes
        killed_at.append(time.monotonic())
        await asyncio.sleep(1.0)

    await asyncio.gather(publisher(), killer())
    ci = await js.consumer_info("FEEDBACK", "feedback-consumer")
    t_restart = time.monotonic()
    workers.spawn("feedback_consumer.main", FAST_FEEDBACK)
    took = await wait_applied(r, ledger.events, timeout=120)
    assert took is not None, "not every event got applied after the restart"
    await asyncio.sleep(3.0)  # past ack_wait: a straggling redelivery would show now
    rep = await exactly_once_report(r, store, ledger)
    dlq = await dlq_count(js)
    record("kill -9 feedback consumers (2 of 2) mid-stream", injected="SIGKILL x2",
           published=len(stream), unique_events=len(events), pending_at_restart=ci.num_pending,
           ack_pending_at_restart=ci.num_ack_pending, requests_failed=0,
           recovered_s=round(time.monotonic() - t_restart - 3.0, 2), rewards_lost=rep["lost"],
           rewards_doubled=rep["doubled"], mismatched_arms=rep["mismatched_arms"],
           outcomes=rep["outcomes"], dead_lettered=dlq)
    assert rep["outcomes"] == {"applied": len(events)}
    assert rep["lost"] == 0 and rep["doubled"] == 0 and rep["mismatched_arms"] == 0
    assert dlq == 0


async def test_kill9_scorer_fails_fast_then_recovers(own_stack, workers, clients):
    nc, _js, _r, _store = clients
    sc = workers.spawn("scorer.main", SCORER_ENV)
    log, stop = LatencyLog(), asyncio.Event()
    timeout = 0.5
    traffic = asyncio.create_task(score_traffic(nc, stop, log, rate=50, timeout=timeout))
    await asyncio.sleep(1.5)
    t_kill = time.monotonic()
    sc.kill()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(workers.spawn, "scorer.main", SCORER_ENV)
    t_up = time.monotonic()
    await asyncio.sleep(1.5)
    stop.set()
    await traffic
    before = log.between(0, t_kill)
    after_kill = log.between(t_kill, float("inf"))
    failed = [x for x in after_kill if x[2] not in ("ok", "fallback")]
    first_ok = min((x[0] for x in after_kill if x[2] == "ok" and x[0] > t_kill + 0.05),
                   default=None)
    recovered = None if first_ok is None else first_ok - t_kill
    record("kill -9 scorer under 50 req/s", injected="SIGKILL", requests=len(log.rows),
           requests_failed=len(failed),
           failure_codes=sorted({x[2] for x in failed}),
           max_failed_latency_ms=round(max((x[1] for x in failed), default=0) * 1000, 1),
           restart_s=round(t_up - t_kill, 2),
           recovered_s=None if recovered is None else round(recovered, 2),
           rewards_lost=0, rewards_doubled=0)
    assert before and all(x[2] == "ok" for x in before)
    assert failed, "the kill produced no failed request at all?"
    assert {x[2] for x in failed} <= {"unavailable", "timeout"}
    assert max(x[1] for x in failed) <= timeout + 0.3  # failed fast, never hung
    assert recovered is not None
    tail = log.between(t_up + 0.5, float("inf"))
    assert tail and all(x[2] == "ok" for x in tail)

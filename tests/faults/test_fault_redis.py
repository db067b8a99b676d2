"""Redis outage mid-traffic: killed (SIGKILL, restarted on the same port from its AOF) or
frozen (SIGSTOP → SIGCONT: connections open, nothing answers — the "slow Redis" case).

Expected: tips.score keeps answering in time with the flagged uniform fallback
(``fallback: true``, propensity 1/K); feedback is not acked while it cannot be applied
(nak with delay), nothing is dead-lettered, and after the outage every event is applied
exactly once. Also measured: decisions served (not fallback) just before the outage whose
decision record could not be written — their rewards cannot be applied later.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
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
    wait_applied,
)
from tipsml.messaging.connection import request_json
from tipsml.state import decision_key

pytestmark = [pytest.mark.system, pytest.mark.slow]

REDIS_TIMEOUT_S = 0.1
SCORER_ENV = {"REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S)}
OUTAGE_S = 3.0
ARMS = ["a1", "a2", "a3", "a4"]
GEN_DEADLINE_S = 0.5
GEN_ENV = {"LLM_API_BASE": "http://127.0.0.1:9/v1", "LLM_MODEL": "openai/smollm2-135m",
           "LLM_RETRIES": "0", "GENERATOR_DEADLINE_S": str(GEN_DEADLINE_S),
           "GENERATOR_REFILL_ON_MISS": "false"}


async def _traffic(nc, stop, log: LatencyLog, served: list, timeout=0.5, rate=50):
    tasks, i, nxt = set(), 0, time.monotonic()

    async def one(i):
        t = time.monotonic()
        u = f"ro-{i % 40}"
        rep = await request_json(nc, "tips.score", {"user_id": u, "arms": ARMS,
                                                    "context": {"hour_of_day": i % 24}},
                                 timeout=timeout)
        log.add(t, time.monotonic() - t, rep)
        if rep.get("ok"):
            served.append((t, u, rep))

    while not stop.is_set():
        tk = asyncio.create_task(one(i))
        tasks.add(tk)
        tk.add_done_callback(tasks.discard)
        i += 1
        nxt += 1.0 / rate
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 2)


@pytest.mark.parametrize("mode", ["kill", "freeze"])
async def test_redis_outage_fallback_and_no_feedback_lost(own_stack, workers, clients, mode):
    if SHORT and mode == "freeze":
        pytest.skip("short form: the kill variant only")
    nc, js, r, store = clients
    scorer = workers.spawn("scorer.main", SCORER_ENV)
    cons = workers.spawn("feedback_consumer.main", FAST_FEEDBACK)
    gen = workers.spawn("generator.main", GEN_ENV)
    decs = await make_decisions(nc, [f"rf-{i}" for i in range(10)], 30 if SHORT else 60, redis=r)
    rng = random.Random(5)
    ledger, stop, log, served = Ledger(), asyncio.Event(), LatencyLog(), []
    traffic = asyncio.create_task(_traffic(nc, stop, log, served))

    async def publisher():
        for u, d in decs:
            rc, rw, val = random_reaction(rng)
            e = f"rf-{d['decision_id']}"
            await publish_until_acked(js, f"feedback.{rc or 'explicit'}",
                                      feedback_body(e, d["decision_id"], u, rc, rw), e)
            ledger.add(e, d["decision_id"], u, val)
            await asyncio.sleep(7.0 / len(decs))

    pub = asyncio.create_task(publisher())
    await asyncio.sleep(2.0)
    t_down = time.monotonic()
    rpid = own_stack.procs["redis"].popen.pid
    port = own_stack.procs["redis"].port
    if mode == "kill":
        own_stack.stop_one("redis", signal.SIGKILL)
    else:
        os.kill(rpid, signal.SIGSTOP)
    await asyncio.sleep(0.5)
    t_stats = time.monotonic()
    stats = await request_json(nc, "tips.stats", {"user_id": "rf-0"}, timeout=2.0)
    stats_s = time.monotonic() - t_stats
    t_gen = time.monotonic()
    gen_rep = await request_json(nc, "tips.generate", {"user_id": "rf-gen", "arm": "a1"},
                                 timeout=3.0)
    gen_s = time.monotonic() - t_gen
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
    ci_mid = await js.consumer_info("FEEDBACK", "feedback-consumer")
    t_restart = time.monotonic()
    if mode == "kill":
        await asyncio.to_thread(own_stack.start_redis, port)
    else:
        os.kill(rpid, signal.SIGCONT)
    t_up = time.monotonic()
    await pub
    await asyncio.sleep(3.0)
    stop.set()
    await traffic
    assert all(w.popen.poll() is None for w in (scorer, cons, gen)), "a worker died"

    during = log.between(t_down + 0.2, t_restart)
    errors = [x for x in log.rows if x[2] not in ("ok", "fallback")]
    fallbacks = [x for x in log.rows if x[2] == "fallback"]
    fb_replies = [rep for t, _, rep in served if rep.get("fallback")]
    first_ok = min((x[0] for x in log.between(t_up, float("inf")) if x[2] == "ok"), default=None)
    took = await wait_applied(r, ledger.events, timeout=60)
    await asyncio.sleep(2.5)
    rep = await exactly_once_report(r, store, ledger)
    dlq = await dlq_count(js)

    # decisions served for real (not fallback) around the outage: is each one rewardable?
    window = [(u, d) for t, u, d in served
              if t_down - 2.0 <= t <= t_up + 1.0 and not d.get("fallback")]
    await asyncio.sleep(0.5)
    unrecorded = 0
    for j in range(0, len(window), 500):
        keys = [decision_key(d["decision_id"], u) for u, d in window[j:j + 500]]
        unrecorded += len(keys) - await r.exists(*keys)

    record(f"Redis {mode} ({OUTAGE_S:.0f} s) mid-traffic",
           injected="redis " + ("SIGKILL + restart from AOF" if mode == "kill"
                                else "SIGSTOP/SIGCONT"),
           requests=len(log.rows), requests_failed=len(errors),
           failure_codes=sorted({x[2] for x in errors}), fallback_replies=len(fallbacks),
           p99_during_outage_ms=round(sorted(x[1] for x in during)[int(0.99 * (len(during) - 1))]
                                      * 1000, 1) if during else None,
           max_latency_ms=round(max(x[1] for x in log.rows) * 1000, 1),
           recovered_s=None if first_ok is None else round(first_ok - t_up, 2),
           stats_during_outage=stats.get("error", {}).get("code", "ok"),
           stats_during_outage_s=round(stats_s, 2),
           generate_during_outage=gen_rep.get("source") or gen_rep.get("error"),
           generate_during_outage_s=round(gen_s, 2),
           feedback_ack_pending_mid_outage=ci_mid.num_ack_pending,
           feedback_redelivered_mid_outage=ci_mid.num_redelivered,
           unique_events=len(ledger.events), apply_wait_s=took, rewards_lost=rep["lost"],
           rewards_doubled=rep["doubled"], mismatched_arms=rep["mismatched_arms"],
           outcomes=rep["outcomes"], dead_lettered=dlq,
           served_decisions_not_recorded=unrecorded, served_decisions_near_outage=len(window))
    # the scorer answered everything, in time, with a flagged uniform fallback meanwhile
    assert not errors, sorted({x[2] for x in errors})
    assert during and all(x[2] == "fallback" for x in during)
    assert max(x[1] for x in log.rows) < 0.5
    assert fb_replies and all(d["propensity"] == pytest.approx(1 / len(ARMS)) and
                              d["arm"] in ARMS and d["explored"] for d in fb_replies)
    assert first_ok is not None and first_ok - t_up < 5.0
    # admin reads cannot fall back: a typed unavailable/timeout, never "internal"
    assert stats.get("error", {}).get("code") in ("unavailable", "timeout"), stats
    # the generator answers from its fallback within its deadline while Redis is out
    assert gen_rep.get("ok") and gen_rep["source"] == "fallback", gen_rep
    assert gen_s <= GEN_DEADLINE_S + 0.5, gen_s
    # feedback: held back during the outage, then applied exactly once, nothing parked
    assert took is not None
    assert rep["outcomes"] == {"applied": len(ledger.events)}
    assert rep["lost"] == 0 and rep["doubled"] == 0 and rep["mismatched_arms"] == 0
    assert dlq == 0

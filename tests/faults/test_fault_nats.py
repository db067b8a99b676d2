"""NATS server restart mid-traffic (JetStream file storage, same port and data dir).

Scorer + feedback consumer run as subprocesses; a client keeps sending tips.score at
50 req/s (0.5 s timeout) and publishing feedback (retrying until the stream acks, with
Nats-Msg-Id). The server is stopped (SIGTERM, or SIGKILL = crash), kept down 2 s, and
started again. Expected: requests during the outage fail within their timeout with
``unavailable``/``timeout``; the workers reconnect by themselves; scoring succeeds again;
every acknowledged feedback event is applied exactly once.
"""

from __future__ import annotations

import asyncio
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
    score_traffic,
    wait_applied,
)
from tipsml.messaging.connection import request_json

pytestmark = [pytest.mark.system, pytest.mark.slow]

SCORER_ENV = {"REDIS_TIMEOUT_S": "0.25"}
OUTAGE_S = 2.0
GEN_ENV = {"LLM_API_BASE": "http://127.0.0.1:9/v1", "LLM_MODEL": "openai/smollm2-135m",
           "LLM_RETRIES": "0", "GENERATOR_DEADLINE_S": "0.5", "GENERATOR_REFILL_ON_MISS": "false"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_nats_restart_mid_traffic(own_stack, workers, clients, sig):
    if SHORT and sig == signal.SIGTERM:
        pytest.skip("short form: the crash variant only")
    nc, js, r, store = clients
    scorer = workers.spawn("scorer.main", SCORER_ENV)
    cons = workers.spawn("feedback_consumer.main", FAST_FEEDBACK)
    gen = workers.spawn("generator.main", GEN_ENV)
    decs = await make_decisions(nc, [f"nr-{i}" for i in range(10)], 40 if SHORT else 80, redis=r)
    rng = random.Random(int(sig))
    ledger = Ledger()
    publish_failures = 0
    stop = asyncio.Event()
    log = LatencyLog()
    timeout = 0.5
    traffic = asyncio.create_task(score_traffic(nc, stop, log, rate=50, timeout=timeout))

    async def publisher():
        nonlocal publish_failures
        for u, d in decs:
            rc, rw, val = random_reaction(rng)
            e = f"nr-{d['decision_id']}"
            publish_failures += await publish_until_acked(
                js, f"feedback.{rc or 'explicit'}", feedback_body(e, d["decision_id"], u, rc, rw),
                e)
            ledger.add(e, d["decision_id"], u, val)  # only once the stream acknowledged it
            await asyncio.sleep(6.0 / len(decs))

    pub = asyncio.create_task(publisher())
    await asyncio.sleep(2.0)
    port = own_stack.procs["nats"].port
    t_down = time.monotonic()
    own_stack.stop_one("nats", sig)
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(own_stack.start_nats, port)
    t_up = time.monotonic()
    await pub
    await asyncio.sleep(3.0)
    stop.set()
    await traffic
    assert all(w.popen.poll() is None for w in (scorer, cons, gen)), "a worker died"
    gen_after = await request_json(nc, "tips.generate", {"user_id": "nr-gen"}, timeout=3.0)

    during = log.between(t_down, t_up)
    failed = [x for x in log.rows if x[2] not in ("ok", "fallback")]
    first_ok = min((x[0] for x in log.between(t_up, float("inf")) if x[2] == "ok"), default=None)
    took = await wait_applied(r, ledger.events, timeout=60)
    await asyncio.sleep(2.5)
    rep = await exactly_once_report(r, store, ledger)
    dlq = await dlq_count(js)
    record(f"NATS restart ({signal.Signals(sig).name}, {OUTAGE_S:.0f} s down) mid-traffic",
           injected=f"nats {signal.Signals(sig).name} + {OUTAGE_S} s outage",
           requests=len(log.rows), requests_failed=len(failed),
           failed_outside_outage=len([x for x in failed
                                      if not (t_down - timeout <= x[0] <= t_up + 3)]),
           failure_codes=sorted({x[2] for x in failed}),
           max_failed_latency_ms=round(max((x[1] for x in failed), default=0) * 1000, 1),
           recovered_s=None if first_ok is None else round(first_ok - t_up, 2),
           publish_retries=publish_failures, unique_events=len(ledger.events),
           apply_wait_s=took, rewards_lost=rep["lost"], rewards_doubled=rep["doubled"],
           mismatched_arms=rep["mismatched_arms"], outcomes=rep["outcomes"], dead_lettered=dlq,
           generate_after_restart=gen_after.get("source") or gen_after.get("error"))
    assert during, "no request was sent during the outage"
    assert {x[2] for x in failed} <= {"unavailable", "timeout"}, sorted({x[2] for x in failed})
    assert max(x[1] for x in log.rows) <= timeout + 0.3, "a request hung past its timeout"
    assert first_ok is not None and first_ok - t_up < 10.0, "scoring did not come back"
    tail = log.between(t_up + 5.0, float("inf"))
    assert tail and all(x[2] == "ok" for x in tail), "still failing 5 s after the restart"
    assert took is not None, "feedback acknowledged by the stream was never applied"
    assert rep["outcomes"] == {"applied": len(ledger.events)}
    assert rep["lost"] == 0 and rep["doubled"] == 0 and rep["mismatched_arms"] == 0
    assert dlq == 0
    assert gen_after.get("ok"), f"generator did not come back after the NATS restart: {gen_after}"

"""Burst: 50,000 feedback events published at once (5,000 in the CI short form).

Decision records are written with the library's own ``StateStore.record_decisions`` (what
the scorer's decision writer calls), so the burst is not limited by the scorer. One
consumer drains the burst; its RSS is sampled throughout. Expected: every event applied
exactly once (final state = numpy), nothing dead-lettered, and memory bounded
(max_ack_pending / batch bound what the consumer holds).
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from tests.chaoslib import (
    SHORT,
    Ledger,
    dlq_count,
    exactly_once_report,
    loadavg,
    metric,
    record,
    rss_mb,
    wait_applied,
)
from tipsml.state import pulls_key, state_key

pytestmark = [pytest.mark.system, pytest.mark.slow]

N = 5_000 if SHORT else 50_000
USERS = 500
ARMS = ["focus_block", "break_reminder", "task_breakdown", "prioritize", "plan_tomorrow"]
RSS_LIMIT_MB = 400.0


async def test_burst_50k_feedback_all_applied_bounded_memory(own_stack, workers, clients):
    _nc, js, r, store = clients
    rng = np.random.default_rng(50)
    records, local = [], {}
    for i in range(N):
        u = f"b-{i % USERS}"
        did = f"burst{i:06d}"
        x = np.concatenate([[1.0], rng.uniform(-1, 1, 6)])
        arm = ARMS[int(rng.integers(len(ARMS)))]
        sk = state_key("egreedy-v1", u)
        records.append({"decision_id": did, "user_id": u, "arm": arm, "policy": "egreedy-v1",
                        "policy_version": "t", "propensity": 0.5, "ts": time.time(),
                        "learners": ["egreedy-v1"], "vectors": {"egreedy-v1": (sk, x)},
                        "pulls_key": pulls_key("egreedy-v1", u)})
        local[did] = {"arm": arm, "learners": "egreedy-v1", "skey:egreedy-v1": sk,
                      "x:egreedy-v1": np.asarray(x, dtype="<f8").tobytes()}
    for j in range(0, N, 2000):
        await store.record_decisions(records[j:j + 2000])

    cons = workers.spawn("feedback_consumer.main", {"FEEDBACK_ACK_WAIT_S": "10"})
    rss = [rss_mb(cons.popen.pid)]
    sampling = True

    async def sampler():
        while sampling:
            rss.append(rss_mb(cons.popen.pid))
            await asyncio.sleep(0.25)

    samp = asyncio.create_task(sampler())
    ledger = Ledger()
    reactions = ["completed", "accepted", "dismissed", "ignored"]
    rewards = {"completed": 1.0, "accepted": 0.5, "dismissed": 0.0, "ignored": 0.0}
    t0 = time.monotonic()
    load0 = loadavg()
    for j in range(0, N, 2000):
        pubs = []
        for i in range(j, min(N, j + 2000)):
            rc = reactions[i % 4]
            e, did, u = f"be-{i}", f"burst{i:06d}", f"b-{i % USERS}"
            ledger.add(e, did, u, rewards[rc])
            body = json.dumps({"event_id": e, "decision_id": did, "user_id": u,
                               "reaction": rc, "ts": 0}).encode()
            pubs.append(js.publish(f"feedback.{rc}", body, headers={"Nats-Msg-Id": e},
                                   timeout=30))
        await asyncio.gather(*pubs)
    t_pub = time.monotonic() - t0
    took = await wait_applied(r, ledger.events, timeout=600)
    total_s = time.monotonic() - t0
    sampling = False
    await samp
    rep = await exactly_once_report(r, store, ledger, records=local)
    dlq = await dlq_count(js)
    ci = await js.consumer_info("FEEDBACK", "feedback-consumer")
    mport = cons.info["metrics_port"]
    retries = metric(mport, "feedback_events_total", outcome="retry")
    record(f"burst of {N:,} feedback events", injected=f"{N} events at once",
           requests_failed=0, publish_s=round(t_pub, 1),
           drain_s=round(total_s, 1) if took else None,
           events_per_s=round(N / total_s) if took else None,
           consumer_rss_start_mb=round(rss[0], 1), consumer_rss_peak_mb=round(max(rss), 1),
           consumer_rss_end_mb=round(rss[-1], 1), recovered_s=round(total_s, 1),
           rewards_lost=rep["lost"], rewards_doubled=rep["doubled"],
           mismatched_arms=rep["mismatched_arms"], outcomes=rep["outcomes"], dead_lettered=dlq,
           num_pending_after=ci.num_pending, spurious_retries=retries,
           redelivered=ci.num_redelivered, loadavg_at_start=load0, loadavg_at_end=loadavg())
    assert took is not None, "the burst was not fully applied"
    assert rep["outcomes"] == {"applied": N}
    assert rep["lost"] == 0 and rep["doubled"] == 0 and rep["mismatched_arms"] == 0
    assert dlq == 0
    # Redis was healthy the whole time: no event may have been nak'ed for a retry
    assert retries == 0, f"{retries:.0f} events nak'ed although Redis was up"
    assert max(rss) < RSS_LIMIT_MB, f"consumer RSS peaked at {max(rss):.0f} MiB"
    assert cons.popen.poll() is None

"""Fault test on a real cluster (``pytest --cluster tests/faults/test_fault_cluster.py``):
``kill -9`` of a NATS node and then of a Redis master while decisions and rewards flow;
every reward is applied exactly once and the scorer keeps answering (its own
ClusterStack, so the nodes it kills disturb no other test). The measured version with
latency windows is ``bench/cluster_failover.py``."""

from __future__ import annotations

import asyncio
import random
import time

import nats
import pytest

from tests.chaoslib import (
    FAST_FEEDBACK,
    LatencyLog,
    Ledger,
    exactly_once_report,
    feedback_body,
    publish_until_acked,
    record,
    score,
    wait_applied,
)
from tipsdev.testing import spawn_worker
from tipsml.rewards import REWARD_TABLE
from tipsml.state import StateStore, connect_redis

pytestmark = [pytest.mark.system, pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def cluster(request, tmp_path):
    import os

    if not (request.config.getoption("--cluster") or os.environ.get("TIPS_TEST_CLUSTER") == "1"):
        pytest.skip("needs the cluster run (pytest --cluster)")
    from tipsdev.cluster import ClusterStack

    with ClusterStack() as cs:
        yield cs


async def test_nats_node_and_redis_master_killed_rewards_exactly_once(cluster, tmp_path):
    cs = cluster
    env = {**cs.env(), **FAST_FEEDBACK, "FEEDBACK_MISSING_GRACE_S": "30",
           "REDIS_TIMEOUT_S": "0.25"}
    ws = [spawn_worker("scorer.main", env, log_path=str(tmp_path / "scorer.log")),
          spawn_worker("feedback_consumer.main", env, log_path=str(tmp_path / "fb.log"))]
    servers = cs.nats_url.split(",")
    nc = await nats.connect(servers=servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    r = connect_redis(cs.redis_url)
    await r.initialize()
    log, ledger, rng = LatencyLog(), Ledger(), random.Random(3)
    stop = asyncio.Event()
    tasks: set[asyncio.Task] = set()

    async def one(i):
        user = f"cf-{i % 60}"
        t = time.monotonic()
        rep = await score(nc, user, i, timeout=3.0)
        log.add(t, time.monotonic() - t, rep)
        if rep.get("ok") and rng.random() < 0.3:
            ev = f"cf-{rep['decision_id']}"
            rc = rng.choice(list(REWARD_TABLE))
            await publish_until_acked(nc.jetstream(timeout=2.0), f"feedback.{rc}",
                                      feedback_body(ev, rep["decision_id"], user, rc), ev)
            ledger.add(ev, rep["decision_id"], user, REWARD_TABLE[rc])

    async def traffic():
        i = 0
        while not stop.is_set():
            t = asyncio.create_task(one(i))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(1 / 40)

    try:
        load = asyncio.create_task(traffic())
        await asyncio.sleep(6)
        cs.kill("nats2")
        await asyncio.sleep(8)
        victim = next(iter(cs.redis_masters()))
        cs.kill(victim)
        await asyncio.sleep(12)
        stop.set()
        await load
        await asyncio.wait(tasks, timeout=60) if tasks else None
        await r.nodes_manager.initialize()
        took = await wait_applied(r, ledger.events, timeout=120)
        rep = await exactly_once_report(r, StateStore(r), ledger)
        codes: dict[str, int] = {}
        for _, _, c in log.rows:
            codes[c] = codes.get(c, 0) + 1
        record("cluster: kill -9 a NATS node, then a Redis master", requests=len(log.rows),
               codes=codes, rewards=len(ledger.events), apply_wait_s=took,
               rewards_lost=rep["lost"], rewards_doubled=rep["doubled"],
               mismatched_arms=rep["mismatched_arms"])
        assert took is not None, "rewards not all claimed within 120 s"
        assert rep["lost"] == 0 and rep["doubled"] == 0 and rep["mismatched_arms"] == 0
        assert rep["outcomes"].get("applied", 0) == len(ledger.events)
        # the scorer kept answering: errors only around the NATS node loss, a few at most
        assert codes.get("ok", 0) > 0.8 * len(log.rows), codes
        errors = sum(v for k, v in codes.items() if k not in ("ok", "fallback"))
        assert errors < 0.05 * len(log.rows)
    finally:
        await nc.close()
        await r.aclose()
        for w in ws:
            w.stop()

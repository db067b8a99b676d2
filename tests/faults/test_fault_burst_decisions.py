"""Bursts of concurrent ``tips.score`` requests, each followed at once by its reward.

What a page load does: the recommender asks for many users at once (one connection or
many), and the app publishes each reaction the instant the user taps. Before the burst
fix, a burst of 200+ lost decision records (the scorer's state reads raced a 25 ms
deadline for a shared connection pool, cancelled calls killed connections, fallbacks
wrote no record) and rewards published at once were claimed ``expired``.

Real worker processes with their default settings (the 25 ms Redis deadline, the 10 s
grace for a decision not written yet). Expected, whatever the burst shape:
* every decision the scorer replied with has its Redis record (fallbacks too);
* the DECISIONS stream holds exactly one entry per served and per shadow choice;
* every reward applies exactly once (final bandit state = numpy recomputation).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import nats
import pytest

from tests.chaoslib import Ledger, exactly_once_report, exists_many, loadavg, record, wait_applied
from tipsdev.testing import wait_responding
from tipsml.rewards import reward_of
from tipsml.state import decision_key

pytestmark = [pytest.mark.system]

BURST = 1000
REACTIONS = ["completed", "accepted", "dismissed"]


@pytest.mark.parametrize("connections", [1, 10])
async def test_burst_every_decision_recorded_every_reward_applied_once(
        own_stack, workers, clients, connections):
    _nc, js, r, store = clients
    workers.spawn("scorer.main")
    workers.spawn("feedback_consumer.main")
    ncs = [await nats.connect(own_stack.nats_url, pending_size=64 * 1024 * 1024)
           for _ in range(connections)]
    await wait_responding(ncs[0], "tips.stats")
    ledger = Ledger()
    rng = random.Random(connections)
    replies: list[dict] = []
    users_of: list[str] = []
    publish_failures: list[str] = []

    async def one(i: int):
        nc = ncs[i % connections]
        user = f"burst{connections}-{i % 150}"
        body = {"user_id": user, "context": {"hour_of_day": i % 24, "day_of_week": i % 7,
                                             "tasks": [{"title": f"t{i}", "priority": i % 5}]},
                "profile_features": {"completion_rate": (i % 10) / 10}}
        msg = await nc.request("tips.score", json.dumps(body).encode(), timeout=30)
        rep = json.loads(msg.data)
        assert rep["ok"], rep
        replies.append(rep)
        users_of.append(user)
        # the reaction, published the instant the reply arrives
        ev = f"ev-{rep['decision_id']}"
        reaction = rng.choice(REACTIONS)
        fb = {"event_id": ev, "decision_id": rep["decision_id"], "user_id": user,
              "reaction": reaction, "ts": time.time()}
        try:
            await nc.jetstream().publish(f"feedback.{reaction}", json.dumps(fb).encode(),
                                         headers={"Nats-Msg-Id": ev}, timeout=10)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            publish_failures.append(repr(e))
            return
        ledger.add(ev, rep["decision_id"], user, reward_of(reaction, None))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(BURST)))
    burst_s = time.monotonic() - t0
    assert not publish_failures, publish_failures[:3]
    assert len(replies) == BURST

    took = await wait_applied(r, ledger.events, timeout=90)
    ids = [(u, rep["decision_id"]) for u, rep in zip(users_of, replies)]
    present = 0
    for j in range(0, len(ids), 500):
        present += await exists_many(r, [decision_key(d, u) for u, d in ids[j:j + 500]])
    expected_entries = len(replies)  # one DECISIONS message per decision (shadows inside)
    for _ in range(50):  # the writer publishes right after the replies
        entries = (await js.stream_info("DECISIONS")).state.messages
        if entries >= expected_entries:
            break
        await asyncio.sleep(0.2)
    rep = await exactly_once_report(r, store, ledger)
    fallbacks = sum(1 for x in replies if x.get("fallback"))
    record(f"Burst of {BURST} tips.score on {connections} connection(s), reward at once",
           burst_s=round(burst_s, 2), fallbacks=fallbacks, records_present=present,
           decisions_entries=entries, decisions_expected=expected_entries,
           apply_wait_s=took, rewards_lost=rep["lost"], rewards_doubled=rep["doubled"],
           mismatched_arms=rep["mismatched_arms"], outcomes=rep["outcomes"],
           loadavg=loadavg())
    for nc in ncs:
        await nc.close()

    assert present == BURST, f"{BURST - present} decisions replied with but not recorded"
    assert entries == expected_entries
    assert took is not None, "rewards not all claimed within 90 s"
    assert rep["outcomes"] == {"applied": BURST}, rep["outcomes"]
    assert rep["lost"] == 0 and rep["doubled"] == 0 and rep["mismatched_arms"] == 0

"""The default reward at window close, with real worker processes on their own stack.

A 2 s reward window (REWARD_WINDOW_S) stands for the production 24 h. Silence must be
learned from exactly once; a reaction in time wins over the default, a default wins over
a late reaction; a consumer that was down when the window closed catches up; with
DEFAULT_REWARD=off nothing is applied and nothing piles up.
"""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tipsdev.launcher import EmbeddedStack
from tipsdev.testing import spawn_worker, wait_responding
from tipsml.state import DUE_SHARDS, due_key, event_key

pytestmark = pytest.mark.system

WINDOW = {"REWARD_WINDOW_S": "2", "DEFAULT_REWARD_SWEEP_S": "0.2"}


@pytest.fixture(scope="module")
def own():
    with EmbeddedStack() as st:
        yield st


@pytest_asyncio.fixture
async def conns(own):
    nc = await nats.connect(own.nats_url)
    r = aioredis.from_url(own.redis_url)
    yield nc, r
    await nc.close()
    await r.aclose()


def spawn(own, module, **env):
    return spawn_worker(module, {**own.env(), **WINDOW, **env})


async def score(nc, user):
    msg = await nc.request("tips.score", json.dumps({"user_id": user}).encode(), timeout=5)
    rep = json.loads(msg.data)
    assert rep["ok"], rep
    return rep


async def stats(nc, user):
    msg = await nc.request("tips.stats", json.dumps({"user_id": user}).encode(), timeout=5)
    return json.loads(msg.data)["arms"]


async def react(nc, rep, user, reaction="completed"):
    ev = f"ev-{rep['decision_id']}"
    await nc.jetstream().publish(
        f"feedback.{reaction}", json.dumps({"event_id": ev, "decision_id": rep["decision_id"],
                                            "user_id": user, "reaction": reaction}).encode(),
        headers={"Nats-Msg-Id": ev})
    return ev


async def wait_key(r, key, timeout=15.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = await r.get(key)
        if v is not None:
            return v.decode()
        await asyncio.sleep(0.1)
    return None


async def due_total(r) -> int:
    return sum([await r.zcard(due_key(s)) for s in range(DUE_SHARDS)])


async def test_silence_reaction_in_time_and_late_reaction(own, conns):
    nc, r = conns
    scorer = spawn(own, "scorer.main")
    cons = spawn(own, "feedback_consumer.main")
    try:
        await wait_responding(nc, "tips.stats")
        silent, early, late = (await score(nc, "dr-silent"), await score(nc, "dr-early"),
                               await score(nc, "dr-late"))
        await react(nc, early, "dr-early", "completed")
        # silence: the default reward (0.0) applies once the window closes
        silent_key = event_key(f"default:{silent['decision_id']}", "dr-silent")
        assert await wait_key(r, silent_key) == "applied"
        st = await stats(nc, "dr-silent")
        assert st[silent["arm"]]["updates"] == 1 and st[silent["arm"]]["reward_sum"] == 0.0
        # a reaction in time wins; the default is counted and dropped
        assert await wait_key(r, event_key(f"default:{early['decision_id']}", "dr-early")) == \
            "already_rewarded"
        st = await stats(nc, "dr-early")
        assert st[early["arm"]]["updates"] == 1 and st[early["arm"]]["reward_sum"] == 1.0
        # a reaction after the default: counted and dropped, state untouched
        late_key = event_key(f"default:{late['decision_id']}", "dr-late")
        assert await wait_key(r, late_key) == "applied"
        ev = await react(nc, late, "dr-late", "completed")
        assert await wait_key(r, event_key(ev, "dr-late")) == "already_rewarded"
        st = await stats(nc, "dr-late")
        assert st[late["arm"]]["updates"] == 1 and st[late["arm"]]["reward_sum"] == 0.0
        # swept entries are gone: nothing piles up
        assert await due_total(r) == 0
    finally:
        scorer.stop()
        cons.stop()


async def test_consumer_down_when_window_closes_catches_up(own, conns):
    nc, r = conns
    scorer = spawn(own, "scorer.main")
    try:
        await wait_responding(nc, "tips.stats")
        reps = [await score(nc, f"dr-down-{i}") for i in range(20)]
        await asyncio.sleep(3.0)  # every window closed while no consumer ran
        assert await r.get(event_key(f"default:{reps[0]['decision_id']}", "dr-down-0")) is None
        cons = spawn(own, "feedback_consumer.main")
        try:
            outs = [await wait_key(r, event_key(f"default:{x['decision_id']}", f"dr-down-{i}"))
                    for i, x in enumerate(reps)]
            assert outs == ["applied"] * 20
        finally:
            cons.stop()
        # a second consumer start (a restart) applies nothing twice
        cons = spawn(own, "feedback_consumer.main")
        await asyncio.sleep(1.0)
        cons.stop()
        for i, _rep in enumerate(reps):
            st = await stats(nc, f"dr-down-{i}")
            assert sum(a["updates"] for a in st.values()) == 1
    finally:
        scorer.stop()


async def test_default_reward_off_applies_nothing_and_cleans_up(own, conns):
    nc, r = conns
    scorer = spawn(own, "scorer.main")
    cons = spawn(own, "feedback_consumer.main", DEFAULT_REWARD="off")
    try:
        await wait_responding(nc, "tips.stats")
        rep = await score(nc, "dr-off")
        await asyncio.sleep(3.5)
        assert await r.get(event_key(f"default:{rep['decision_id']}", "dr-off")) is None
        assert sum(a["updates"] for a in (await stats(nc, "dr-off")).values()) == 0
        assert await due_total(r) == 0
    finally:
        scorer.stop()
        cons.stop()


def test_default_reward_setting_is_validated():
    from feedback_consumer.settings import FeedbackSettings

    assert FeedbackSettings(default_reward="off").default_reward is None
    assert FeedbackSettings(default_reward="0.2").default_reward == pytest.approx(0.2)
    with pytest.raises(ValueError):
        FeedbackSettings(default_reward="1.5")

"""One set of hyper-parameters per policy: a reward scored under ridge λ=1 is refused by a
feedback consumer configured with λ=2 — loudly, counted, dead-lettered, state untouched —
and applies once the settings agree and the dead letters are replayed.

Real processes on a stack of their own (so no other consumer shares the durable): the
scorer (``RIDGE_LAMBDA=1``) and the feedback consumer (``RIDGE_LAMBDA=2``) as
subprocesses, nats-server and redis-server from the launcher.
"""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import urllib.request

import pytest
import pytest_asyncio
from fb_helpers import assert_state_matches, expected_state, make_decisions, publish_feedback

from tipsdev.launcher import EmbeddedStack
from tipsdev.testing import spawn_worker
from tipsml.bandits import decode_arm, update_id
from tipsml.features import FEATURE_VERSION_CTX
from tipsml.state import StateStore, event_key, state_key

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def own_stack():
    with EmbeddedStack() as st:
        yield st


def _metric(port: int, name: str, labels: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _metric_reaches(port: int, labels: str, want: float, timeout: float = 15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if _metric(port, "feedback_events_total", labels) == want:
            await asyncio.sleep(0.3)  # and it stays there
            return _metric(port, "feedback_events_total", labels) == want
        await asyncio.sleep(0.1)
    return False


async def _dead_letters(js, n: int, timeout: float = 30.0) -> list:
    sub = await js.pull_subscribe("dlq.feedback", durable=None, stream="DEADLETTER")
    got = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < n and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(Exception):  # nothing yet: fetch timed out
            got += await sub.fetch(n - len(got), timeout=0.5)
    await sub.unsubscribe()
    return got


@pytest_asyncio.fixture(scope="module")
async def own_nc(own_stack):
    import nats

    nc = await nats.connect(own_stack.nats_url)
    yield nc
    await nc.close()


async def test_lambda_mismatch_is_refused_counted_and_replayable(own_stack, own_nc):
    env = dict(own_stack.env())
    scorer = spawn_worker("scorer.main", {**env, "RIDGE_LAMBDA": "1", "METRICS_PORT": "-1"})
    consumer = spawn_worker("feedback_consumer.main", {**env, "RIDGE_LAMBDA": "2",
                                                       "METRICS_PORT": "0"})
    store = StateStore.from_url(own_stack.redis_url)
    user = "hyper-user"
    try:
        js = own_nc.jetstream()
        decs = await make_decisions(own_nc, [user], 3)
        rec = await store.get_decision(decs[0][1]["decision_id"], user)
        # the decision carries the scorer's update id per learner
        assert rec["hp:egreedy-v1"] == update_id(FEATURE_VERSION_CTX, 1.0)
        rewards = {}
        for i, (u, r) in enumerate(decs):
            await publish_feedback(js, f"hp-{i}", r["decision_id"], u, "completed")
            rewards[r["decision_id"]] = 1.0
        parked = await _dead_letters(js, 3)
        assert len(parked) == 3
        for m in parked:
            reason = m.headers["Tips-Dlq-Reason"]
            assert reason.startswith("hyper_mismatch") and "lambda=1.0" in reason \
                and "lambda=2.0" in reason, reason
        port = consumer.info["metrics_port"]
        # the counter moves just after the dead letter is published: poll briefly
        assert await _metric_reaches(port, 'outcome="hyper_mismatch"', 3)
        assert _metric(port, "feedback_events_total", 'outcome="applied"') == 0
        # state untouched, nothing claimed, decisions not marked rewarded
        assert await store.r.keys("tips:st:*") == []
        for i, (_, r) in enumerate(decs):
            assert await store.r.get(event_key(f"hp-{i}", user)) is None
            assert "rewarded" not in await store.get_decision(r["decision_id"], user)
        # fix the consumer's settings and replay the dead letters: applied once, with λ=1
        consumer.stop()
        consumer = spawn_worker("feedback_consumer.main", {**env, "RIDGE_LAMBDA": "1",
                                                           "METRICS_PORT": "0"})
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "feedback_consumer.dlq", "replay", "--subject",
                             "dlq.feedback"], env=dict(os.environ, **env), check=False,
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert await _metric_reaches(consumer.info["metrics_port"], 'outcome="applied"', 3)
        await assert_state_matches(store.r, await expected_state(store, rewards, lam=1.0))
        n = 0
        for key in await store.r.keys(state_key("egreedy-v1", user)):
            n += sum(int(decode_arm(v, 7)[0]) for v in (await store.r.hgetall(key)).values())
        assert n == 3
    finally:
        consumer.stop()
        scorer.stop()
        await store.close()


def test_update_id_names_features_and_lambda():
    assert update_id("ctx7-v1", 1) == "ctx7-v1/lambda=1.0"
    assert update_id("ctx7-v1", 1.0) != update_id("ctx7-v1", 2.0)
    assert json.dumps(update_id("x", 0.1))  # plain string, safe in a Redis hash / ARGV

"""A request whose reply subject is not an inbox is refused: not acted on, not answered
(issue 19: a forged reply subject turned tips.stats into a tips.reset of a victim). In
the embedded dev stack there are no NATS permissions, so this is the worker's own check."""

import asyncio
import json

import pytest

from tipsml.messaging.connection import request_json
from tipsml.state import pulls_key

pytestmark = pytest.mark.system


async def test_forged_reply_subjects_never_reset_a_user(scorer_service, nc, redis_client, uid):
    victim = f"victim-{uid}"
    key = pulls_key("egreedy-v1", victim)
    await redis_client.hset(key, "focus_block", 3)
    body = json.dumps({"user_id": victim}).encode()
    spy: list = []

    async def on_spy(msg):
        spy.append(msg)

    sub = await nc.subscribe(f"spy.{uid}", cb=on_spy)
    # stats answered onto tips.reset; reset with a JetStream ack subject (a pulled message
    # redirected there), with a non-inbox subject, and without any reply subject
    await nc.publish("tips.stats", body, reply="tips.reset")
    await nc.publish("tips.reset", body, reply="$JS.ACK.SIGNALS.generator-signals.1.1.1.1.1")
    await nc.publish("tips.reset", body, reply=f"spy.{uid}")
    await nc.publish("tips.score", body, reply=f"spy.{uid}")
    await nc.publish("tips.reset", body)
    await nc.flush()
    await asyncio.sleep(0.5)
    assert await redis_client.exists(key), "a forged reply subject reset the victim"
    assert spy == [], "the scorer published onto a non-inbox subject"
    await sub.unsubscribe()
    # a real request (reply subject = the requester's inbox) is still served
    stats = await request_json(nc, "tips.stats", {"user_id": victim})
    assert stats["ok"] and stats["user_id"] == victim
    assert (await request_json(nc, "tips.reset", {"user_id": victim}))["ok"]
    assert not await redis_client.exists(key)

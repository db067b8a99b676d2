"""bench/leanclient.py, the load generator's requester, against a real nats-server: replies
reach their requests (also when many are in flight and frames split across reads),
header-carrying replies (HMSG) return their body, no responder and no reply fail the way
nats-py's request() does."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lean():
    if "leanclient" not in sys.modules:
        spec = importlib.util.spec_from_file_location("leanclient",
                                                      ROOT / "bench" / "leanclient.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["leanclient"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["leanclient"].LeanRequester


async def test_burst_of_requests_each_gets_its_own_reply(stack, nc, uid):
    subject = f"lean.echo.{uid}"

    async def echo(msg):  # the reply names the request it answers, and is large
        await msg.respond(msg.data + b"|" + msg.data * 50)

    sub = await nc.subscribe(subject, cb=echo)
    await nc.flush()
    req = await _lean().connect(stack.nats_url.split(",")[0])
    try:
        bodies = [f"req-{i}".encode() for i in range(500)]
        replies = await asyncio.gather(*(req.request(subject, b, 5.0) for b in bodies))
        for b, r in zip(bodies, replies):
            assert r.data == b + b"|" + b * 50
    finally:
        await sub.unsubscribe()
        await req.close()


async def test_header_replies_return_their_body(stack, nc, uid):
    subject = f"lean.err.{uid}"

    async def err(msg):  # as the workers' typed errors: headers + a JSON body
        await nc.publish(msg.reply, b'{"ok":false}', headers={"Nats-Service-Error-Code": "400"})

    sub = await nc.subscribe(subject, cb=err)
    await nc.flush()
    req = await _lean().connect(stack.nats_url.split(",")[0])
    try:
        r = await req.request(subject, b"{}", 5.0)
        assert r.data == b'{"ok":false}'
        assert b"Nats-Service-Error-Code: 400" in r.headers
    finally:
        await sub.unsubscribe()
        await req.close()


async def test_no_responder_and_silence_fail(stack, nc, uid):
    async def ignore(msg):
        return None

    silent = await nc.subscribe(f"lean.silent.{uid}", cb=ignore)
    await nc.flush()
    req = await _lean().connect(stack.nats_url.split(",")[0])
    try:
        with pytest.raises(ConnectionError, match="no responders"):
            await req.request(f"lean.nobody.{uid}", b"{}", 5.0)
        with pytest.raises(TimeoutError):
            await req.request(f"lean.silent.{uid}", b"{}", 0.3)
        assert not req._waiting  # the expired request is forgotten
    finally:
        await silent.unsubscribe()
        await req.close()

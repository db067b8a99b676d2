"""The decision log's lean JetStream publisher (issue 12) against a real JetStream, on
nats-py and on the scorer's hand-written fast connection: stored messages ack, a repeated
Nats-Msg-Id acks as a duplicate (stored once), a subject no stream takes fails, an error
ack fails with nats-py's typed error; on the fast connection a lost connection fails the
acks in flight at once and publishes raise until it is back."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import errors as js_errors

from scorer.decisionlog import AckedPublisher
from tipsml.messaging.fastsub import FastConnection

pytestmark = pytest.mark.system


@pytest.mark.parametrize("path", ["nats-py", "fast"])
async def test_acks_duplicates_and_failures(nc, stack, uid, path):
    js = nc.jetstream()
    name = f"ACKT{uid}"
    await js.add_stream(name=name, subjects=[f"ackt.{uid}.>"], max_msgs_per_subject=-1,
                        duplicate_window=60.0)
    fast = (await FastConnection([stack.nats_url.split(",")[0]], name="t-ack").connect()
            if path == "fast" else None)
    pub = AckedPublisher(nc, js, fast=fast)
    try:
        futs = [await pub.publish_async(f"ackt.{uid}.a", b"%d" % i,
                                        headers={"Nats-Msg-Id": f"m{i % 5}"})
                for i in range(10)]
        done, pending = await asyncio.wait(futs, timeout=5)
        assert not pending and all(f.result() is True for f in futs)
        assert (await js.stream_info(name)).state.messages == 5  # duplicates stored once
        # the writer's usual path on the fast connection: no coroutine, the header encoded
        # once; nats-py has none (None: the writer awaits publish_async)
        futs = [pub.publish_nowait(f"ackt.{uid}.a", b"n%d" % i, f"{'mn'[i % 2]}{i % 4}")
                for i in range(8)]
        if path == "fast":
            done, pending = await asyncio.wait(futs, timeout=5)
            assert not pending and all(f.result() is True for f in futs)
            # m0, m2 were stored before (duplicates); n1, n3 are new
            assert (await js.stream_info(name)).state.messages == 7
        else:
            assert futs == [None] * 8
        # no stream for the subject: the future fails (the writer republishes it)
        f = await pub.publish_async(f"nostream.{uid}", b"x", headers={"Nats-Msg-Id": "z"})
        with pytest.raises(js_errors.NoStreamResponseError):
            await asyncio.wait_for(f, 5)
        # an error ack (the stream expects another last sequence): nats-py's typed error
        f = await pub.publish_async(f"ackt.{uid}.a", b"y",
                                    headers={"Nats-Expected-Last-Sequence": "1"})
        with pytest.raises(js_errors.APIError) as ei:
            await asyncio.wait_for(f, 5)
        assert ei.value.err_code == 10071
        assert not pub._futs  # nothing left waiting
        # the retry path is nats-py's publish, unchanged
        ack = await pub.publish(f"ackt.{uid}.b", b"r", headers={"Nats-Msg-Id": "r1"}, timeout=5)
        assert ack.stream == name
    finally:
        await pub.close()
        if fast is not None:
            await fast.close()
        await js.delete_stream(name)


async def test_fast_connection_lost_fails_acks_at_once(nc, stack, uid):
    js = nc.jetstream()
    name = f"ACKL{uid}"
    await js.add_stream(name=name, subjects=[f"ackl.{uid}.>"], duplicate_window=60.0)
    fast = FastConnection([stack.nats_url.split(",")[0]], name="t-ack-lost",
                          reconnect_wait=0.05)
    await fast.connect()
    pub = AckedPublisher(nc, js, fast=fast)
    try:
        ok = await pub.publish_async(f"ackl.{uid}.a", b"1", headers={"Nats-Msg-Id": "a1"})
        assert await asyncio.wait_for(ok, 5) is True
        # written, not yet sent, and the connection drops: the ack will never come
        f = await pub.publish_async(f"ackl.{uid}.a", b"2", headers={"Nats-Msg-Id": "a2"})
        fast._proto.transport.abort()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(f, 1)  # at once, not after the writer's 5 s
        with pytest.raises(ConnectionError):  # down: the writer republishes via nats-py
            await pub.publish_async(f"ackl.{uid}.a", b"3", headers={"Nats-Msg-Id": "a3"})
        for _ in range(100):  # it reconnects by itself, the ack inbox subscribed again
            if fast.connected:
                break
            await asyncio.sleep(0.05)
        assert fast.connected
        f = await pub.publish_async(f"ackl.{uid}.a", b"4", headers={"Nats-Msg-Id": "a4"})
        assert await asyncio.wait_for(f, 5) is True
        assert (await js.stream_info(name)).state.messages == 2
    finally:
        await pub.close()
        await fast.close()
        await js.delete_stream(name)

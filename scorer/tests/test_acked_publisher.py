"""The decision log's lean JetStream publisher (issue 12) against a real JetStream:
stored messages ack, a repeated Nats-Msg-Id acks as a duplicate (stored once), a
subject no stream takes fails, an error ack fails with nats-py's typed error."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import errors as js_errors

from scorer.decisionlog import AckedPublisher

pytestmark = pytest.mark.system


async def test_acks_duplicates_and_failures(nc, uid):
    js = nc.jetstream()
    name = f"ACKT{uid}"
    await js.add_stream(name=name, subjects=[f"ackt.{uid}.>"], max_msgs_per_subject=-1,
                        duplicate_window=60.0)
    pub = AckedPublisher(nc, js)
    try:
        futs = [await pub.publish_async(f"ackt.{uid}.a", b"%d" % i,
                                        headers={"Nats-Msg-Id": f"m{i % 5}"})
                for i in range(10)]
        done, pending = await asyncio.wait(futs, timeout=5)
        assert not pending and all(f.result() is True for f in futs)
        assert (await js.stream_info(name)).state.messages == 5  # duplicates stored once
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
        await js.delete_stream(name)

"""The one JetStream pull loop (tipsml.messaging.pull) against a real nats-server from the
launcher fixtures: redelivery with the durable's backoff, dead letter after max_deliver
with the reason headers, ack only after the handler succeeded, heartbeats, the breaker,
and a stop that waits for the message in hand."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from tipsml import subjects as S
from tipsml.messaging.breaker import CircuitBreaker
from tipsml.messaging.connection import ensure_consumer
from tipsml.messaging.pull import DEAD_LETTERED, PullConsumer, RetryOrDeadLetter, RetryPolicy

pytestmark = pytest.mark.system


@pytest.fixture
async def js_env(nc, uid):
    """A stream ``T<uid>`` on ``t.<uid>.>`` with its dead letters on ``t.<uid>.dlq`` kept in
    a second stream, and a factory of durables on it."""
    js = nc.jetstream()
    name, dlq = f"T{uid}", f"TD{uid}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"t.{uid}.in.>"],
                                     retention=RetentionPolicy.LIMITS, storage=StorageType.MEMORY))
    await js.add_stream(StreamConfig(name=dlq, subjects=[f"t.{uid}.dlq"],
                                     storage=StorageType.MEMORY))

    async def durable(ack_wait_s=5.0, max_deliver=3, backoff_s=()):
        spec = S.ConsumerSpec(name, f"d{uid}", f"t.{uid}.in.>", ack_wait_s=ack_wait_s,
                              max_deliver=max_deliver, backoff_s=tuple(backoff_s),
                              max_ack_pending=100)
        await ensure_consumer(js, spec)
        return spec

    yield js, durable, f"t.{uid}.in.x", f"t.{uid}.dlq", dlq
    for s in (name, dlq):
        await js.delete_stream(s)


async def _run(consumer: PullConsumer, until, timeout: float = 20.0):
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, lambda: 5.0))
    t0 = time.monotonic()
    try:
        while not until():
            assert time.monotonic() - t0 < timeout, "condition not reached"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def _pending(js, spec) -> tuple[int, int]:
    info = await js.consumer_info(spec.stream, spec.durable)
    return info.num_pending, info.num_ack_pending


async def test_redelivery_follows_the_backoff_then_dead_letter_with_reasons(js_env):
    js, durable, subject, dlq_subject, dlq_stream = js_env
    spec = await durable(max_deliver=3, backoff_s=(0.3, 0.9))
    seen: list[tuple[int, float]] = []

    async def failing(msg):
        seen.append((msg.metadata.num_delivered, time.monotonic()))
        raise ConnectionError("store down")

    settle = RetryOrDeadLetter(js, RetryPolicy.of(spec), dlq_subject)
    await js.publish(subject, b'{"n":1}', headers={"Nats-Msg-Id": "m-1"})
    await _run(PullConsumer(js, spec, failing, settle=settle, fetch_timeout_s=0.2),
               lambda: len(seen) >= 3, timeout=20)
    await asyncio.sleep(0.3)
    assert [n for n, _ in seen] == [1, 2, 3]  # bounded: max_deliver deliveries, no more
    gaps = [b - a for (_, a), (_, b) in zip(seen, seen[1:])]
    assert 0.25 <= gaps[0] < 0.8 and 0.8 <= gaps[1] < 2.0, gaps  # the durable's backoff
    sub = await js.pull_subscribe(dlq_subject, durable=None, stream=dlq_stream)
    (dead,) = await sub.fetch(1, timeout=5)
    assert dead.data == b'{"n":1}'
    h = dead.headers
    assert h["Tips-Dlq-Reason"].startswith("error: ConnectionError: store down")
    assert h["Tips-Origin-Subject"] == subject and h["Tips-Deliveries"] == "3"
    assert h["Nats-Msg-Id"] == "dlq:m-1"
    await sub.unsubscribe()
    assert await _pending(js, spec) == (0, 0)  # termed: not redelivered again


async def test_ack_only_after_the_handler_succeeded(js_env):
    js, durable, subject, dlq_subject, _ = js_env
    spec = await durable(ack_wait_s=5.0, max_deliver=5, backoff_s=(0.2,))
    gate = asyncio.Event()
    states: list[tuple[int, int]] = []
    done: list[int] = []

    async def slow(msg):
        states.append(await _pending(js, spec))  # while the handler works: unacked
        await gate.wait()
        done.append(msg.metadata.num_delivered)
        return "applied"

    consumer = PullConsumer(js, spec, slow, settle=RetryOrDeadLetter(
        js, RetryPolicy.of(spec), dlq_subject), fetch_timeout_s=0.2)
    await js.publish(subject, b"x")
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, lambda: 5.0))
    for _ in range(200):
        if states:
            break
        await asyncio.sleep(0.02)
    assert states == [(0, 1)]
    assert await _pending(js, spec) == (0, 1)
    gate.set()
    for _ in range(200):
        if await _pending(js, spec) == (0, 0):
            break
        await asyncio.sleep(0.02)
    assert done == [1] and await _pending(js, spec) == (0, 0)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_transient_outcome_retries_then_succeeds_and_handler_settles_itself(js_env):
    js, durable, subject, dlq_subject, _ = js_env
    spec = await durable(max_deliver=4, backoff_s=(0.2,))
    settle = RetryOrDeadLetter(js, RetryPolicy.of(spec), dlq_subject)
    calls: list[int] = []

    async def flaky(msg):
        n = msg.metadata.num_delivered
        calls.append(n)
        if n < 3:
            return await settle(msg, "redis down")  # the handler's own transient retry
        await msg.ack()
        return "applied"

    await js.publish(subject, b"y")
    await _run(PullConsumer(js, spec, flaky, settle=settle, fetch_timeout_s=0.2),
               lambda: calls[-1:] == [3])
    await asyncio.sleep(0.3)
    assert calls == [1, 2, 3] and await _pending(js, spec) == (0, 0)


async def test_poison_is_dead_lettered_at_once(js_env):
    js, durable, subject, dlq_subject, dlq_stream = js_env
    spec = await durable(max_deliver=5, backoff_s=(0.2,))
    settle = RetryOrDeadLetter(js, RetryPolicy.of(spec), dlq_subject)
    outcomes: list[str] = []

    async def poison(msg):
        outcomes.append(await settle(msg, "invalid: not JSON", transient=False))
        return "poison"

    await js.publish(subject, b"{")
    await _run(PullConsumer(js, spec, poison, settle=settle, fetch_timeout_s=0.2),
               lambda: bool(outcomes))
    assert outcomes == [DEAD_LETTERED]
    sub = await js.pull_subscribe(dlq_subject, durable=None, stream=dlq_stream)
    (dead,) = await sub.fetch(1, timeout=5)
    assert dead.headers["Tips-Dlq-Reason"] == "invalid: not JSON"
    assert dead.headers["Tips-Deliveries"] == "1"
    await sub.unsubscribe()


async def test_heartbeats_keep_a_long_handler_from_redelivery(js_env):
    js, durable, subject, dlq_subject, _ = js_env
    spec = await durable(ack_wait_s=1.0, max_deliver=5)
    deliveries: list[int] = []

    async def long_work(msg):
        deliveries.append(msg.metadata.num_delivered)
        await asyncio.sleep(2.5)  # 2.5 x ack_wait
        return "done"

    await js.publish(subject, b"z")
    consumer = PullConsumer(js, spec, long_work, settle=RetryOrDeadLetter(
        js, RetryPolicy.of(spec), dlq_subject), concurrency=2, batch=2, fetch_timeout_s=0.2,
        heartbeat_s=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, lambda: 5.0))
    await asyncio.sleep(3.5)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert deliveries == [1]  # no second delivery while the first one worked
    assert await _pending(js, spec) == (0, 0)


async def test_breaker_stops_fetching_while_handlers_keep_failing(js_env):
    js, durable, subject, dlq_subject, _ = js_env
    spec = await durable(max_deliver=50, backoff_s=(0.05,))
    breaker = CircuitBreaker(failures=3, open_s=1.5)
    calls: list[float] = []

    async def down(msg):
        calls.append(time.monotonic())
        return await settle(msg, "down")

    settle = RetryOrDeadLetter(js, RetryPolicy.of(spec), dlq_subject)
    await js.publish(subject, b"b")
    await _run(PullConsumer(js, spec, down, settle=settle, fetch_timeout_s=0.1,
                            breaker=breaker), lambda: breaker.openings >= 1 and len(calls) >= 4,
               timeout=10)
    # three failures in a row opened it; the fourth delivery waited for the window
    assert calls[3] - calls[2] >= 1.3, [round(b - a, 2) for a, b in zip(calls, calls[1:])]


async def test_stop_waits_for_the_message_in_hand(js_env):
    js, durable, subject, dlq_subject, _ = js_env
    spec = await durable(ack_wait_s=10.0)
    started, finished = asyncio.Event(), []

    async def work(msg):
        started.set()
        await asyncio.sleep(0.5)
        finished.append(True)
        return "done"

    consumer = PullConsumer(js, spec, work, settle=RetryOrDeadLetter(
        js, RetryPolicy.of(spec), dlq_subject), fetch_timeout_s=0.2)
    await js.publish(subject, b"s")
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, lambda: 5.0))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert finished == [True] and await _pending(js, spec) == (0, 0)


def test_retry_policy_one_formula():
    p = RetryPolicy(max_deliver=4, delays_s=(1.0, 5.0))
    assert [p.delay(n) for n in (1, 2, 3, 9)] == [1.0, 5.0, 5.0, 5.0]
    assert not p.exhausted(3) and p.exhausted(4)
    spec = S.ConsumerSpec("X", "x", "x.>", ack_wait_s=5, max_deliver=3, backoff_s=())
    assert RetryPolicy.of(spec, (2.0, 4.0)).delays_s == (2.0, 4.0)  # no backoff: nak schedule
    assert RetryPolicy.of(S.FEEDBACK_CONSUMER).delays_s == S.FEEDBACK_CONSUMER.backoff_s

"""ONE JetStream pull-consumer loop, with ``retry_or_dead_letter``.

Used by the feedback consumer (``feedback``), the generator's signals consumer
(``generator-signals``) and the bench worker's jobs and cells (``bench-jobs``,
``bench-cells``). What each of them used to write for itself:

* **fetch**: as many messages as free handler slots (``concurrency``, at most ``batch``
  per fetch), each handled in its own task; an idle fetch returns after
  ``fetch_timeout_s``; a deleted durable is re-created (or checked) and re-bound; a
  fetch error is counted (``count("fetch_error")``) and retried shortly;
* **ack only after the handler's effect is durable**: the loop acks a message when its
  handler *returns* without having settled it; a handler that acks, naks or terms
  itself (after its own durable write) is left alone;
* **one backoff formula** (:class:`RetryPolicy`): the delay before the next delivery is
  ``delays[min(delivered - 1, len(delays) - 1)]``, where ``delays`` is the durable's
  configured ``backoff`` (or, for a durable without one, the worker's nak schedule);
* **bounded deliveries**: :meth:`RetryOrDeadLetter.retry_or_dead_letter` naks with that
  delay while ``delivered < max_deliver`` and, on the last delivery (or at once for a poison
  message), publishes the payload to the dead-letter subject with the reason headers
  (``Tips-Dlq-Reason``, ``Tips-Origin-Subject``, ``Tips-Deliveries``) and terms it; a
  dead letter that cannot be published keeps the message (nak with the delay);
* a handler that *raises* is treated as a transient failure of that delivery
  (``retry_or_dead_letter``, reason ``error: <type>: <message>``): never a lost message,
  never a crashed loop;
* **in_progress heartbeats** every ``heartbeat_s`` while a handler works (long work:
  a bench cell), so ``ack_wait`` only has to cover a dead worker, not a slow model;
* **one circuit breaker** (:class:`tipsml.messaging.breaker.CircuitBreaker`): handlers
  that keep failing (outcome ``retry`` or an exception) open it, and the loop stops
  fetching while it is open instead of burning the deliveries of every waiting message
  on a dependency that is down;
* **stop**: no new fetch once ``stop`` is set; the messages in hand get until the
  worker's shutdown deadline, then their tasks are cancelled (unacked: JetStream
  redelivers them after ``ack_wait``); the subscription is removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from .. import subjects as S
from .breaker import CircuitBreaker
from .connection import ensure_or_check_consumer, publish_dead_letter

log = logging.getLogger(__name__)

DEFAULT_DELAY_S = 5.0
RETRY = "retry"
DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class RetryPolicy:
    """How often a message is delivered and how long each retry waits."""

    max_deliver: int
    delays_s: tuple[float, ...] = ()

    @classmethod
    def of(cls, spec: S.ConsumerSpec, delays_s=None) -> RetryPolicy:
        """The durable's own ``max_deliver`` and ``backoff``; ``delays_s`` for a durable
        without a configured backoff (its redeliveries after a crash wait ``ack_wait``)."""
        return cls(spec.max_deliver, tuple(spec.backoff_s) or tuple(delays_s or ()))

    def delay(self, delivered: int) -> float:
        d = self.delays_s
        if not d:
            return DEFAULT_DELAY_S
        return float(d[min(max(delivered - 1, 0), len(d) - 1)])

    def exhausted(self, delivered: int) -> bool:
        return delivered >= self.max_deliver


def delivered(msg) -> int:
    md = msg.metadata
    return md.num_delivered if md else 1


def stream_seq(msg) -> int | None:
    md = msg.metadata
    return md.sequence.stream if md else None


def header_msg_id(msg) -> str | None:
    """The dead letter's dedup id: the original ``Nats-Msg-Id`` (``dlq:<id>``)."""
    return (msg.headers or {}).get("Nats-Msg-Id")


Handler = Callable[[object], Awaitable[str | None]]


class RetryOrDeadLetter:
    """How a failed delivery is settled: nak with the policy's delay, or dead-letter it.

    Shared by the loop (a handler that raised) and the handlers themselves (a poison
    message, a transient error they caught)."""

    def __init__(self, js, retry: RetryPolicy, dlq_subject: str,
                 dlq_msg_id: Callable[[object], str | None] = header_msg_id):
        self.js = js
        self.retry = retry
        self.dlq_subject = dlq_subject
        self.dlq_msg_id = dlq_msg_id

    async def retry_or_dead_letter(self, msg, reason: str, *, transient: bool = True,
                                   subject: str | None = None, msg_id: str | None = None) -> str:
        """A failed delivery: nak with the policy's delay while deliveries are left and
        the failure is ``transient``; else dead-letter it (reason headers) and term it.
        Returns ``retry`` or ``dead_lettered``; a message already settled is left alone."""
        if msg.is_acked:
            return RETRY
        n = delivered(msg)
        if transient and not self.retry.exhausted(n):
            await self.nak(msg)
            return RETRY
        return await self.dead_letter(msg, reason, subject=subject, msg_id=msg_id)

    __call__ = retry_or_dead_letter

    async def dead_letter(self, msg, reason: str, *, subject: str | None = None,
                          msg_id: str | None = None, term: bool = True) -> str:
        """Publish ``msg`` to the dead-letter subject with the reason headers, then term
        it; ``retry`` (message kept, nak'ed) when the dead letter cannot be published.
        ``term=False``: the caller settles the message itself (after more durable work)
        and a dead letter that cannot be published is only logged."""
        n = delivered(msg)
        target = subject or self.dlq_subject
        try:
            await publish_dead_letter(self.js, target, msg.data, reason,
                                      origin_subject=msg.subject, deliveries=n,
                                      msg_id=msg_id or self.dlq_msg_id(msg))
        except Exception as e:  # noqa: BLE001 - could not park it: keep it, it comes back
            log.warning("dead letter to %s not published (%r)%s", target, e,
                        ": message kept" if term else "")
            if term:
                await self.nak(msg)
            return RETRY
        if term:
            try:
                await msg.term()
            except Exception as e:  # noqa: BLE001 - connection gone: redelivered, deduplicated
                log.info("term failed: %r", e)
        return DEAD_LETTERED

    async def nak(self, msg, delay: float | None = None) -> None:
        """Nak with ``delay`` (default: the policy's delay for this delivery)."""
        try:
            await msg.nak(delay=self.retry.delay(delivered(msg)) if delay is None else delay)
        except Exception as e:  # noqa: BLE001 - connection gone: ack_wait redelivers
            log.info("nak failed: %r", e)


class PullConsumer:
    """A durable pull consumer's loop; ``await consumer.run(stop, deadline)``."""

    def __init__(self, js, spec: S.ConsumerSpec, handler: Handler, *,
                 settle: RetryOrDeadLetter, settings=None, concurrency: int = 1,
                 batch: int = 1, fetch_timeout_s: float = 1.0, heartbeat_s: float | None = None,
                 breaker: CircuitBreaker | None = None,
                 count: Callable[[str], None] | None = None, inflight=None):
        self.js = js
        self.spec = spec
        self.handler = handler
        self.settle = settle
        self.settings = settings  # with it, (re)binding creates or checks the durable
        self.concurrency = max(1, concurrency)
        self.batch = max(1, batch)
        self.fetch_timeout_s = fetch_timeout_s
        self.heartbeat_s = heartbeat_s
        self.breaker = breaker
        self.count = count or (lambda outcome: None)
        self.inflight = inflight  # optional gauge (inc/dec)
        self.tasks: set[asyncio.Task] = set()
        self._sub = None

    # ------------------------------------------------------------------ one message
    async def _beat(self, msg) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await msg.in_progress()
            except Exception as e:  # noqa: BLE001 - the next beat retries
                log.warning("in_progress for %s failed: %r", msg.subject, e)

    async def handle(self, msg) -> str:
        """Run the handler on one message and settle it (see the module doc)."""
        beat = asyncio.create_task(self._beat(msg)) if self.heartbeat_s else None
        failed = False
        try:
            outcome = await self.handler(msg)
            failed = outcome == RETRY
            if not msg.is_acked:
                await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a crashed handler is a failed delivery
            log.exception("%s: handler failed on %s", self.spec.durable, msg.subject)
            failed = True
            outcome = await self.settle(msg, f"error: {type(e).__name__}: {e}")
            self.count(outcome)
        finally:
            if beat is not None:
                beat.cancel()
        if self.breaker is not None:
            if failed:
                if self.breaker.failure():
                    log.warning("%s: %d failures in a row, not fetching for %.1fs",
                                self.spec.durable, self.breaker.failures, self.breaker.open_s)
            else:
                self.breaker.success()
        return outcome or "ok"

    # ------------------------------------------------------------------ the loop
    async def bind(self):
        if self.settings is not None:
            await ensure_or_check_consumer(self.js, self.spec, self.settings)
        self._sub = await self.js.pull_subscribe_bind(consumer=self.spec.durable,
                                                      stream=self.spec.stream)
        return self._sub

    async def run(self, stop: asyncio.Event,
                  deadline: Callable[[], float] = lambda: 10.0) -> None:
        """Fetch and handle until ``stop``; then wait ``deadline()`` seconds for the
        messages in hand, cancel what is left and unsubscribe."""
        slots = asyncio.Semaphore(self.concurrency)

        async def one(msg):
            if self.inflight is not None:
                self.inflight.inc()
            try:
                await self.handle(msg)
            finally:
                if self.inflight is not None:
                    self.inflight.dec()
                slots.release()

        try:
            while not stop.is_set():
                if self._sub is None:
                    try:
                        await self.bind()
                    except Exception as e:  # noqa: BLE001 - NATS down or reconnecting
                        log.warning("%s: bind failed: %r", self.spec.durable, e)
                        await _sleep_or_stop(stop, 1.0)
                        continue
                await slots.acquire()
                if self.breaker is not None and self.breaker.is_open:
                    # checked with a slot in hand: the handler that just failed opened it
                    slots.release()
                    await _sleep_or_stop(stop, self.breaker.remaining_s())
                    continue
                free = 1
                while free < self.batch and not slots.locked():
                    await slots.acquire()
                    free += 1
                msgs = []
                try:
                    msgs = await self._sub.fetch(batch=free, timeout=self.fetch_timeout_s)
                except (TimeoutError, nats.errors.TimeoutError):
                    pass  # idle
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    for _ in range(free):
                        slots.release()
                    break
                except Exception as e:  # noqa: BLE001 - reconnecting, durable deleted, ...
                    self.count("fetch_error")
                    log.warning("%s: fetch failed: %r", self.spec.durable, e)
                    if isinstance(e, nats.js.errors.NotFoundError):
                        self._sub = None
                    await _sleep_or_stop(stop, 0.5)
                for _ in range(free - len(msgs)):
                    slots.release()
                for msg in msgs:
                    t = asyncio.create_task(one(msg))
                    self.tasks.add(t)
                    t.add_done_callback(self.tasks.discard)
        finally:
            await self._finish(deadline())

    async def _finish(self, timeout: float) -> None:
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for t in pending:  # unacked: redelivered after ack_wait
                t.cancel()
            if pending:
                log.warning("%s: %d messages cut short by the shutdown deadline",
                            self.spec.durable, len(pending))
                await asyncio.wait(pending, timeout=1.0)
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as e:  # noqa: BLE001 - connection already gone
                log.debug("unsubscribe failed: %r", e)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), max(0.01, seconds))
    except TimeoutError:
        pass

"""Background writer of decisions: Redis decision records + the JetStream DECISIONS log.

The scorer replies first and hands the decision here, so neither the Redis write nor
the JetStream publish-ack adds to the reply latency. Guarantees, while Redis and NATS
are up:

* **nothing is dropped**: a batch's records are retried (growing delay) until Redis
  takes them; publishes whose ack does not come are republished with the same
  ``Nats-Msg-Id`` (``<decision_id>:<policy>``), which the stream deduplicates;
* **nothing stalls silently**: the age of the oldest unwritten decision is a gauge
  (``scorer_decision_log_lag_seconds``) and a warning in the log past ``lag_warn_s``;
* **back-pressure, not loss**: above ``high_water`` queued decisions the reply path
  waits (up to ``backpressure_max_s``) for the writer to catch up, while the writer is
  making progress. Only when Redis or NATS is down for long enough to fill ``maxsize``
  are decisions dropped, and each one is counted.

Records and publishes of a batch go out concurrently; a batch is at most ``batch``
decisions (one Redis pipeline, publishes pipelined with their acks awaited together),
and up to ``inflight`` batches are out at once. A batch leaves when ``linger_s`` (10 ms)
has passed since its oldest decision was queued, or at once when ``batch`` are waiting:
at a low request rate each decision used to be a batch of its own (one Redis round trip,
one socket write of publishes, one task per decision); lingering lets the decisions of a
few milliseconds share them (issue 12: at 500 req/s, 5 ms saved 7 % of the scorer's CPU
and 20 ms another 7 %). The reply is never delayed by it; a reaction that comes before its
record is retried by the feedback consumer (first retry after 60 ms, for up to
``missing_grace_s``), so 10 ms costs the reward join nothing but the rare extra look.

One DECISIONS message per decision (``decisions.<live policy>``, ``Nats-Msg-Id``
``<decision_id>:<policy>``): the served entry, with the shadow policies' choices in its
``shadow`` list (only what differs per policy: policy, version, arm, propensity,
explored, scores, features, feature_version). :func:`expand_entry` turns a message back
into one entry per policy (the served one first, then the shadows with ``served: false``)
— the view every reader had when each policy had its own message (those older messages
pass through it unchanged).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import orjson
from nats.js import errors as js_errors

from tipsml import subjects as S

log = logging.getLogger(__name__)


_SHARED = ("decision_id", "user_id", "live_policy", "arms", "hour_of_day", "day_of_week",
           "served_arm", "ts", "request_id")


def expand_entry(e: dict) -> list[dict]:
    """One DECISIONS message → its entries, one per policy (served first)."""
    shadows = e.get("shadow")
    if not isinstance(shadows, list):
        return [e]
    served = {k: v for k, v in e.items() if k != "shadow"}
    out = [served]
    for s in shadows:
        if isinstance(s, dict):
            out.append({**{k: e.get(k) for k in _SHARED}, "served": False, **s})
    return out


class AckedPublisher:
    """JetStream publishes whose acks are awaited — what the writer needs of nats-py's
    ``publish_async``, for a fraction of its per-message CPU (issue 12): a counter token
    instead of a NUID + ``token_hex`` (a syscall) per message, no ``wait_for`` task around
    a semaphore (the writer bounds what is in flight itself: ``batch`` x ``inflight``), no
    done-callback, and an ack is parsed only when it is not a plain success.

    With ``fast`` (the scorer's :class:`tipsml.messaging.fastsub.FastConnection`, the one
    ``tips.score`` is served on) the publishes are written by hand on it and the acks come
    back to a synchronous callback there: no nats-py header encoding, ``Msg`` object,
    subscription queue or coroutine per message (issue 12, round 3). The ack inbox is the
    nats-py connection's (``NATS_INBOX_PREFIX``: the role's own prefix, which the
    permissions allow). While the fast connection is down a publish raises at once and
    its acks in flight fail with :class:`ConnectionError`: the writer republishes those
    entries through nats-py (``publish``; the stream deduplicates by ``Nats-Msg-Id``).

    ``publish_async`` returns a future: its result is ``True`` once the stream stored the
    message (or knew its ``Nats-Msg-Id``: a duplicate), its exception the
    :class:`nats.js.errors.APIError` of an error ack or ``NoStreamResponseError``.
    ``publish`` (the writer's retries) is nats-py's, unchanged."""

    def __init__(self, nc, js, fast=None):
        self.nc = nc
        self.js = js
        self.fast = fast
        self._prefix: str | None = None
        self._futs: dict[str, asyncio.Future] = {}
        self._seq = 0
        self._sub = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._prefix = self.nc.new_inbox() + "."
        if self.fast is not None:
            self.fast.on_lost.append(self._lost)
            self._sub = await self.fast.subscribe(self._prefix + "*", cb=self._settle)
        else:
            self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._ack)

    async def _ack(self, msg) -> None:
        self._settle(msg)

    def _settle(self, msg) -> None:
        fut = self._futs.pop(msg.subject[len(self._prefix):], None)
        if fut is None or fut.done():
            return
        data = msg.data
        if not data:  # a status message: 503 no responders (no stream for the subject)
            fut.set_exception(js_errors.NoStreamResponseError())
        elif b'"error"' in data:
            try:
                err = orjson.loads(data)["error"]
                exc = js_errors.APIError.from_error(err)  # raises its typed error
            except js_errors.APIError as e:
                exc = e
            except (ValueError, LookupError, AttributeError, TypeError):
                exc = js_errors.APIError(description=data[:200].decode(errors="replace"))
            fut.set_exception(exc if isinstance(exc, BaseException) else
                              js_errors.APIError(description=str(err)[:200]))
        else:
            fut.set_result(True)

    def _lost(self) -> None:
        """The fast connection dropped: its acks in flight will not come."""
        futs, self._futs = self._futs, {}
        for fut in futs.values():
            if not fut.done():
                fut.set_exception(ConnectionError("NATS connection lost before the ack"))

    async def publish_async(self, subject: str, data: bytes, headers: dict | None = None,
                            wait_stall: float | None = None) -> asyncio.Future:
        if self._prefix is None:
            await self._start()
        fast = self.fast
        if fast is not None and not fast.connected:
            raise ConnectionError("NATS fast path down")  # the writer republishes it
        reply, fut = self._new_ack()
        if fast is not None:
            fast.write_pub(subject, data, headers, reply=reply)
        else:
            await self.nc.publish(subject, data, reply=reply, headers=headers)
        return fut

    def _new_ack(self) -> tuple[str, asyncio.Future]:
        """A reply subject for one publish's ack, and the future the ack resolves."""
        self._seq += 1
        token = str(self._seq)
        fut = self._loop.create_future()
        futs = self._futs
        if len(futs) > 20_000:  # futures given up on (cancelled by the writer): forget them
            for k in [k for k, f in futs.items() if f.done()]:
                del futs[k]
        futs[token] = fut
        return self._prefix + token, fut

    def publish_nowait(self, subject: str, data: bytes, msg_id: str) -> asyncio.Future | None:
        """:meth:`publish_async` with a ``Nats-Msg-Id`` header, written at once on the fast
        connection (no coroutine, no header dict: the decision log's usual path); ``None``
        when it cannot be (not started, no fast connection: use publish_async)."""
        fast = self.fast
        if fast is None or self._prefix is None or not fast.connected:
            return None
        reply, fut = self._new_ack()
        fast.write_pub(subject, data, b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % msg_id.encode(),
                       reply=reply)
        return fut

    async def publish(self, subject: str, data: bytes, headers: dict | None = None,
                      timeout: float | None = None):
        return await self.js.publish(subject, data, headers=headers, timeout=timeout)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection already gone
                pass


class DecisionLogWriter:
    def __init__(self, store, js, *, maxsize: int = 20000, batch: int = 256,
                 high_water: int = 2000, backpressure_max_s: float = 1.0,
                 lag_warn_s: float = 2.0, inflight: int = 4, linger_s: float = 0.01,
                 metrics=None):
        self.store = store
        self.linger_s = max(0.0, linger_s)
        self.js = js
        self.maxsize = maxsize
        self.batch = batch
        self.high_water = min(high_water, maxsize)
        self.backpressure_max_s = backpressure_max_s
        self.lag_warn_s = lag_warn_s
        self.inflight = max(1, inflight)
        self.m = metrics
        self.q: collections.deque = collections.deque()
        self._wake = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._idle = asyncio.Event()  # nothing queued and nothing in flight
        self._idle.set()
        self._healthy = True  # the last batch was written: waiting for it makes sense
        self._stopping = False
        self._last_warn = 0.0
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._unfinished = 0  # decisions taken from the queue, not yet written
        self.written = 0
        self.lost = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    @property
    def pending(self) -> int:
        return len(self.q)

    @property
    def behind(self) -> bool:
        """Whether :meth:`submit` would wait now (back-pressure): the reply path must then
        await it instead of calling :meth:`submit_nowait`."""
        return len(self.q) >= self.high_water and self._healthy and not self._stopping

    async def submit(self, record: dict | None, entries: list[dict]) -> bool:
        """Queue one decision; waits (back-pressure) while the writer is behind."""
        if self.behind:
            if self.m:
                self.m.backpressure.inc()
            try:
                await asyncio.wait_for(self._caught_up.wait(), self.backpressure_max_s)
            except TimeoutError:
                pass
        return self.submit_nowait(record, entries)

    def submit_nowait(self, record: dict | None, entries: list[dict]) -> bool:
        """:meth:`submit` without the back-pressure wait (the caller checked :attr:`behind`);
        ``False`` when the queue is full and the decision is dropped (counted)."""
        if len(self.q) >= self.maxsize:
            self.lost += 1
            if self.m:
                self.m.dropped.inc()
            self._warn(f"decision log queue full ({self.maxsize}): decision dropped")
            return False
        self.q.append((time.monotonic(), record, entries))
        if len(self.q) >= self.high_water:
            self._caught_up.clear()
        self._idle.clear()
        self._wake.set()
        return True

    async def _run(self) -> None:
        # up to `inflight` batches out at once: a slow ack or pipeline (a busy nats-server
        # or Redis) does not hold the batches behind it
        sem = asyncio.Semaphore(self.inflight)
        running = self._running
        while True:
            if not self.q:
                if not running:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.linger_s and len(self.q) < self.batch and not self._stopping:
                wait = self.q[0][0] + self.linger_s - time.monotonic()
                if wait > 0:  # let the next few decisions join this batch
                    await asyncio.sleep(wait)
            await sem.acquire()
            if not self.q:
                sem.release()
                continue
            n = min(self.batch, len(self.q))
            items = [self.q.popleft() for _ in range(n)]
            if len(self.q) < self.high_water // 2:
                self._caught_up.set()
            self._unfinished += n
            t = asyncio.create_task(self._batch(items, sem))
            running.add(t)
            t.add_done_callback(lambda t: (running.discard(t), self._check_idle(running)))

    def _check_idle(self, running) -> None:
        if not self.q and not running:
            self._idle.set()

    async def _batch(self, items, sem: asyncio.Semaphore) -> None:
        # one task per batch: the publishes are queued first (they leave with the
        # connection's next flush), the Redis pipeline goes out meanwhile, then the acks
        # (most arrived while the records were written) are collected
        try:
            entries = [e for _, _, es in items for e in es]
            futs, failed = await self._publish_start(entries)
            await self._write_records(items)
            await self._publish_finish(futs, failed)
            self.written += len(items)
            self._report(items[0][0])
        finally:
            self._unfinished -= len(items)
            sem.release()

    def _report(self, oldest_t: float) -> None:
        lag = time.monotonic() - oldest_t
        if self.m:
            self.m.queue.set(len(self.q))
            self.m.lag.set(lag if self.q else 0.0)
        if lag > self.lag_warn_s:
            self._warn(f"decision log behind: oldest decision written {lag:.1f}s after its "
                       f"reply, {len(self.q)} queued")

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warn >= 10.0:
            self._last_warn = now
            log.warning(text)

    async def _write_records(self, items) -> None:
        records = [r for _, r, _ in items if r is not None]
        if not records:
            return
        delay = 0.05
        while True:
            try:
                await self.store.record_decisions(records)
                self._healthy = True
                return
            except Exception as e:  # noqa: BLE001 - kept and retried until Redis takes them
                self._healthy = False
                if self.m:
                    self.m.errors.labels("redis").inc(len(records))
                self._warn(f"decision records not written yet ({len(records)}): {e!r}; retrying")
                await asyncio.sleep(delay)  # at shutdown, drain()'s deadline ends this
                delay = min(delay * 2, 1.0)

    async def _publish_start(self, entries) -> tuple[list, list]:
        """Queue every entry's publish; (entry, ack future) pairs and the failed entries."""
        futs, failed = [], []
        nowait = getattr(self.js, "publish_nowait", None)
        for i, e in enumerate(entries):
            if i and i % 64 == 0:
                await asyncio.sleep(0)  # let requests in: this loop must not hold the loop
            try:
                subject, data = S.decisions_subject(e["policy"]), self._encode(e)
                fut = nowait(subject, data, self._msg_id(e)) if nowait is not None else None
                if fut is None:
                    fut = await self.js.publish_async(subject, data, headers=self._headers(e),
                                                      wait_stall=2.0)
                futs.append((e, fut))
            except Exception:  # noqa: BLE001 - republished below
                failed.append(e)
        return futs, failed

    async def _publish_finish(self, futs, failed) -> None:
        """Await the acks (5 s at most); what failed or did not come is republished."""
        if futs and not all(f.done() for _, f in futs):
            await asyncio.wait([f for _, f in futs], timeout=5.0)
            for e, f in futs:
                if not f.done():
                    f.cancel()
                    failed.append(e)
                elif f.cancelled() or f.exception() is not None:
                    failed.append(e)
        bad = 0
        for e in failed:  # a republish is deduplicated by its Nats-Msg-Id
            try:
                await self._publish(e)
            except Exception:  # noqa: BLE001
                bad += 1
        if bad:
            if self.m:
                self.m.errors.labels("jetstream").inc(bad)
            log.warning("%d DECISIONS entries not published after retries", bad)

    @staticmethod
    def _encode(e: dict) -> bytes:
        return orjson.dumps(e)

    @staticmethod
    def _msg_id(e: dict) -> str:
        """The entry's Nats-Msg-Id: a republish of it is deduplicated by the stream."""
        return f"{e['decision_id']}:{e['policy']}"

    @classmethod
    def _headers(cls, e: dict) -> dict:
        return {"Nats-Msg-Id": cls._msg_id(e)}

    async def _publish(self, e: dict) -> None:
        data = self._encode(e)
        for attempt in range(5):
            try:
                await self.js.publish(S.decisions_subject(e["policy"]), data,
                                      headers=self._headers(e), timeout=2.0)
                return
            except Exception:  # noqa: BLE001
                if attempt == 4 or self._stopping:
                    raise
                await asyncio.sleep(0.1 * 2 ** attempt)

    async def drain(self, timeout: float = 5.0) -> None:
        """Write what is queued, within ``timeout``; what is left is counted and logged."""
        self._stopping = True
        self._caught_up.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            left = len(self.q) + self._unfinished
            self.lost += left
            log.error("decision log not fully drained at shutdown: %d decisions not written",
                      left)
        for t in [*self._running, *([self._task] if self._task else [])]:
            t.cancel()
        for t in [*self._running, *([self._task] if self._task else [])]:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - counted above
                pass

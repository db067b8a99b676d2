"""Background writer of decisions: Redis decision records + the JetStream DECISIONS log.

The scorer replies first and enqueues here, so neither the Redis write nor the
JetStream publish-ack adds to the reply latency. Batches are pipelined (Redis) and
published concurrently (JetStream, ``Nats-Msg-Id`` = ``<decision_id>:<policy>`` so a
retried publish is deduplicated by the stream). A bounded queue protects memory;
what cannot be queued is counted, never blocks a reply.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from . import subjects as S

log = logging.getLogger(__name__)


class DecisionLogWriter:
    def __init__(self, store, js, *, maxsize: int = 20000, batch: int = 64, metrics=None):
        self.store = store
        self.js = js
        self.q: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self.batch = batch
        self.m = metrics
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    def submit(self, record: dict | None, entries: list[dict]) -> bool:
        try:
            self.q.put_nowait((record, entries))
            return True
        except asyncio.QueueFull:
            if self.m:
                self.m.dropped.inc()
            return False

    async def _run(self) -> None:
        while True:
            items = [await self.q.get()]
            while len(items) < self.batch and not self.q.empty():
                items.append(self.q.get_nowait())
            await self._write(items)
            for _ in items:
                self.q.task_done()
            if self.m:
                self.m.queue.set(self.q.qsize())

    async def _write(self, items) -> None:
        records = [r for r, _ in items if r is not None]
        for attempt in range(3):
            try:
                if records:
                    await self.store.record_decisions(records)
                break
            except Exception as e:  # noqa: BLE001 - retried, then counted
                if attempt == 2:
                    log.warning("decision records not written (%d): %r", len(records), e)
                    if self.m:
                        self.m.errors.labels("redis").inc(len(records))
                await asyncio.sleep(0.05 * (attempt + 1))
        entries = [e for _, es in items for e in es]
        # pipelined publishes: all sent at once, acks awaited together (one RTT per batch)
        futs, failed = [], []
        for i, e in enumerate(entries):
            if i and i % 16 == 0:
                await asyncio.sleep(0)  # let requests in: this loop must not hold the loop
            try:
                futs.append((e, await self.js.publish_async(
                    S.decisions_subject(e["policy"]), self._encode(e),
                    headers={"Nats-Msg-Id": f"{e['decision_id']}:{e['policy']}"},
                    wait_stall=2.0)))
            except Exception:  # noqa: BLE001 - retried below
                failed.append(e)
        if futs:
            await asyncio.wait([f for _, f in futs], timeout=5.0)
            for e, f in futs:
                if not f.done() or f.cancelled() or f.exception() is not None:
                    if not f.done():
                        f.cancel()
                    failed.append(e)
        bad = 0
        for e in failed:  # a retried publish is deduplicated by its Nats-Msg-Id
            try:
                await self._publish(e)
            except Exception:  # noqa: BLE001
                bad += 1
        if bad and self.m:
            self.m.errors.labels("jetstream").inc(bad)

    @staticmethod
    def _encode(e: dict) -> bytes:
        return orjson.dumps(e)

    async def _publish(self, e: dict) -> None:
        data = self._encode(e)
        hdr = {"Nats-Msg-Id": f"{e['decision_id']}:{e['policy']}"}
        for attempt in range(3):
            try:
                await self.js.publish(S.decisions_subject(e["policy"]), data, headers=hdr,
                                      timeout=2.0)
                return
            except Exception:  # noqa: BLE001
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))

    async def drain(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.q.join(), timeout)
        except asyncio.TimeoutError:
            log.warning("decision log not fully drained: %d left", self.q.qsize())
        if self._task:
            self._task.cancel()

"""Subject → shared-library call (bench_worker.service). Every message ends acked,
nak'ed with a delay, or terminated; every request ends in exactly one reply."""

from __future__ import annotations

import logging
import time

from tipsml.natsutil import reply_is_inbox

log = logging.getLogger("bench_worker")


class Handlers:
    def __init__(self, service, metrics):
        self.svc = service
        self.m = metrics

    async def job(self, msg) -> None:
        t0 = time.perf_counter()
        try:
            await self.svc.handle_job(msg)
        except Exception:
            log.exception("bench.run handler crashed")
            await _nak(msg, 5.0)
        self.m.latency.labels("bench.run").observe(time.perf_counter() - t0)

    async def cell(self, msg) -> None:
        t0 = time.perf_counter()
        try:
            await self.svc.handle_cell(msg)
        except Exception:
            log.exception("bench.cell handler crashed")
            await _nak(msg, 10.0)
        self.m.latency.labels("bench.cell").observe(time.perf_counter() - t0)

    async def _request(self, msg, subject: str, fn) -> str:
        if not reply_is_inbox(msg.reply):  # a forged reply subject: never act, never publish
            self.m.refused.labels(subject, "refused_reply").inc()
            log.warning("refused %s whose reply subject is not an inbox: %r", subject,
                        (msg.reply or "")[:80])
            return "refused_reply"
        t0 = time.perf_counter()
        code = await fn(msg)
        self.m.latency.labels(subject).observe(time.perf_counter() - t0)
        return code  # the outcome, for $SRV.STATS (tipsml.service)

    async def leaderboard(self, msg) -> str:
        return await self._request(msg, "bench.leaderboard", self.svc.handle_leaderboard)

    async def experiments(self, msg) -> str:
        return await self._request(msg, "bench.experiments", self.svc.handle_experiments)

    async def runs(self, msg) -> str:
        return await self._request(msg, "bench.runs", self.svc.handle_runs)


async def _nak(msg, delay: float) -> None:
    try:
        await msg.nak(delay=delay)
    except Exception as e:  # noqa: BLE001 - connection gone: ack_wait redelivers
        log.info("nak failed: %s", e)

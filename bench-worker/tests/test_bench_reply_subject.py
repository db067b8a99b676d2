"""bench.leaderboard refuses a request whose reply subject is not an inbox (issue 19):
the service is not called, nothing is published, the refusal is counted (pure logic:
the handler with a recording service)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from bench_worker.handlers import Handlers
from bench_worker.main import BenchMetrics


class RecordingService:
    def __init__(self):
        self.calls = []

    async def handle_leaderboard(self, msg):
        self.calls.append(msg)


@pytest.mark.parametrize("reply", ["tips.reset", "$JS.API.STREAM.PURGE.BENCH", "", None,
                                   "$JS.ACK.BENCH.bench-jobs.1.1.1.1.1"])
async def test_forged_reply_subject_refused(reply):
    svc, m = RecordingService(), BenchMetrics()
    await Handlers(svc, m).leaderboard(SimpleNamespace(reply=reply, data=b'{"experiment":"x"}'))
    assert svc.calls == []
    assert m.registry.get_sample_value(
        "bench_requests_refused_total",
        {"subject": "bench.leaderboard", "reason": "refused_reply"}) == 1


async def test_inbox_reply_is_served():
    svc, m = RecordingService(), BenchMetrics()
    await Handlers(svc, m).leaderboard(SimpleNamespace(reply="_INBOX_admin.abc", data=b"{}"))
    assert len(svc.calls) == 1

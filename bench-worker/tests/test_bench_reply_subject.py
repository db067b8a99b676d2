"""bench.leaderboard refuses a request whose reply subject is not an inbox (issue 19):
the service is not called, nothing is published, the refusal is counted (pure logic:
the handler's endpoint with a recording service)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench_worker.handlers import Handlers
from bench_worker.main import BenchMetrics
from tipsml import subjects as S


class RecordingService:
    def __init__(self):
        self.calls = []

    async def handle_leaderboard(self, msg):
        self.calls.append(msg)
        return b'{"ok":true}'

    handle_experiments = handle_runs = handle_leaderboard


class Msg(SimpleNamespace):
    async def respond(self, body):
        self.replied = body


def leaderboard(svc, m):
    return dict((spec.subject, ep) for spec, ep in Handlers(svc, m).endpoints())[
        S.BENCH_LEADERBOARD]


@pytest.mark.parametrize("reply", ["tips.reset", "$JS.API.STREAM.PURGE.BENCH", "", None,
                                   "$JS.ACK.BENCH.bench-jobs.1.1.1.1.1"])
async def test_forged_reply_subject_refused(reply):
    svc, m = RecordingService(), BenchMetrics()
    msg = Msg(reply=reply, data=b'{"experiment":"x"}')
    assert await leaderboard(svc, m)(msg) == "refused_reply"
    assert svc.calls == [] and not hasattr(msg, "replied")
    assert m.registry.get_sample_value(
        "bench_requests_refused_total",
        {"subject": "bench.leaderboard", "reason": "refused_reply"}) == 1


async def test_inbox_reply_is_served():
    svc, m = RecordingService(), BenchMetrics()
    msg = Msg(reply="_INBOX_admin.abc", data=b"{}")
    assert await leaderboard(svc, m)(msg) == "ok"
    assert len(svc.calls) == 1 and msg.replied == b'{"ok":true}'
    assert m.registry.get_sample_value(
        "bench_requests_total", {"subject": "bench.leaderboard", "code": "ok"}) == 1

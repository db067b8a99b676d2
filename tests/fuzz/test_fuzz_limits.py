"""The declared limits (tipsml.contract) are enforced on every subject, at the boundary:
at the limit the request is served, one past it gets ``invalid_request`` (or, on JetStream,
is dead-lettered) — and the worker keeps serving."""

from __future__ import annotations

import json

import pytest

from tests.chaoslib import dlq_count
from tipsml.contract import MAX_ARMS, MAX_PAYLOAD_BYTES, MAX_TASKS, MAX_TITLE_LEN

pytestmark = [pytest.mark.system, pytest.mark.slow]

SUBJECTS = ["tips.score", "tips.stats", "tips.reset", "tips.generate", "bench.leaderboard"]


def _padded(base: dict, size: int) -> bytes:
    """``base`` plus an unknown field padding the JSON to exactly ``size`` bytes."""
    body = dict(base, pad="")
    n = size - len(json.dumps(body, separators=(",", ":")).encode())
    assert n >= 0
    body["pad"] = "x" * n
    data = json.dumps(body, separators=(",", ":")).encode()
    assert len(data) == size
    return data


def _ask(fz, subject, data):
    msg = fz.run(fz.nc.request(subject, data, timeout=5))
    return json.loads(msg.data)


def _base(subject):
    return {"experiment": "limits-x"} if subject == "bench.leaderboard" else {"user_id": "lim"}


@pytest.mark.parametrize("subject", SUBJECTS)
def test_payload_size_limit(fuzz, subject):
    if subject == "bench.leaderboard" and "bench" not in fuzz.workers:
        pytest.skip("bench worker not running")
    at = _ask(fuzz, subject, _padded(_base(subject), MAX_PAYLOAD_BYTES))
    over = _ask(fuzz, subject, _padded(_base(subject), MAX_PAYLOAD_BYTES + 1))
    assert at.get("ok") or at["error"]["code"] != "invalid_request", at
    assert not over["ok"] and over["error"]["code"] == "invalid_request", over
    assert all(fuzz.alive().values())


@pytest.mark.parametrize("subject", ["tips.score", "tips.generate"])
@pytest.mark.parametrize("what", ["tasks", "title"])
def test_context_limits(fuzz, subject, what):
    def req(n_tasks, title_len):
        ctx = {"tasks": [{"title": "t" * title_len} for _ in range(n_tasks)]}
        return json.dumps({"user_id": "lim", "context": ctx}).encode()

    if what == "tasks":
        at, over = req(MAX_TASKS, 5), req(MAX_TASKS + 1, 5)
    else:
        at, over = req(1, MAX_TITLE_LEN), req(1, MAX_TITLE_LEN + 1)
    a, o = _ask(fuzz, subject, at), _ask(fuzz, subject, over)
    assert a["ok"], a
    assert not o["ok"] and o["error"]["code"] == "invalid_request", o


def test_arms_limit(fuzz):
    arms = [f"a{i}" for i in range(MAX_ARMS + 1)]
    a = _ask(fuzz, "tips.score", json.dumps({"user_id": "lim", "arms": arms[:-1]}).encode())
    o = _ask(fuzz, "tips.score", json.dumps({"user_id": "lim", "arms": arms}).encode())
    assert a["ok"] and a["arm"] in arms, a
    assert not o["ok"] and o["error"]["code"] == "invalid_request", o
    long_arm = _ask(fuzz, "tips.score", json.dumps({"user_id": "lim", "arms": ["x" * 65]}).encode())
    assert long_arm["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("subject,dlq,base", [
    ("feedback.limits", "dlq.feedback", {"event_id": "lim-e", "decision_id": "lim-d",
                                         "user_id": "lim", "reaction": "completed"}),
    ("signals.limits", "dlq.signals", {"user_id": "lim", "kind": "x"})])
def test_jetstream_payload_limit(fuzz, subject, dlq, base):
    async def go():
        d0 = await dlq_count(fuzz.js, dlq)
        await fuzz.js.publish(subject, _padded(base, MAX_PAYLOAD_BYTES + 1))
        for _ in range(100):
            if await dlq_count(fuzz.js, dlq) > d0:
                return True
            await __import__("asyncio").sleep(0.05)
        return False

    assert fuzz.run(go()), "an oversized message was not dead-lettered"
    assert all(fuzz.alive().values())

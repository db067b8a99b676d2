"""A decision leaves no reference cycles behind (issue 12).

CPython frees an object when its last reference goes, unless it is part of a cycle; cycles
wait for the garbage collector, whose sweep stops the whole process. One self-referring
closure on the read path (``StateStore.load_batch_nowait``) once held every request of its
batch in a cycle: ~55 objects per decision, a generation-0 sweep of ~23,000 of them every
0.4 s at 1,000 req/s, each a 10–25 ms stall of every request in flight — the periodic
p99 stalls of ``bench/stall_trace.py``. Here the in-process scorer serves requests of every
kind (served, fallback-free, each policy, bad profile values, typed errors) with the
collector saving what it finds, and nothing of the workers' own code may be in it."""

from __future__ import annotations

import asyncio
import json

import pytest

from tipsdev.testing import CyclesLeft

pytestmark = pytest.mark.system

def _requests(uid: str) -> list[bytes]:
    out = []
    for i in range(60):
        body = {"user_id": f"{uid}-{i % 12}", "request_id": f"r{i}",
                "context": {"hour_of_day": i % 24, "day_of_week": i % 7,
                            "tasks": [{"id": 1, "title": "write", "priority": i % 5}]},
                "profile_features": {"completion_rate": 0.5 if i % 3 else "bad",
                                     "dismiss_rate": 0.1}}
        if i % 10 == 4:
            body["policy"] = ["linucb", "thompson", "egreedy-v1", "egreedy-v2"][i // 10 % 4]
        if i % 10 == 7:
            body["arms"] = ["a", "b", "c"]
        out.append(json.dumps(body).encode())
    out += [b"{not json", b'{"user_id": 3}', json.dumps({"user_id": uid, "policy": "no"}).encode()]
    return out


async def _send(nc, bodies, concurrency: int) -> list[dict]:
    got = []
    for i in range(0, len(bodies), concurrency):
        replies = await asyncio.gather(*(nc.request("tips.score", b, timeout=5)
                                         for b in bodies[i:i + concurrency]))
        got += [json.loads(r.data) for r in replies]
    return got


async def test_decisions_leave_no_reference_cycles(nc, scorer_service, uid):
    bodies = _requests(uid)
    await _send(nc, bodies, 8)  # warm: users' state, the pooled prior cached, plans built
    await asyncio.sleep(0.1)
    with CyclesLeft() as cycles:
        got = await _send(nc, bodies, 1) + await _send(nc, bodies, 16)
        await asyncio.sleep(0.2)  # the decision log wrote them (its linger is 10 ms)
    assert sum(r["ok"] for r in got) == 2 * (len(bodies) - 3)
    assert not any(r.get("fallback") for r in got if r["ok"])
    assert {r["error"]["code"] for r in got if not r["ok"]} == {"invalid_request",
                                                                "unknown_policy"}
    assert not cycles.found, cycles.found

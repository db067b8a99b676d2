"""Requests served without a task (issue 12): an endpoint with a synchronous handler on the
fast connection answers a burst of concurrent requests from one nats-py connection, each
once, counted in $SRV.STATS like the task path's; a reply that comes later from a callback
holds the service's ``wait_idle`` until it is sent; a request the handler declines is
served by a task. Real nats-server."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from pydantic import BaseModel

from tipsml.messaging.endpoint import Endpoint
from tipsml.messaging.fastsub import FastConnection
from tipsml.messaging.service import start_service

pytestmark = pytest.mark.system


class Req(BaseModel):
    n: int
    later: bool = False


async def _setup(stack, uid, now):
    url = stack.nats_url.split(",")[0]
    nc = await nats.connect(url)
    fc = await FastConnection([url], name="t-now").connect()
    svc = await start_service(nc, name=f"tnow{uid[:8]}", version="0.1.0", description="t",
                              queue_group="q")
    tasks_seen: list[int] = []

    async def handler(req: Req, msg) -> bytes:
        tasks_seen.append(req.n)
        return json.dumps({"ok": True, "n": req.n, "via": "task"}).encode()

    ep = Endpoint(f"now.{uid}", handler, request=Req, now=now)
    await svc.add_request_endpoint("now", f"now.{uid}", ep, subscriber=fc)
    return nc, fc, svc, tasks_seen


async def test_a_burst_is_served_without_a_task_per_request(stack, uid):
    loop = asyncio.get_running_loop()
    pending: list = []

    def now(req: Req, msg, reply) -> bool:
        if req.n % 7 == 3:
            return False  # this one needs an await: the task path serves it
        body = json.dumps({"ok": True, "n": req.n, "via": "now"}).encode()
        if req.later:  # answered from a callback a little later (a Redis reply's)
            pending.append(loop.call_later(0.01, reply, body))
        else:
            reply(body)
        return True

    nc, fc, svc, tasks_seen = await _setup(stack, uid, now)
    try:
        n = 500
        replies = await asyncio.gather(*(
            nc.request(f"now.{uid}", json.dumps({"n": i, "later": i % 2 == 0}).encode(),
                       timeout=10) for i in range(n)))
        got = [json.loads(r.data) for r in replies]
        assert [g["n"] for g in got] == list(range(n))
        assert {g["n"] for g in got if g["via"] == "task"} == {i for i in range(n) if i % 7 == 3}
        assert sorted(tasks_seen) == [i for i in range(n) if i % 7 == 3]
        # invalid payloads get their typed reply on the synchronous path too
        bad = await nc.request(f"now.{uid}", b'{"n": "x"}', timeout=5)
        assert json.loads(bad.data)["error"]["code"] == "invalid_request"
        assert bad.headers["Nats-Service-Error-Code"] == "400"
        stats = svc.stats().endpoints[0]
        assert stats.num_requests == n + 1 and stats.num_errors == 1
        assert svc._untracked == 0 and not svc.tasks
        # a reply still to come holds wait_idle until it is sent
        fut = nc.request(f"now.{uid}", json.dumps({"n": 0, "later": True}).encode(), timeout=5)
        req_task = asyncio.ensure_future(fut)
        for _ in range(200):
            if svc._untracked:
                break
            await asyncio.sleep(0.001)
        assert svc._untracked == 1
        await svc.wait_idle(2.0)
        assert svc._untracked == 0
        assert json.loads((await req_task).data)["via"] == "now"
    finally:
        for h in pending:
            h.cancel()
        await svc.stop()
        await fc.close()
        await nc.close()

"""Fault-suite fixtures: each test gets its own embedded stack (real nats-server with
JetStream file storage + redis-server with AOF) and its own worker subprocesses, so a
killed server or worker never disturbs another test. Worker stderr goes to tmp_path."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tipsdev.launcher import EmbeddedStack
from tipsdev.testing import spawn_worker


class Workers:
    def __init__(self, stack, tmp_path):
        self.stack = stack
        self.tmp = tmp_path
        self.procs = []
        self.n = 0

    def spawn(self, module: str, env: dict | None = None):
        self.n += 1
        full = {**self.stack.env(), **(env or {})}
        w = spawn_worker(module, full, log_path=str(self.tmp / f"{self.n:02d}-{module}.log"))
        self.procs.append(w)
        return w

    def stop_all(self):
        for w in self.procs:
            w.stop()


@pytest.fixture
def own_stack():
    with EmbeddedStack() as st:
        yield st


@pytest.fixture
def workers(own_stack, tmp_path):
    ws = Workers(own_stack, tmp_path)
    yield ws
    ws.stop_all()


@pytest_asyncio.fixture
async def clients(own_stack):
    """(nc, js, redis, store) against the test's own stack; the NATS client reconnects
    forever, like every worker."""
    import nats
    import redis.asyncio as aioredis

    from tipsml.state import StateStore

    nc = await nats.connect(own_stack.nats_url, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2, name="chaos-client")
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RConnErr
    from redis.exceptions import TimeoutError as RTimeout

    r = aioredis.from_url(own_stack.redis_url,  # the test's own reads survive a Redis restart
                          retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 40),
                          retry_on_error=[RConnErr, RTimeout])
    yield nc, nc.jetstream(), r, StateStore(r)
    await nc.close()
    await r.aclose()

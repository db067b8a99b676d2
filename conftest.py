"""Root fixtures: the embedded stack (real nats-server + redis-server on free ports).

Set ``TIPS_TEST_EXTERNAL=1`` to use ``NATS_URL``/``REDIS_URL`` instead (e.g. the
machine's own servers); by default every test session starts its own servers with
the same launcher as ``make run``.
"""

from __future__ import annotations

import os
import uuid

import pytest
import pytest_asyncio

from tipsml.launcher import EmbeddedStack


@pytest.fixture(scope="session")
def stack():
    if os.environ.get("TIPS_TEST_EXTERNAL") == "1":
        class _Ext:
            nats_url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
            redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")

            def env(self):
                return {"NATS_URL": self.nats_url, "REDIS_URL": self.redis_url}
        yield _Ext()
        return
    with EmbeddedStack() as st:
        yield st


@pytest.fixture(scope="session")
def stack_env(stack) -> dict[str, str]:
    return dict(stack.env())


@pytest_asyncio.fixture(scope="session")
async def nc(stack):
    import nats

    conn = await nats.connect(stack.nats_url, name="tests")
    yield conn
    await conn.drain()


@pytest_asyncio.fixture(scope="session")
async def redis_client(stack):
    import redis.asyncio as aioredis

    r = aioredis.from_url(stack.redis_url)
    yield r
    await r.aclose()


@pytest.fixture
def uid() -> str:
    """A fresh id per test so tests never share users, subjects or decisions."""
    return uuid.uuid4().hex[:12]

"""Root fixtures: the embedded stack (real nats-server + redis-server on free ports).

Set ``TIPS_TEST_EXTERNAL=1`` to use ``NATS_URL``/``REDIS_URL`` instead (e.g. the
machine's own servers); by default every test session starts its own servers with
the same launcher as ``make run``.

``pytest --cluster`` (or ``TIPS_TEST_CLUSTER=1``) runs the tests marked ``cluster`` (the
contract and exactly-once set) against a real cluster instead: 3 nats-server nodes in
one JetStream cluster (streams R3) and a Redis Cluster of 3 masters + 3 replicas
(:class:`tipsdev.cluster.ClusterStack`); ``make test-cluster``.
"""

from __future__ import annotations

import os
import uuid

import pytest
import pytest_asyncio

from tipsdev.launcher import EmbeddedStack


def pytest_addoption(parser):
    parser.addoption("--cluster", action="store_true", default=False,
                     help="run the `cluster`-marked tests on a 3-node NATS + 6-node Redis Cluster")


def _cluster_mode(config) -> bool:
    return bool(config.getoption("--cluster")) or os.environ.get("TIPS_TEST_CLUSTER") == "1"


def pytest_collection_modifyitems(config, items):
    if not _cluster_mode(config):
        return
    skip = pytest.mark.skip(reason="not in the cluster set (mark it `cluster`)")
    for item in items:
        if "cluster" not in item.keywords:
            item.add_marker(skip)


def nats_servers(url: str) -> list[str]:
    return [s.strip() for s in url.split(",") if s.strip()]


@pytest.fixture(scope="session")
def stack(request):
    if _cluster_mode(request.config):
        from tipsdev.cluster import ClusterStack

        with ClusterStack() as st:
            old = os.environ.get("STREAM_REPLICAS")
            os.environ["STREAM_REPLICAS"] = "3"  # the in-process services create R3 streams
            yield st
            if old is None:
                os.environ.pop("STREAM_REPLICAS", None)
            else:
                os.environ["STREAM_REPLICAS"] = old
        return
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

    conn = await nats.connect(servers=nats_servers(stack.nats_url), name="tests")
    yield conn
    await conn.drain()


@pytest_asyncio.fixture(scope="session")
async def redis_client(stack):
    from tipsml.state import connect_redis

    r = connect_redis(stack.redis_url)  # a RedisCluster client on the cluster stack
    yield r
    await r.aclose()


@pytest.fixture
def uid() -> str:
    """A fresh id per test so tests never share users, subjects or decisions."""
    return uuid.uuid4().hex[:12]


@pytest_asyncio.fixture(scope="session")
async def scorer_service(stack):
    """The scorer worker, in-process on the session loop, against the embedded stack."""
    import asyncio

    from scorer.main import serve
    from scorer.settings import ScorerSettings

    settings = ScorerSettings(nats_url=stack.nats_url, redis_url=stack.redis_url, metrics_port=-1,
                              redis_timeout_s=0.5)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, ready, stop))
    await asyncio.wait_for(ready.wait(), 30)
    import nats

    from tipsdev.testing import wait_responding

    probe = await nats.connect(servers=nats_servers(stack.nats_url))
    await wait_responding(probe, "tips.stats")
    await probe.close()
    yield settings
    stop.set()
    await asyncio.wait_for(task, 30)


@pytest_asyncio.fixture(scope="session")
async def feedback_service(stack):
    """One feedback consumer, in-process (ack_wait shortened so redelivery tests are quick)."""
    import asyncio

    from feedback_consumer.main import serve
    from feedback_consumer.settings import FeedbackSettings

    settings = FeedbackSettings(nats_url=stack.nats_url, redis_url=stack.redis_url,
                                metrics_port=-1, feedback_ack_wait_s=3.0,
                                feedback_backoff_s=[0.2, 0.5, 1.0], feedback_max_deliver=4,
                                feedback_missing_grace_s=1.0)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, ready, stop))
    await asyncio.wait_for(ready.wait(), 30)
    yield settings
    stop.set()
    await asyncio.wait_for(task, 30)

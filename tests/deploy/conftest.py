"""Fixtures of the deploy tests: the shipped NATS config on a real nats-server.

``secured_stack`` starts the real nats-server with ``deploy/nats/nats-server.conf``
(JetStream, the six users and their permissions; fresh random passwords passed
through the environment exactly as compose does) plus a real redis-server, both
from the shared launcher.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import pytest_asyncio
from tipsml.launcher import EmbeddedStack

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NATS_CONF = DEPLOY / "nats" / "nats-server.conf"
USERS = ("admin", "recommender", "scorer", "generator", "feedback", "bench")


def password_var(user: str) -> str:
    return f"NATS_{user.upper()}_PASSWORD"


@pytest.fixture(scope="session")
def nats_passwords() -> dict[str, str]:
    return {u: secrets.token_urlsafe(18) for u in USERS}


@pytest.fixture(scope="session")
def secured_stack(nats_passwords):
    """nats-server with the shipped config (+ redis-server) on free loopback ports."""
    env = {password_var(u): p for u, p in nats_passwords.items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # nats-server resolves $NATS_*_PASSWORD from its environment
    try:
        with EmbeddedStack(nats_config=str(NATS_CONF)) as st:
            yield st
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def worker_env(secured_stack, nats_passwords):
    """Environment of a worker process connecting as NATS user ``user``."""

    def env(user: str, **extra: str) -> dict[str, str]:
        out = dict(secured_stack.env())
        out.update(NATS_USER=user, NATS_PASSWORD=nats_passwords[user])
        out.update(extra)
        return out

    return env


def tls_settings(stack) -> dict:
    """Worker settings that make it trust the test CA (none while the config has no TLS)."""
    return {}


@pytest_asyncio.fixture(scope="session")
async def provisioned(secured_stack, nats_passwords):
    """Streams and durables created by the admin user, as the provisioning step does."""
    import nats
    from tipsml import subjects as S
    from tipsml.natsutil import ensure_consumer, ensure_streams

    nc = await nats.connect(secured_stack.nats_url, user="admin",
                            password=nats_passwords["admin"])
    js = nc.jetstream(timeout=5)
    await ensure_streams(js)
    for spec in S.CONSUMERS:
        await ensure_consumer(js, spec)
    await nc.close()
    return True


@pytest_asyncio.fixture(scope="session")
async def connect_as(secured_stack, nats_passwords):
    """``await connect_as(user)`` → a nats-py client that records the server's
    permission errors in ``nc.perm_errors`` (the connection stays up after one)."""
    import nats

    conns = []

    async def _connect(user: str, password: str | None = None):
        errors: list[str] = []

        async def on_error(e):
            errors.append(str(e))

        nc = await nats.connect(secured_stack.nats_url, user=user,
                                password=nats_passwords[user] if password is None else password,
                                name=f"deploy-test-{user}", error_cb=on_error,
                                allow_reconnect=False, connect_timeout=2)
        nc.perm_errors = errors
        conns.append(nc)
        return nc

    yield _connect
    for nc in conns:
        if not nc.is_closed:
            await nc.close()


@pytest_asyncio.fixture(scope="session")
async def scorer_worker(secured_stack, nats_passwords, provisioned):
    """The real scorer worker, in-process, connected as NATS user ``scorer`` with the
    production settings (no stream administration); yields its metrics port."""
    import asyncio

    from scorer.main import serve
    from scorer.settings import ScorerSettings
    from tipsml.launcher import free_port

    port = free_port()
    settings = ScorerSettings(nats_url=secured_stack.nats_url, redis_url=secured_stack.redis_url,
                              nats_user="scorer", nats_password=nats_passwords["scorer"],
                              metrics_port=port, redis_timeout_s=0.5, provision=False,
                              **tls_settings(secured_stack))
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, ready, stop))
    await asyncio.wait_for(ready.wait(), 30)
    yield port
    stop.set()
    await asyncio.wait_for(task, 30)

"""Fixtures of the deploy tests: the shipped NATS config on a real nats-server.

``secured_stack`` starts the real nats-server with ``deploy/nats/nats-server.conf``
(JetStream, the six users and their permissions, TLS on the client port with
certificates made by ``deploy/certs/make-certs.sh``; fresh random passwords and the
certificate paths passed through the environment exactly as compose does) plus a real
redis-server, both from the shared launcher. Every client connects as compose's do:
its own user, TLS verified against the test CA, reply inboxes ``_INBOX_<user>``.
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

from tipsdev.launcher import EmbeddedStack
from tipsml.messaging.connection import inbox_prefix_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NATS_CONF = DEPLOY / "nats" / "nats-server.conf"
USERS = ("admin", "recommender", "scorer", "generator", "feedback", "bench")


def password_var(user: str) -> str:
    return f"NATS_{user.upper()}_PASSWORD"


@pytest.fixture(scope="session")
def nats_passwords() -> dict[str, str]:
    # some start with a digit or "-": nats-server parses an unquoted $VAR value as a
    # number then, which check-secrets.sh -q (compose's entrypoint) prevents
    pw = {u: secrets.token_urlsafe(18) for u in USERS}
    pw["recommender"] = "7" + pw["recommender"][1:]
    pw["scorer"] = "-" + pw["scorer"][1:]
    return pw


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    """CA and server certificate made by the documented script (deploy/certs/make-certs.sh)."""
    out = tmp_path_factory.mktemp("nats-tls")
    subprocess.run(["sh", str(DEPLOY / "certs" / "make-certs.sh"), str(out)], check=True,
                   capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="session")
def secured_stack(nats_passwords, tls_dir):
    """nats-server with the shipped config (+ redis-server) on free loopback ports."""
    env = {password_var(u): p for u, p in nats_passwords.items()}
    env.update(NATS_TLS_CERT=str(tls_dir / "server.pem"), NATS_TLS_KEY=str(tls_dir / "server.key"))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # nats-server resolves $NATS_*_PASSWORD from its environment
    try:
        # started as compose starts it: through the secret check, passwords quoted
        wrapper = ["sh", str(DEPLOY / "check-secrets.sh"), "-q",
                   *(password_var(u) for u in USERS), "--"]
        with EmbeddedStack(nats_config=str(NATS_CONF), nats_wrapper=wrapper) as st:
            st.tls_ca = str(tls_dir / "ca.pem")
            yield st
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def worker_env(secured_stack, nats_passwords, provisioned):
    """Environment of a worker process connecting as NATS user ``user`` (TLS, its own
    reply inboxes, no stream administration: the streams and durables are provisioned)."""

    def env(user: str, **extra: str) -> dict[str, str]:
        out = dict(secured_stack.env())
        out.update(NATS_USER=user, NATS_PASSWORD=nats_passwords[user],
                   NATS_TLS_CA=secured_stack.tls_ca, NATS_PROVISION="false")
        out.update(extra)
        return out

    return env


def tls_settings(stack) -> dict:
    """Worker settings that make it trust the test CA."""
    return {"nats_tls_ca": stack.tls_ca}


@pytest.fixture(scope="session")
def provisioned(secured_stack, nats_passwords) -> dict:
    """Streams and durables created by the provisioning command, run as compose runs it
    (admin user, TLS, TIPS_ENV=production); returns its report."""
    import json
    import sys

    env = dict(os.environ, NATS_URL=secured_stack.nats_url, NATS_USER="admin",
               NATS_PASSWORD=nats_passwords["admin"], NATS_TLS_CA=secured_stack.tls_ca,
               TIPS_ENV="production")
    r = subprocess.run([sys.executable, "-m", "tipsml.provision", "--wait", "20"], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["provisioned"]


@pytest_asyncio.fixture(scope="session")
async def connect_as(secured_stack, nats_passwords):
    """``await connect_as(user)`` → a nats-py client that records the server's
    permission errors in ``nc.perm_errors`` (the connection stays up after one)."""
    import nats

    conns = []

    async def _connect(user: str, password: str | None = None, inbox_prefix: str | None = None):
        errors: list[str] = []

        async def on_error(e):
            errors.append(str(e))

        nc = await nats.connect(secured_stack.nats_url, user=user,
                                password=nats_passwords[user] if password is None else password,
                                name=f"deploy-test-{user}", error_cb=on_error,
                                allow_reconnect=False, connect_timeout=2,
                                tls=ssl.create_default_context(cafile=secured_stack.tls_ca),
                                inbox_prefix=inbox_prefix or inbox_prefix_for(user))
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
    from tipsdev.launcher import free_port

    port = free_port()
    settings = ScorerSettings(nats_url=secured_stack.nats_url, redis_url=secured_stack.redis_url,
                              nats_user="scorer", nats_password=nats_passwords["scorer"],
                              metrics_port=port, redis_timeout_s=0.5, nats_provision=False,
                              **tls_settings(secured_stack))
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, ready, stop))
    await asyncio.wait_for(ready.wait(), 30)
    yield port
    stop.set()
    await asyncio.wait_for(task, 30)

"""Provisioning: create or update every JetStream stream and durable consumer, as admin.

In production the workers' NATS users may not administer JetStream (deploy/nats/
nats-server.conf gives them INFO and their own durables' pull/ack only), so this step
runs first, with the ``admin`` user: compose runs it as the one-shot service
``provision`` before any worker starts, ``make up`` runs it on the embedded stack.

    NATS_URL=tls://nats:4222 NATS_USER=admin NATS_PASSWORD=… NATS_TLS_CA=ca.pem \\
        python -m tipsml.provision [--wait 60]

Idempotent: a stream or durable that exists is updated to the spec in
:mod:`tipsml.subjects` (the one place streams and durables are declared). Durable
settings a worker overrides through its environment (``FEEDBACK_ACK_WAIT_S``,
``BENCH_CELL_ACK_WAIT_S``, …) apply where the worker provisions itself (dev); in
production give them here with the same variables (the provision service reads them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time

from . import subjects as S
from .messaging.connection import connect, ensure_consumer, ensure_streams
from .settings import BaseServiceSettings, secret_problem


class ProvisionSettings(BaseServiceSettings):
    """Only the NATS connection matters here (no Redis, no admin token)."""

    def production_problems(self) -> list[str]:
        out = [p for p in (secret_problem("NATS_PASSWORD", self.nats_password),) if p]
        if not self.nats_user:
            out.append("NATS_USER is unset")
        if not (self.nats_tls_ca or self.nats_url.startswith("tls://")):
            out.append("NATS_TLS_CA is unset (TLS to NATS is required)")
        return out


def _env_float(name: str, default: float) -> float:
    v = os.environ.get(name)
    return float(v) if v else default


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v else default


def consumer_specs() -> list[S.ConsumerSpec]:
    """The declared durables, with the overrides the workers read from the same variables."""
    out = []
    for spec in S.CONSUMERS:
        if spec is S.FEEDBACK_CONSUMER:
            spec = dataclasses.replace(
                spec, ack_wait_s=_env_float("FEEDBACK_ACK_WAIT_S", spec.ack_wait_s),
                max_deliver=_env_int("FEEDBACK_MAX_DELIVER", spec.max_deliver),
                max_ack_pending=_env_int("FEEDBACK_MAX_ACK_PENDING", spec.max_ack_pending))
            spec = dataclasses.replace(
                spec, backoff_s=tuple(spec.backoff_s)[: max(spec.max_deliver - 1, 0)])
        elif spec is S.BENCH_CELLS_CONSUMER:
            spec = dataclasses.replace(
                spec, ack_wait_s=_env_float("BENCH_CELL_ACK_WAIT_S", spec.ack_wait_s),
                max_deliver=_env_int("BENCH_CELL_MAX_DELIVER", spec.max_deliver))
        out.append(spec)
    return out


async def provision(js) -> dict:
    """Create/update every stream, then every durable; returns what exists afterwards."""
    await ensure_streams(js)
    specs = consumer_specs()
    for spec in specs:
        await ensure_consumer(js, spec)
    return {"streams": sorted(S.STREAMS), "consumers": [f"{c.stream}/{c.durable}" for c in specs]}


async def _main(wait_s: float) -> int:
    settings = ProvisionSettings()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            nc = await connect(settings, "provision", allow_reconnect=False,
                               max_reconnect_attempts=0)
            break
        except Exception as e:  # noqa: BLE001 - NATS not up yet: retried until the deadline
            if time.monotonic() > deadline:
                print(f"provision: cannot connect to {settings.nats_url}: {e!r}", file=sys.stderr)
                return 1
            await asyncio.sleep(1.0)
    try:
        done = await provision(nc.jetstream(timeout=10))
    except Exception as e:  # noqa: BLE001 - reported, non-zero exit: the workers do not start
        print(f"provision failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    print(json.dumps({"provisioned": done}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tipsml.provision", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wait", type=float, default=60.0,
                    help="seconds to keep trying to connect (default 60)")
    args = ap.parse_args(argv)
    from pydantic import ValidationError

    try:
        return asyncio.run(_main(args.wait))
    except ValidationError as e:
        print(f"provision: {_first_message(e)}", file=sys.stderr)
        return 2


def _first_message(e) -> str:
    errs = e.errors()
    return errs[0]["msg"] if errs else str(e)


if __name__ == "__main__":
    raise SystemExit(main())

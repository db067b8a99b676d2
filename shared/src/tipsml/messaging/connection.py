"""NATS plumbing: connection, idempotent stream/consumer set-up, JSON request-reply,
and the reply-subject check every request handler makes first."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from .. import subjects as S
from ..contract import ErrorCode, error_reply

log = logging.getLogger(__name__)

DEFAULT_INBOX_PREFIX = "_INBOX"
# "_INBOX.<token>..." (a client without a role) or "_INBOX_<role>.<token>..."
_INBOX_RE = re.compile(r"_INBOX(?:_[A-Za-z0-9-]+)?\.[^.\s*>]")


def inbox_prefix_for(user: str | None) -> str:
    """The reply-inbox prefix of NATS user ``user``: ``_INBOX_<user>``. The shipped server
    config lets each user subscribe to its own prefix only, so nobody reads another role's
    replies; a client without a user (the embedded dev stack) keeps ``_INBOX``."""
    return f"{DEFAULT_INBOX_PREFIX}_{user}" if user else DEFAULT_INBOX_PREFIX


def reply_is_inbox(reply: str | None) -> bool:
    """Whether a request's reply subject is a requester's inbox (``_INBOX.…`` or
    ``_INBOX_<role>.…``). A worker acts on a request only then: any other reply subject
    (``tips.reset``, ``$JS.API.…``, a JetStream delivery's ``$JS.ACK.…``, none at all) is
    somebody trying to make the worker publish or act with its rights."""
    return bool(reply) and _INBOX_RE.match(reply) is not None


class ProvisioningError(RuntimeError):
    """A stream or durable this worker needs does not exist (run ``python -m tipsml.provision``)."""


async def connect(settings, name: str, **kw) -> NATS:
    """Connect with reconnects forever (workers survive a NATS restart by themselves)."""
    opts = dict(
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        allow_reconnect=True,
        pending_size=64 * 1024 * 1024,
    )
    opts.update(settings.nats_connect_kwargs())
    opts.update(kw)
    return await nats.connect(**opts)


def stream_replicas() -> int:
    """``STREAM_REPLICAS``: 1 on one nats-server (embedded), 3 on a 3-node JetStream
    cluster (a stream then survives the loss of one node; the launcher's ``--cluster``
    stack and the compose cluster variant set it)."""
    return max(1, int(os.environ.get("STREAM_REPLICAS", "1") or 1))


def stream_config(spec: S.StreamSpec) -> StreamConfig:
    return StreamConfig(
        num_replicas=stream_replicas(),
        name=spec.name,
        subjects=list(spec.subjects),
        retention={"limits": RetentionPolicy.LIMITS, "workqueue": RetentionPolicy.WORK_QUEUE,
                   "interest": RetentionPolicy.INTEREST}[spec.retention],
        storage=StorageType.FILE if spec.storage == "file" else StorageType.MEMORY,
        max_age=float(spec.max_age_s),
        duplicate_window=float(spec.duplicate_window_s),
        max_bytes=spec.max_bytes,
        compression=StoreCompression.S2 if spec.compression == "s2" else StoreCompression.NONE,
    )


async def ensure_streams(js, names: list[str] | None = None) -> None:
    """Create (or update to the declared config) every stream; safe to call at every start."""
    for spec in S.STREAMS.values():
        if names and spec.name not in names:
            continue
        cfg = stream_config(spec)
        try:
            await js.add_stream(config=cfg)
        except BadRequestError:
            await js.update_stream(config=cfg)


def consumer_config(spec: S.ConsumerSpec) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        backoff=list(spec.backoff_s) or None,
        max_ack_pending=spec.max_ack_pending,
        filter_subject=spec.filter_subject,
    )


async def ensure_consumer(js, spec: S.ConsumerSpec):
    """Create the durable, or update it explicitly when its config drifted."""
    cfg = consumer_config(spec)
    return await js.add_consumer(spec.stream, config=cfg)


async def prepare_jetstream(js, settings, streams: list[str],
                            consumers: list[S.ConsumerSpec] = (), *,
                            provision_all_streams: bool = False) -> None:
    """At start: with ``settings.provision`` (dev) create/update ``streams`` (every
    declared stream with ``provision_all_streams``) and ``consumers``; without it
    (production: the worker's NATS user may not administer JetStream) only check, with
    INFO requests, that each exists, and warn when a durable's config differs from the
    worker's spec. Missing ones raise :class:`ProvisioningError`."""
    if settings.provision:
        await ensure_streams(js, None if provision_all_streams else streams)
        for spec in consumers:
            await ensure_consumer(js, spec)
        return
    for name in streams:
        await check_stream(js, name)
    for spec in consumers:
        await check_consumer(js, spec)


async def check_stream(js, name: str):
    from nats.js.errors import NotFoundError

    try:
        return await js.stream_info(name)
    except NotFoundError:
        raise ProvisioningError(f"stream {name} does not exist: run `python -m tipsml.provision` "
                                "with the admin user first") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ProvisioningError(f"no answer to the INFO of stream {name} (is this user allowed "
                                "$JS.API.STREAM.INFO? has `python -m tipsml.provision` run?)"
                                ) from None


async def check_consumer(js, spec: S.ConsumerSpec):
    from nats.js.errors import NotFoundError

    try:
        info = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        raise ProvisioningError(f"durable {spec.stream}/{spec.durable} does not exist: run "
                                "`python -m tipsml.provision` with the admin user first") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ProvisioningError(f"no answer to the INFO of durable {spec.stream}/{spec.durable} "
                                "(is this user allowed its $JS.API.CONSUMER.INFO? has "
                                "`python -m tipsml.provision` run?)") from None
    want, have = consumer_config(spec), info.config
    drift = [f for f in ("filter_subject", "ack_wait", "max_deliver", "max_ack_pending", "backoff")
             if _norm(getattr(want, f)) != _norm(getattr(have, f))]
    if drift:
        log.warning("durable %s/%s differs from this worker's spec in %s (server: %s); "
                    "re-run `python -m tipsml.provision` to apply the spec", spec.stream,
                    spec.durable, ", ".join(drift), {f: getattr(have, f) for f in drift})
    return info


def _norm(v):
    if isinstance(v, (list, tuple)):
        return tuple(round(float(x), 3) for x in v) or None
    if isinstance(v, float):
        return round(v, 3)
    return v


async def ensure_or_check_consumer(js, spec: S.ConsumerSpec, settings):
    """``ensure_consumer`` when this worker provisions, else ``check_consumer``."""
    if settings.provision:
        return await ensure_consumer(js, spec)
    return await check_consumer(js, spec)


async def request_json(nc: NATS, subject: str, payload: Any, timeout: float = 2.0,
                       headers: dict | None = None) -> dict:
    """Request-reply with JSON both ways; NATS failures become typed error dicts."""
    data = payload if isinstance(payload, (bytes, bytearray)) else json.dumps(payload).encode()
    try:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        return error_reply(ErrorCode.unavailable, f"no responders on {subject}")
    except (TimeoutError, nats.errors.TimeoutError):
        return error_reply(ErrorCode.timeout, f"{subject} did not answer within {timeout}s")
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError, nats.errors.OutboundBufferLimitError) as e:
        return error_reply(ErrorCode.unavailable, f"NATS connection not usable: {type(e).__name__}")
    return json.loads(msg.data)


async def publish_dead_letter(js, subject: str, data: bytes, reason: str, *,
                              origin_subject: str = "", deliveries: int = 0,
                              msg_id: str | None = None) -> None:
    headers = {"Tips-Dlq-Reason": reason[:500], "Tips-Origin-Subject": origin_subject,
               "Tips-Deliveries": str(deliveries)}
    if msg_id:
        headers["Nats-Msg-Id"] = f"dlq:{msg_id}"
    await js.publish(subject, data, headers=headers, timeout=5.0)

"""NATS helpers: connection, idempotent stream/consumer set-up, JSON request-reply."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from . import subjects as S
from .contract import ErrorCode, error_reply

log = logging.getLogger(__name__)


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

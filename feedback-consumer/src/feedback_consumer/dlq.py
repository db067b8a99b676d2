"""Dead letters: list them, and replay them to their origin subject once the cause is fixed.

    python -m feedback_consumer.dlq list   [--subject dlq.feedback] [--limit 20]
    python -m feedback_consumer.dlq replay [--subject dlq.feedback] [--limit N]

A replay republishes the original payload to ``Tips-Origin-Subject`` with the original
``Nats-Msg-Id`` stripped of its ``dlq:`` prefix, then deletes the dead letter. Feedback is
idempotent per ``event_id``, so replaying one twice cannot double a reward.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from tipsml.messaging.connection import connect, ensure_streams
from tipsml.settings import BaseServiceSettings


async def _messages(js, subject: str, limit: int):
    sub = await js.pull_subscribe(subject, durable=None, stream="DEADLETTER")
    out = []
    while len(out) < limit:
        try:
            batch = await sub.fetch(min(100, limit - len(out)), timeout=1.0)
        except Exception:  # noqa: BLE001 - no more messages
            break
        out.extend(batch)
    await sub.unsubscribe()
    return out


async def run(cmd: str, subject: str, limit: int) -> int:
    settings = BaseServiceSettings()
    nc = await connect(settings, "dlq-cli")
    js = nc.jetstream()
    await ensure_streams(js, ["DEADLETTER"])
    msgs = await _messages(js, subject, limit)
    done = 0
    for m in msgs:
        h = m.headers or {}
        if cmd == "list":
            print(json.dumps({"seq": m.metadata.sequence.stream, "reason": h.get("Tips-Dlq-Reason"),
                              "origin": h.get("Tips-Origin-Subject"),
                              "deliveries": h.get("Tips-Deliveries"),
                              "data": m.data[:300].decode(errors="replace")}))
        else:
            origin = h.get("Tips-Origin-Subject")
            if not origin:
                continue
            hdr = {}
            mid = h.get("Nats-Msg-Id", "")
            if mid.startswith("dlq:"):
                hdr["Nats-Msg-Id"] = "replay:" + mid[4:]
            await js.publish(origin, m.data, headers=hdr or None)
            await js.delete_msg("DEADLETTER", m.metadata.sequence.stream)
            done += 1
        await m.ack()
    if cmd == "replay":
        print(f"replayed {done} dead letters from {subject}")
    await nc.close()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m feedback_consumer.dlq")
    ap.add_argument("cmd", choices=["list", "replay"])
    ap.add_argument("--subject", default="dlq.>")
    ap.add_argument("--limit", type=int, default=1000)
    a = ap.parse_args(argv)
    return asyncio.run(run(a.cmd, a.subject, a.limit))


if __name__ == "__main__":
    raise SystemExit(main())

"""What the shared endpoint helper (tipsml.messaging.endpoint.Endpoint) costs per request
against the hand-written reply block the scorer had before issue 17, in process (no
network: the difference is CPU per message, which the network would only blur).

    python bench/endpoint_overhead.py [--n 20000] [--rounds 5] [--runs 3]

Both variants do the same work per message: the reply-subject check, parse
``{"user_id": ...}`` into ``StatsRequest`` (pydantic, like ``tips.score``), a trivial
handler returning bytes, ``msg.respond``, the latency histogram and the requests counter
(label children cached). ``floor``: the handler alone (parse + reply), nothing else.
Variants are interleaved round by round; each run reports the best round per variant;
``--runs`` independent runs give the median and spread (min–max).
Writes bench/results/endpoint_overhead.json (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "endpoint_overhead.json"
BODY = b'{"ok":true}'


def variants():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from tipsml.contract import ContractError, ErrorCode, StatsRequest, error_bytes, parse
    from tipsml.messaging.connection import reply_is_inbox
    from tipsml.messaging.endpoint import Endpoint, EndpointMetrics
    from tipsml.messaging.service import respond
    from tipsml.metrics import LATENCY_BUCKETS, Children

    r = CollectorRegistry()
    latency = Histogram("b_latency_seconds", "", ["subject"], buckets=LATENCY_BUCKETS,
                        registry=r)
    requests = Counter("b_requests_total", "", ["subject", "code"], registry=r)

    async def handler(req, msg) -> bytes:
        return BODY

    # the scorer's block before issue 17 (scorer/handlers.py Handlers._respond)
    lat_c, req_c = Children(latency), Children(requests)

    async def inner(msg) -> bytes:
        return await handler(parse(StatsRequest, msg.data), msg)

    async def hand_written(msg) -> str:
        subject = "b.x"
        if not reply_is_inbox(msg.reply):
            req_c(subject, "refused_reply").inc()
            return "refused_reply"
        t0 = time.perf_counter()
        code = "ok"
        try:
            out = await inner(msg)
        except ContractError as e:
            code = e.code.value
            out = error_bytes(e.code, e.message)
        except Exception as e:  # noqa: BLE001
            code = "internal"
            out = error_bytes(ErrorCode.internal, f"{type(e).__name__}")
        if code == "ok" and msg.reply:
            try:
                await msg.respond(out)
            except Exception:  # noqa: BLE001
                code = "reply_failed"
        else:
            code = await respond(msg, out, code)
        lat_c(subject).observe(time.perf_counter() - t0)
        req_c(subject, code).inc()
        return code

    endpoint = Endpoint("b.x", handler, request=StatsRequest,
                        metrics=EndpointMetrics(latency, requests))

    async def floor(msg) -> str:
        await msg.respond(await inner(msg))
        return "ok"

    return {"floor": floor, "hand_written": hand_written, "endpoint": endpoint}


class Msg:
    __slots__ = ("data", "reply")

    def __init__(self):
        self.reply = "_INBOX.bench.1"
        self.data = b'{"user_id":"u-123"}'

    async def respond(self, body: bytes) -> None:
        return None


async def one_run(n: int, rounds: int) -> dict:
    vs = variants()
    msg = Msg()
    for fn in vs.values():  # warm-up
        for _ in range(1000):
            await fn(msg)
    best: dict[str, float] = {}
    for rnd in range(rounds):
        order = list(vs) if rnd % 2 == 0 else list(vs)[::-1]
        for name in order:
            fn = vs[name]
            c0 = time.process_time()
            for _ in range(n):
                await fn(msg)
            us = (time.process_time() - c0) / n * 1e6
            best[name] = min(best.get(name, us), us)
    return {k: round(v, 3) for k, v in best.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    runs = []
    for i in range(a.runs):
        res = asyncio.run(one_run(a.n, a.rounds))
        res["endpoint_minus_hand_written_us"] = round(res["endpoint"] - res["hand_written"], 3)
        runs.append(res)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v} us" for k, v in res.items()), flush=True)
    summary = {}
    for k in runs[0]:
        vals = [r[k] for r in runs]
        summary[k] = {"median": round(statistics.median(vals), 3), "min": min(vals),
                      "max": max(vals)}
    out = {"what": "CPU microseconds per request of the reply path, in process",
           "n": a.n, "rounds": a.rounds, "runs": runs, "summary": summary,
           "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg(),
                       "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    for k, s in summary.items():
        print(f"median of {a.runs}: {k:32s} {s['median']} us [{s['min']}, {s['max']}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

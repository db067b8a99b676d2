"""What the NATS Services API registration costs per request, isolated from Redis and the
scorer's own work.

    python bench/service_overhead.py [--n 1000] [--blocks 6] [--repeat 3]
    python bench/service_overhead.py --dispatch-only --out bench/results/service_dispatch.json

One real nats-server (embedded), one responder process holding three endpoints with
the same trivial handler (answer ``{"ok":true}``):

* ``raw``: ``nc.subscribe`` + a task per message (the scorer's dispatch before issue 13);
* ``service``: :meth:`tipsml.messaging.service.TipsService.add_request_endpoint` (the same dispatch
  plus the per-endpoint $SRV.STATS counters), the way the workers register now;
* ``micro``: nats.micro's own ``Service.add_endpoint`` (awaits the handler in the
  subscription callback), for reference.

The client (this process) sends ``--n`` sequential requests per block to each, the
variants interleaved block by block so machine load hits them alike, and reports
p50/p99 round trip per variant plus a concurrent burst (``--burst`` requests in flight).
``--handler-sleep-ms 2`` makes every handler wait 2 ms (a Redis call) before replying:
then nats.micro's own dispatch, one request at a time per endpoint, shows.
Writes bench/results/service_overhead.json (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "service_overhead.json"
VARIANTS = ("raw", "service", "micro")
BODY = b'{"ok":true}'


async def responder(url: str, sleep_s: float = 0.0) -> None:
    import nats
    from nats.micro import add_service

    from tipsml.messaging.service import start_service

    nc = await nats.connect(url)
    tasks: set = set()

    async def handle(msg):
        if sleep_s:
            await asyncio.sleep(sleep_s)  # stands for a Redis round trip
        await msg.respond(BODY)

    async def spawn(msg):
        t = asyncio.create_task(handle(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    await nc.subscribe("ovh.raw", queue="q", cb=spawn)

    async def handler(msg):  # as the scorer's handler: a plain reply, then its outcome
        if sleep_s:
            await asyncio.sleep(sleep_s)
        await msg.respond(BODY)
        return "ok"

    svc = await start_service(nc, name="ovh", version="0.1.0", description="overhead")
    await svc.add_request_endpoint("service", "ovh.service", handler)

    async def micro_handler(req):
        if sleep_s:
            await asyncio.sleep(sleep_s)
        await req.respond(BODY)

    micro = await add_service(nc, name="ovh-micro", version="0.1.0")
    await micro.add_endpoint(name="micro", subject="ovh.micro", handler=micro_handler)
    await nc.flush()
    print(json.dumps({"ready": "responder"}), flush=True)
    await asyncio.Event().wait()


async def sequential(nc, subject: str, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await nc.request(subject, b"{}", timeout=5)
        out.append(clock() - t0)
    return out


async def burst(nc, subject: str, n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(nc.request(subject, b"{}", timeout=10) for _ in range(n)))
    return time.perf_counter() - t0


async def dispatch_cost(n: int, rounds: int = 5) -> dict:
    """CPU microseconds per message of the dispatch alone, no network: the raw callback
    (task per message) vs TipsService's (the same plus the $SRV.STATS bookkeeping), each
    driving a handler that does nothing, in this process, best of ``rounds``."""
    from types import SimpleNamespace

    from tipsml.messaging.service import TipsService

    class FakeClient:  # only what Service/add_request_endpoint touch
        _nuid = SimpleNamespace(next=lambda: b"bench")

        async def subscribe(self, subject, queue="", cb=None):
            self.cb = cb
            return SimpleNamespace()

    async def handler(msg):
        return "ok"

    raw_tasks: set = set()

    async def raw_cb(msg):
        t = asyncio.create_task(handler(msg))
        raw_tasks.add(t)
        t.add_done_callback(raw_tasks.discard)

    fake = FakeClient()
    svc = TipsService(fake, name="bench", version="0.1.0", description="dispatch cost")
    await svc.add_request_endpoint("e", "e", handler)
    variants = {"raw": (raw_cb, raw_tasks), "service": (fake.cb, svc.tasks)}
    msg = SimpleNamespace(reply="_INBOX.x", data=b"{}")
    out: dict[str, float] = {}
    for name, (cb, tasks) in list(variants.items()) * 1:
        best = None
        for _ in range(rounds):
            c0 = time.process_time()
            for _ in range(n):
                await cb(msg)
            while tasks:
                await asyncio.sleep(0)
            us = (time.process_time() - c0) / n * 1e6
            best = us if best is None else min(best, us)
        out[name] = round(best, 2)
    out["service_minus_raw_us"] = round(out["service"] - out["raw"], 2)
    out["n"] = n
    return out


def pct(a: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(a) * 1000.0, q)), 4)


async def run(args) -> dict:
    import nats

    from tipsdev.launcher import EmbeddedStack, child_preexec

    stack = EmbeddedStack(redis=False).start()
    proc = subprocess.Popen([sys.executable, __file__, "--responder", stack.nats_url,
                             "--handler-sleep-ms", str(args.handler_sleep_ms)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=child_preexec())
    try:
        assert b"ready" in proc.stdout.readline()
        nc = await nats.connect(stack.nats_url)
        lat = {v: [] for v in VARIANTS}
        bursts = {v: [] for v in VARIANTS}
        for v in VARIANTS:  # warm-up
            await sequential(nc, f"ovh.{v}", 200)
        for b in range(args.blocks):
            order = VARIANTS if b % 2 == 0 else VARIANTS[::-1]
            for v in order:
                lat[v] += await sequential(nc, f"ovh.{v}", args.n)
                bursts[v].append(await burst(nc, f"ovh.{v}", args.burst))
        await nc.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        stack.stop()
    res = {"what": "round trip of a trivial request-reply handler per dispatch variant",
           "n_per_variant": args.n * args.blocks, "blocks": args.blocks,
           "burst_size": args.burst, "handler_sleep_ms": args.handler_sleep_ms,
           "variants": {}}
    for v in VARIANTS:
        res["variants"][v] = {
            "p50_ms": pct(lat[v], 50), "p90_ms": pct(lat[v], 90), "p99_ms": pct(lat[v], 99),
            "mean_ms": round(float(np.mean(lat[v])) * 1000, 4),
            "burst_median_s": round(float(np.median(bursts[v])), 4),
            "burst_per_s": round(args.burst / float(np.median(bursts[v])), 1)}
    res["machine"] = {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg(),
                      "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "note": "shared 2-core machine: other engineers' jobs run meanwhile"}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3, help="independent runs (median, spread)")
    ap.add_argument("--handler-sleep-ms", type=float, default=0.0,
                    help="each handler awaits this long (a Redis call, say) before replying")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--dispatch-only", action="store_true",
                    help="only the CPU cost per message of the two dispatches, in process")
    ap.add_argument("--responder", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.responder:
        asyncio.run(responder(a.responder, a.handler_sleep_ms / 1000.0))
        return 0
    if a.dispatch_only:
        res = asyncio.run(dispatch_cost(a.n * 20))
        print(json.dumps(res))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"dispatch_cpu_us_per_message": res,
                                           "loadavg": os.getloadavg()}, indent=2))
        return 0
    runs = []
    for i in range(a.repeat):  # each run: its own server and responder
        res = asyncio.run(run(a))
        runs.append(res)
        for v, r in res["variants"].items():
            print(f"run {i + 1} {v:8s} p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms | burst of "
                  f"{a.burst}: {r['burst_per_s']} req/s", flush=True)
    summary = {}
    for v in VARIANTS:
        for k in ("p50_ms", "p99_ms", "burst_per_s"):
            vals = sorted(r["variants"][v][k] for r in runs)
            summary.setdefault(v, {})[k] = {"median": vals[len(vals) // 2],
                                            "min": vals[0], "max": vals[-1]}
    out = {"runs": runs, "summary": summary, "repeat": a.repeat}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    for v, r in summary.items():
        print(f"median of {a.repeat}: {v:8s} p50 {r['p50_ms']['median']} ms "
              f"[{r['p50_ms']['min']}, {r['p50_ms']['max']}], p99 {r['p99_ms']['median']} ms "
              f"[{r['p99_ms']['min']}, {r['p99_ms']['max']}], burst {r['burst_per_s']['median']}"
              f" req/s [{r['burst_per_s']['min']}, {r['burst_per_s']['max']}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""When do slow replies happen? A trace of every request at a fixed rate, echo and tips.score.

    python bench/stall_trace.py                     # 500 req/s, 20 s per target
    python bench/stall_trace.py --rate 750 --seconds 10 --slow-ms 10

The p99 of this box moves by a factor of ten between runs at the same rate. This trace
says whether a slow reply is the scorer's or the machine's: requests go out one every
1/rate s (open loop, bench/leanclient.py) to the nats-py echo responder, then to the scorer
with ``SCORER_NATS_FAST_PATH=1`` (no task per request), the same with a task per request
(``SCORER_SYNC_SCORE=0``), then ``SCORER_NATS_FAST_PATH=0``, each for ``--seconds``; every reply's latency
is kept with its send time. A *stall* is a run of consecutive slow replies (over
``--slow-ms``): the box (or the process) did nothing for that long and every request sent
meanwhile waited. Printed and written (bench/results/stall_trace.json): per target p50,
p99, the stalls (start s, length ms, requests caught) and the share of requests in them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "results" / "stall_trace.json"


async def trace(nc, subject: str, bodies: list[bytes], rate: float, seconds: float
                ) -> list[tuple[float, float]]:
    """(send time from start s, latency s) of every answered request."""
    out: list[tuple[float, float]] = []
    n, iv = int(rate * seconds), 1.0 / rate
    clock = time.perf_counter
    t0 = clock() + 0.05
    pending = set()

    def done(f, s: float) -> None:
        pending.discard(f)
        if not f.cancelled() and f.exception() is None:
            out.append((s - t0, clock() - s))

    i = 0
    while i < n:
        now = clock()
        while i < n and t0 + i * iv <= now:
            s = t0 + i * iv
            f = nc.request(subject, bodies[i % len(bodies)], 2.0)
            pending.add(f)
            f.add_done_callback(lambda f, s=s: done(f, s))
            i += 1
        await asyncio.sleep(max(0.0, t0 + i * iv - clock()))
    while pending:
        await asyncio.wait(list(pending))
        await asyncio.sleep(0)
    out.sort()
    return out


def stalls(rows: list[tuple[float, float]], slow_s: float) -> list[dict]:
    """Runs of consecutive slow replies: when, how long the first one waited, how many."""
    found, run = [], []
    for t, lat in rows:
        if lat > slow_s:
            run.append((t, lat))
        elif run:
            found.append(run)
            run = []
    if run:
        found.append(run)
    return [{"at_s": round(r[0][0], 3), "longest_ms": round(max(x[1] for x in r) * 1e3, 1),
             "requests": len(r)} for r in found]


def summary(rows, slow_s: float) -> dict:
    lat = np.array([x[1] for x in rows]) * 1e3
    st = stalls(rows, slow_s)
    return {"requests": len(rows), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 1),
            "in_stalls_share": round(sum(s["requests"] for s in st) / max(len(rows), 1), 4),
            "stalls": st}


async def run(args) -> dict:
    from leanclient import LeanRequester
    from score_bench import ECHO_SUBJECT, payloads, spawn, stop

    from tipsdev.launcher import EmbeddedStack

    res: dict = {"config": {"rate": args.rate, "seconds": args.seconds,
                            "slow_ms": args.slow_ms, "cpus": os.cpu_count()}, "targets": {}}
    with EmbeddedStack() as st:
        env = {**st.env(), "SHADOW_POLICIES": "egreedy-v2,linucb", "DEFAULT_POLICY": "egreedy-v1",
               "METRICS_PORT": "-1", "LOG_LEVEL": "WARNING"}
        nc = await LeanRequester.connect(st.nats_url)
        bodies = payloads(2000)
        targets = [("echo (nats-py)", [sys.executable, str(ROOT / "bench" / "score_bench.py"),
                                       "--echo-server", st.nats_url], {}, ECHO_SUBJECT),
                   ("tips.score, fast path", [sys.executable, "-m", "scorer.main"],
                    {"SCORER_NATS_FAST_PATH": "1"}, "tips.score"),
                   ("tips.score, fast path, a task per request",
                    [sys.executable, "-m", "scorer.main"],
                    {"SCORER_NATS_FAST_PATH": "1", "SCORER_SYNC_SCORE": "0"}, "tips.score"),
                   ("tips.score, nats-py", [sys.executable, "-m", "scorer.main"],
                    {"SCORER_NATS_FAST_PATH": "0"}, "tips.score")]
        for name, argv, extra, subject in targets:
            p = spawn(argv, {**env, **extra})
            try:
                await trace(nc, subject, bodies, 200, 2)  # warm-up (users' state)
                rows = await trace(nc, subject, bodies, args.rate, args.seconds)
            finally:
                stop(p)
            s = summary(rows, args.slow_ms / 1e3)
            res["targets"][name] = s
            print(f"{name:24s} p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms max {s['max_ms']} ms; "
                  f"{len(s['stalls'])} stalls over {args.slow_ms:g} ms holding "
                  f"{s['in_stalls_share'] * 100:.1f} % of requests; longest "
                  f"{max((x['longest_ms'] for x in s['stalls']), default=0)} ms", flush=True)
        await nc.close()
    res["config"]["loadavg_at_end"] = os.getloadavg()
    res["config"]["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--slow-ms", type=float, default=15)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from score_bench import use_uvloop

    from tipsdev.launcher import exit_on_sigterm

    use_uvloop()
    exit_on_sigterm()
    res = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What one request/reply costs on this machine before any scorer work: the echo floor's CPU.

    python bench/echo_floor.py                    # 500 and 1,000 req/s, 3 rounds, 8 s each
    python bench/echo_floor.py --rates 1000 --rounds 5

Two echo responders on an embedded nats-server, each its own process, taking turns
(round 1: nats-py, lean; round 2: nats-py, lean; …) under the same open-loop load from
this process (bench/leanclient.py):

* ``nats-py``: ``score_bench.py --echo-server``, the floor every tips.score figure is
  compared with (a nats-py subscription whose callback responds: what the scorer's
  request path is built on);
* ``lean``: the same on :mod:`tipsml.messaging.fastsub`, the connection the scorer serves
  ``tips.score`` on (the NATS protocol by hand: ``MSG`` frames parsed from the socket's
  bytes, the replies of one loop turn written together).

Per responder and rate: its CPU µs per message (from /proc), nats-server's µs per
request/reply, latency p50/p99; median [min, max] over the rounds. It says how much of the
scorer's per-decision CPU is nats-py's per-message path and what a hand-written
subscription would save (issue 12). Writes bench/results/echo_floor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "results" / "echo_floor.json"
SUBJECT = "bench.echo"


async def lean_echo_server(url: str) -> None:
    """The echo on the scorer's own fast path (:mod:`tipsml.messaging.fastsub`)."""
    from tipsml.messaging.fastsub import FastConnection

    fc = await FastConnection([url], name="echo-fastsub").connect()
    await fc.subscribe(SUBJECT, queue="q", cb=lambda m: fc.write_pub(m.reply, m.data))
    print(json.dumps({"ready": "echo"}), flush=True)
    await asyncio.Event().wait()


def med(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 1), "min": round(min(xs), 1),
            "max": round(max(xs), 1)}


async def run(args) -> dict:
    from leanclient import LeanRequester
    from score_bench import open_loop, payloads, proc_cpu_s, spawn, stop

    from tipsdev.launcher import EmbeddedStack

    out: dict = {"rates": {}, "config": vars(args) | {"cpus": os.cpu_count()}}
    with EmbeddedStack() as st:
        nats_pid = st.procs["nats"].popen.pid
        env = {"NATS_URL": st.nats_url}
        argv = {"nats-py": [sys.executable, str(ROOT / "bench" / "score_bench.py"),
                            "--echo-server", st.nats_url],
                "lean": [sys.executable, __file__, "--lean-echo", st.nats_url]}
        nc = await LeanRequester.connect(st.nats_url)
        bodies = payloads(2000)
        for rate in args.rates:
            rows: dict[str, list[dict]] = {k: [] for k in argv}
            for _ in range(args.rounds):
                for kind, cmd in argv.items():
                    p = spawn(cmd, env)
                    try:
                        await open_loop(nc, SUBJECT, bodies, 200, 1)  # warm-up
                        c0, n0 = proc_cpu_s(p.pid), proc_cpu_s(nats_pid)
                        res = await open_loop(nc, SUBJECT, bodies, rate, args.duration)
                        c1, n1 = proc_cpu_s(p.pid), proc_cpu_s(nats_pid)
                    finally:
                        stop(p)
                    ok = max(res["ok"], 1)
                    rows[kind].append({"responder_cpu_us": (c1 - c0) / ok * 1e6,
                                       "nats_server_cpu_us": (n1 - n0) / ok * 1e6,
                                       "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                                       "errors": res["errors"]})
                    print(f"{rate:.0f}/s {kind}: responder {rows[kind][-1]['responder_cpu_us']:.0f}"
                          f" µs/message, nats-server {rows[kind][-1]['nats_server_cpu_us']:.0f} "
                          f"µs, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms", flush=True)
            out["rates"][str(int(rate))] = {
                kind: {"responder_cpu_us_per_message": med([r["responder_cpu_us"] for r in rs]),
                       "nats_server_cpu_us_per_message": med([r["nats_server_cpu_us"]
                                                              for r in rs]),
                       "p50_ms": med([r["p50_ms"] for r in rs]),
                       "p99_ms": med([r["p99_ms"] for r in rs]),
                       "errors": sum(r["errors"] for r in rs), "runs": rs}
                for kind, rs in rows.items()}
        await nc.close()
    out["config"]["loadavg_at_end"] = os.getloadavg()
    out["config"]["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[500, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--lean-echo", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from score_bench import use_uvloop

    use_uvloop()
    if args.lean_echo:
        asyncio.run(lean_echo_server(args.lean_echo))
        return 0
    from tipsdev.launcher import exit_on_sigterm

    exit_on_sigterm()
    out_path = args.out
    res = asyncio.run(run(args))
    Path(out_path).write_text(json.dumps(res, indent=1))
    for rate, per in res["rates"].items():
        for kind, f in per.items():
            c = f["responder_cpu_us_per_message"]
            print(f"{rate}/s {kind:8s} responder {c['median']} µs/message [{c['min']}, "
                  f"{c['max']}], nats-server {f['nats_server_cpu_us_per_message']['median']} µs")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the scorer's CPU goes: a fixed-rate run under cProfile, top functions by own time.

    .venv/bin/python bench/score_profile.py                 # 500 req/s x 20 s, shadows on
    .venv/bin/python bench/score_profile.py --rate 800 --duration 10 --no-profile

The scorer runs in this process (its real ``serve``: NATS subscriptions, coalesced Redis
reads, decision log) against an embedded stack; a separate process sends ``tips.score``
requests open loop at ``--rate``. CPU per decision = this process's CPU time (user+sys,
from ``resource.getrusage``) over the run divided by the decisions answered; cProfile
inflates it, so ``--no-profile`` gives the honest figure. Writes
bench/results/score_profile.json (CPU µs/decision + the top-25 table).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "score_profile.json"
sys.path.insert(0, str(ROOT / "bench"))


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def loadgen(url: str, rate: float, duration: float) -> None:
    import nats
    from score_bench import open_loop, payloads

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    res = await open_loop(nc, "tips.score", payloads(2000), rate, duration)
    print(json.dumps(res), flush=True)
    await nc.close()


async def run(args) -> dict:
    from scorer.main import serve
    from scorer.settings import ScorerSettings
    from tipsdev.launcher import EmbeddedStack, child_preexec

    with EmbeddedStack() as st:
        settings = ScorerSettings(nats_url=st.nats_url, redis_url=st.redis_url, metrics_port=-1,
                                  default_policy=args.policy, shadow_policies=args.shadow)
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, ready, stop))
        await ready.wait()
        # warm-up: users' state exists, code paths are hot
        warm = subprocess.Popen([sys.executable, __file__, "--loadgen", st.nats_url, "--rate",
                                 "300", "--duration", "3"], stdout=subprocess.PIPE,
                                preexec_fn=child_preexec())
        while warm.poll() is None:
            await asyncio.sleep(0.1)
        prof = cProfile.Profile() if args.profile else None
        lg = subprocess.Popen([sys.executable, __file__, "--loadgen", st.nats_url, "--rate",
                               str(args.rate), "--duration", str(args.duration)],
                              stdout=subprocess.PIPE, preexec_fn=child_preexec())
        c0, t0 = cpu_s(), time.monotonic()
        if prof:
            prof.enable()
        while lg.poll() is None:
            await asyncio.sleep(0.05)
        if prof:
            prof.disable()
        cpu, wall = cpu_s() - c0, time.monotonic() - t0
        client = json.loads(lg.stdout.read().decode().strip().splitlines()[-1])
        stop.set()
        await task
    n = client["ok"]
    out = {"rate": args.rate, "duration_s": args.duration, "policy": args.policy,
           "shadow": args.shadow,
           "profiled": bool(prof), "decisions": n, "cpu_s": round(cpu, 3),
           "cpu_us_per_decision": round(cpu / max(n, 1) * 1e6, 1),
           "cpu_share_of_one_core": round(cpu / wall, 3), "client": client,
           "loadavg": os.getloadavg()}
    if prof:
        s = io.StringIO()
        ps = pstats.Stats(prof, stream=s)
        ps.sort_stats("tottime").print_stats(25)
        rows = []
        for (file, line, fn), (_cc, nc_, tt, ct, _) in sorted(
                ps.stats.items(), key=lambda kv: -kv[1][2])[:25]:
            rows.append({"function": f"{Path(file).name}:{line}:{fn}", "calls": nc_,
                         "own_us_per_decision": round(tt / max(n, 1) * 1e6, 2),
                         "cum_us_per_decision": round(ct / max(n, 1) * 1e6, 2)})
        out["top_by_own_time"] = rows
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--policy", default="egreedy-v1", help="live policy (as score_bench.py)")
    ap.add_argument("--shadow", default="egreedy-v2,linucb")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        import uvloop

        if args.uvloop:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    if args.loadgen:
        asyncio.run(loadgen(args.loadgen, args.rate, args.duration))
        return 0
    from tipsdev.launcher import exit_on_sigterm

    exit_on_sigterm()
    res = asyncio.run(run(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"scorer CPU {res['cpu_us_per_decision']} µs/decision over {res['decisions']} decisions "
          f"({'profiled' if res['profiled'] else 'not profiled'}), load {res['loadavg']}")
    for r in res.get("top_by_own_time", [])[:25]:
        print(f"  {r['own_us_per_decision']:8.2f} µs own {r['cum_us_per_decision']:8.2f} cum "
              f"{r['calls']:>8} {r['function']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

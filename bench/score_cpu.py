"""Scorer CPU per decision on a fixed workload: counts the box's noise does not decide.

    .venv/bin/python bench/score_cpu.py                      # cProfile: calls + top-20
    .venv/bin/python bench/score_cpu.py --mode rusage --repeats 3
    .venv/bin/python bench/score_cpu.py --mode callgrind --n 1000

The scorer is its real ``serve`` (NATS subscriptions through the Services API, coalesced
Redis reads, the decision log writing records to Redis and publishing DECISIONS) against
an embedded stack (real nats-server + redis-server). A separate client process sends
exactly ``--n`` ``tips.score`` requests (the score_bench payloads, 2,000 users, shadows
on), ``--concurrency`` in flight at a time (closed loop), after a warm-up of the same
size that gives every user state. The measured window ends when the decision log has
written every decision (DECISIONS holds them all), so its work is counted.

* ``cprofile`` (default): the scorer in this process under cProfile. Function calls per
  decision are nearly deterministic (only the read batching depends on timing); the
  top-20 table by own time says where the CPU goes.
* ``rusage``: the same in-process workload without a profiler; CPU seconds of this
  process (user+sys, ``getrusage``) per decision; ``--repeats`` runs, median and spread.
  The client's CPU is its own process's, not counted.
* ``callgrind``: the scorer as its own process under ``valgrind --tool=callgrind`` with
  instrumentation switched on only for the measured window (``callgrind_control -i``):
  instructions per decision, deterministic up to the read batching. Slow (x50).

Writes bench/results/score_cpu_<mode>.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import glob
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_split() -> tuple[float, float, int, int]:
    """(user s, system s, voluntary, involuntary context switches) of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_nvcsw, ru.ru_nivcsw


# ---------------------------------------------------------------- the client (own process)
async def client(url: str, n: int, conc: int, offset: int) -> None:
    import nats
    from score_bench import payloads

    bodies = payloads(2000)
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    ok, errors = 0, {}
    it = iter(range(offset, offset + n))

    async def worker():
        nonlocal ok
        for i in it:
            try:
                m = await nc.request("tips.score", bodies[i % len(bodies)], timeout=30.0)
                if m.data.startswith(b'{"ok":true'):
                    ok += 1
                    if b'"fallback":true' in m.data:
                        errors["fallback"] = errors.get("fallback", 0) + 1
                else:
                    errors["error_reply"] = errors.get("error_reply", 0) + 1
            except Exception as e:  # noqa: BLE001 - counted
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    print(json.dumps({"ok": ok, "errors": errors, "wall_s": round(time.perf_counter() - t0, 3)}),
          flush=True)
    await nc.close()


def run_client(url: str, n: int, conc: int, offset: int) -> subprocess.Popen:
    from tipsdev.launcher import child_preexec

    return subprocess.Popen([sys.executable, __file__, "--client", url, "--n", str(n),
                             "--concurrency", str(conc), "--offset", str(offset)],
                            stdout=subprocess.PIPE, preexec_fn=child_preexec())


async def wait_proc(p: subprocess.Popen) -> dict:
    while p.poll() is None:
        await asyncio.sleep(0.02)
    return json.loads(p.stdout.read().decode().strip().splitlines()[-1])


async def wait_logged(url: str, expected: int, timeout: float = 120.0) -> int:
    """Until DECISIONS holds ``expected`` messages (the decision log is done)."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    n = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                n = (await js.stream_info("DECISIONS")).state.messages
            except Exception:  # noqa: BLE001 - not provisioned yet
                n = 0
            if n >= expected:
                break
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
    return n


# ---------------------------------------------------------------- in-process modes
async def in_process(args) -> dict:
    from scorer.main import serve
    from scorer.settings import ScorerSettings
    from tipsdev.launcher import EmbeddedStack

    with EmbeddedStack() as st:
        settings = ScorerSettings(nats_url=st.nats_url, redis_url=st.redis_url, metrics_port=-1,
                                  default_policy=args.policy, shadow_policies=args.shadow,
                                  log_level="WARNING")
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, ready, stop))
        await ready.wait()
        runs = []
        logged = 0
        for rep in range(args.repeats + 1):  # the first pass is the warm-up
            warm = rep == 0
            # CPU time, not wall time: time this process spends descheduled (a busy box) is
            # nobody's own time
            prof = (cProfile.Profile(time.process_time) if args.mode == "cprofile" and not warm
                    else None)
            c0, t0, s0 = cpu_s(), time.perf_counter(), cpu_split()
            if prof:
                prof.enable()
            res = await wait_proc(run_client(st.nats_url, args.n, args.concurrency,
                                             offset=rep * args.n))
            logged = await wait_logged(st.nats_url, logged + args.n)
            if prof:
                prof.disable()
            cpu, wall = cpu_s() - c0, time.perf_counter() - t0
            s1 = cpu_split()
            if warm:
                continue
            n = res["ok"]
            row = {"decisions": n, "client_errors": res["errors"], "cpu_s": round(cpu, 4),
                   "wall_s": round(wall, 3),
                   "cpu_us_per_decision": round(cpu / max(n, 1) * 1e6, 1),
                   "user_us_per_decision": round((s1[0] - s0[0]) / max(n, 1) * 1e6, 1),
                   "sys_us_per_decision": round((s1[1] - s0[1]) / max(n, 1) * 1e6, 1),
                   "ctx_switches_per_decision": round((s1[2] - s0[2] + s1[3] - s0[3])
                                                      / max(n, 1), 2)}
            if prof:
                row.update(profile_table(prof, n, args.top))
                if args.pstats:
                    prof.dump_stats(args.pstats)
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("top")}),
                  flush=True)
        stop.set()
        await task
    return {"runs": runs}


AREAS = [("/redis/", "redis-py"), ("/nats/", "nats-py"), ("/asyncio/", "asyncio"),
         ("/numpy/", "numpy"), ("/pydantic", "pydantic"), ("/prometheus_client/", "prometheus"),
         ("/scorer/decisionlog", "scorer.decisionlog"), ("/scorer/", "scorer"),
         ("/tipsml/bandits", "tipsml.bandits"), ("/tipsml/features", "tipsml.features"),
         ("/tipsml/state", "tipsml.state"), ("/tipsml/", "tipsml (other)")]


def area_of(file: str) -> str:
    for pat, name in AREAS:
        if pat in file:
            return name
    return "other"


def by_area(ps: pstats.Stats, n: int) -> dict:
    """Own time grouped by package; a builtin's (C) own time goes to its callers' areas in
    proportion to the time each caller spent in it."""
    acc: dict[str, float] = {}
    for (file, _, _), (_, _, tt, _, callers) in ps.stats.items():
        if file == "~" and callers:
            tot = sum(c[2] for c in callers.values()) or 1.0
            for (cf, _, _), c in callers.items():
                a = area_of(cf) if cf != "~" else "other"
                acc[a] = acc.get(a, 0.0) + tt * c[2] / tot
        else:
            a = area_of(file)
            acc[a] = acc.get(a, 0.0) + tt
    return {a: round(v / max(n, 1) * 1e6, 1) for a, v in sorted(acc.items(), key=lambda kv: -kv[1])}


def profile_table(prof: cProfile.Profile, n: int, top: int) -> dict:
    ps = pstats.Stats(prof, stream=io.StringIO())
    total_calls = sum(v[1] for v in ps.stats.values())
    prim_calls = sum(v[0] for v in ps.stats.values())
    total_tt = sum(v[2] for v in ps.stats.values())

    def name(k):
        file, line, fn = k
        parts = Path(file).parts
        short = "/".join(parts[-2:]) if len(parts) > 1 else file
        return f"{short}:{line}:{fn}"

    def rows(key):
        out = []
        for k, (_, nc_, tt, ct, _) in sorted(ps.stats.items(), key=key)[:top]:
            out.append({"function": name(k), "calls_per_decision": round(nc_ / max(n, 1), 2),
                        "own_us_per_decision": round(tt / max(n, 1) * 1e6, 2),
                        "own_share": round(tt / total_tt, 3) if total_tt else None,
                        "cum_us_per_decision": round(ct / max(n, 1) * 1e6, 2)})
        return out

    return {"calls_per_decision": round(total_calls / max(n, 1), 1),
            "own_us_per_decision_by_area": by_area(ps, n),
            "primitive_calls_per_decision": round(prim_calls / max(n, 1), 1),
            "profiled_own_us_per_decision": round(total_tt / max(n, 1) * 1e6, 1),
            "top_by_own_time": rows(lambda kv: -kv[1][2]),
            "top_by_calls": rows(lambda kv: -kv[1][1])}


# ---------------------------------------------------------------- callgrind mode
async def callgrind(args) -> dict:
    from tipsdev.launcher import EmbeddedStack, child_preexec

    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found")
    tmp = Path(tempfile.mkdtemp(prefix="score-cg-"))
    with EmbeddedStack() as st:
        env = {**os.environ, **st.env(), "DEFAULT_POLICY": args.policy,
               "SHADOW_POLICIES": args.shadow, "METRICS_PORT": "-1",
               "LOG_LEVEL": "WARNING", "PYTHONMALLOC": "malloc",
               # valgrind is ~50x slower: no fallbacks for a slow-looking Redis
               "REDIS_TIMEOUT_S": "30", "ADMIN_REDIS_TIMEOUT_S": "30"}
        p = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                              f"--callgrind-out-file={tmp}/cg.%p", sys.executable, "-m",
                              "scorer.main"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, preexec_fn=child_preexec())
        try:
            line = await asyncio.to_thread(p.stdout.readline)
            if b"ready" not in line:
                raise RuntimeError(f"scorer under valgrind did not start: {line!r}")
            res = await wait_proc(run_client(st.nats_url, args.n, args.concurrency, 0))
            await wait_logged(st.nats_url, args.n, timeout=600)
            subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            res = await wait_proc(run_client(st.nats_url, args.n, args.concurrency, args.n))
            await wait_logged(st.nats_url, 2 * args.n, timeout=600)
            before = set(glob.glob(f"{tmp}/cg.*"))
            subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            dumps = sorted(set(glob.glob(f"{tmp}/cg.*")) - before)
            subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        finally:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    ir = 0
    for f in dumps:  # the measured window's dump only
        for ln in open(f):
            if ln.startswith("summary:") or ln.startswith("totals:"):
                ir = max(ir, int(ln.split()[1]))
    top = []
    if dumps and shutil.which("callgrind_annotate"):
        ann = subprocess.run(["callgrind_annotate", "--threshold=100", dumps[0]],
                             capture_output=True, text=True).stdout.splitlines()
        for ln in ann:
            parts = ln.split(None, 1)
            if len(parts) == 2 and parts[0].replace(",", "").isdigit() and "(" in parts[1]:
                top.append({"instructions_per_decision": round(int(parts[0].replace(",", ""))
                                                               / max(res["ok"], 1)),
                            "function": parts[1].strip()[:160]})
                if len(top) >= args.top:
                    break
    if args.keep:
        print(f"callgrind dumps kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    n = res["ok"]
    return {"runs": [{"decisions": n, "client_errors": res["errors"], "instructions": ir,
                      "instructions_per_decision": round(ir / max(n, 1)),
                      "top_by_instructions": top}]}


def summarise(out: dict) -> None:
    runs = out["runs"]
    for key in ("cpu_us_per_decision", "calls_per_decision", "instructions_per_decision"):
        vals = sorted(r[key] for r in runs if key in r)
        if vals:
            out[key] = {"median": vals[len(vals) // 2], "min": vals[0], "max": vals[-1],
                        "runs": len(vals)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=["cprofile", "rusage", "callgrind"], default="cprofile")
    ap.add_argument("--n", type=int, default=2000, help="decisions measured (per run)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--policy", default="egreedy-v1", help="live policy (as score_bench.py)")
    ap.add_argument("--shadow", default="egreedy-v2,linucb")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--label", default="", help="a name for this measurement (e.g. a commit)")
    ap.add_argument("--out")
    ap.add_argument("--pstats", help="also dump the raw cProfile stats here")
    ap.add_argument("--keep", action="store_true", help="callgrind: keep the dump files")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from score_bench import use_uvloop

    use_uvloop()
    if args.client:
        asyncio.run(client(args.client, args.n, args.concurrency, args.offset))
        return 0
    from tipsdev.launcher import exit_on_sigterm

    exit_on_sigterm()
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)  # as the worker lifecycle tunes it for the real worker
    t0 = time.time()
    out = asyncio.run(callgrind(args) if args.mode == "callgrind" else in_process(args))
    summarise(out)
    out["config"] = {"mode": args.mode, "n": args.n, "concurrency": args.concurrency,
                     "policy": args.policy, "shadow": args.shadow, "label": args.label,
                     "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                           capture_output=True, text=True).stdout.strip(),
                     "loadavg": os.getloadavg(), "took_s": round(time.time() - t0, 1),
                     "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    dest = Path(args.out or ROOT / "bench" / "results" / f"score_cpu_{args.mode}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))
    for k in ("cpu_us_per_decision", "calls_per_decision", "instructions_per_decision"):
        if k in out:
            print(f"{k}: median {out[k]['median']} [{out[k]['min']}, {out[k]['max']}] "
                  f"over {out[k]['runs']} run(s)")
    for a, v in out["runs"][-1].get("own_us_per_decision_by_area", {}).items():
        print(f"  {v:8.1f} us own  {a}")
    for r in out["runs"][-1].get("top_by_own_time", []):
        print(f"  {r['own_us_per_decision']:8.2f} us own ({r['own_share']:.1%}) "
              f"{r['calls_per_decision']:7.2f} calls  {r['function']}")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

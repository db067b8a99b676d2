"""Soak: tips.score at the target rate for a long time with feedback flowing.

    .venv/bin/python bench/soak.py                       # 500 req/s, 10 min, own stack
    .venv/bin/python bench/soak.py --duration 60 --rate 200 --out /tmp/soak.json
    NATS_URL=... REDIS_URL=... bench/soak.py --external  # workers already running

The embedded stack (real nats-server + redis-server) and the workers (scorer, feedback
consumer) run as their own processes, exactly as ``make run`` starts them, with their
production settings (scorer Redis timeout 25 ms). The load comes from a separate process
(``--loadgen``), open loop: request i is due at t0 + i/rate whatever happened before, and
its latency is measured from that due time (no coordinated omission). A fraction of the
decisions gets a feedback event (JetStream, Nats-Msg-Id) 0–2 s later.

Written to ``--out`` (default bench/results/soak.json): p50/p99/max per window, overall
percentiles, errors and fallbacks, RSS of every worker (start, after warm-up, end, peak),
the machine's load average, and whether every feedback event was applied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "soak.json"
# what a real app can publish: it never knows that a tip was "ignored" (silence is the
# service's to turn into the default reward when the window closes)
REACTIONS = {"completed": 1.0, "accepted": 0.5, "dismissed": 0.0}


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


# ---------------------------------------------------------------- load generator process
async def loadgen(args) -> None:
    import nats
    import numpy as np

    nc = await nats.connect(args.nats_url, name="soak-loadgen", max_reconnect_attempts=-1,
                            pending_size=64 * 1024 * 1024)
    js = nc.jetstream()
    rng = random.Random(args.seed)
    rows: list[tuple[float, float, str]] = []  # (due offset s, latency s, code)
    events: list[list[str]] = []  # [event id, user]
    fb_errors = 0
    tasks: set[asyncio.Task] = set()
    users = [f"soak-{i}" for i in range(args.users)]

    async def feedback(rep, user):
        nonlocal fb_errors
        if args.profile == "steady":  # bursty: the reaction is published at once
            await asyncio.sleep(rng.uniform(0.0, 2.0))
        rc = rng.choice(list(REACTIONS))
        eid = f"soak-{rep['decision_id']}"
        body = json.dumps({"event_id": eid, "decision_id": rep["decision_id"], "user_id": user,
                           "reaction": rc, "ts": time.time()}).encode()
        for _ in range(5):
            try:
                await js.publish(f"feedback.{rc}", body, headers={"Nats-Msg-Id": eid},
                                 timeout=5.0)
                events.append([eid, user])
                return
            except Exception:  # noqa: BLE001 - retried; the stream dedups by Nats-Msg-Id
                await asyncio.sleep(0.2)
        fb_errors += 1

    async def one(i: int, due: float, t0: float):
        user = users[i % len(users)]
        payload = json.dumps({
            "user_id": user, "request_id": f"s{i}",
            "context": {"hour_of_day": i % 24, "day_of_week": i % 7,
                        "tasks": [{"title": "task", "priority": i % 5, "overdue": i % 3 == 0}]},
            "profile_features": {"completion_rate": 0.4, "dismiss_rate": 0.2,
                                 "mean_dwell_ms": 20000, "preferred_hour": 9,
                                 "tip_volume": 30}}).encode()
        try:
            msg = await nc.request("tips.score", payload, timeout=args.timeout)
            rep = json.loads(msg.data)
            if rep.get("ok"):
                code = "fallback" if rep.get("fallback") else "ok"
            else:
                code = rep.get("error", {}).get("code", "?")
        except nats.errors.NoRespondersError:
            code, rep = "unavailable", None
        except (TimeoutError, nats.errors.TimeoutError):
            code, rep = "timeout", None
        except Exception as e:  # noqa: BLE001
            code, rep = f"exception:{type(e).__name__}", None
        rows.append((due - t0, time.monotonic() - due, code))
        if code in ("ok", "fallback") and rng.random() < args.feedback_fraction:
            await feedback(rep, user)

    t0 = time.monotonic()
    n = int(args.duration * args.rate)
    burst = max(1, int(args.rate * args.burst_every)) if args.profile == "bursty" else 1
    for i in range(n):
        # steady: request i is due at i/rate; bursty: `burst` requests due at once, every
        # burst_every seconds (the same mean rate), like a page load asking for many users
        due = t0 + (i // burst) * burst / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(one(i, due, t0))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 10)
    await nc.flush()
    await nc.close()
    arr = np.array([r[1] for r in rows])
    out = {"rows": rows, "events": events, "feedback_publish_failures": fb_errors,
           "sent": n, "answered": len(rows)}
    Path(args.loadgen_out).write_text(json.dumps(out))
    del arr


# ---------------------------------------------------------------- orchestration
def pct(xs, q):
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), q)) * 1000, 2) if len(xs) else None


def summarize(rows, window_s: float) -> tuple[list[dict], dict]:
    windows: dict[int, list] = {}
    for due, lat, code in rows:
        windows.setdefault(int(due // window_s), []).append((lat, code))
    wl = []
    for k in sorted(windows):
        w = windows[k]
        lats = [lat for lat, c in w if c in ("ok", "fallback")]
        wl.append({"t_s": k * window_s, "n": len(w), "p50_ms": pct(lats, 50),
                   "p99_ms": pct(lats, 99), "max_ms": round(max(lats) * 1000, 2) if lats else None,
                   "errors": sum(1 for _, c in w if c not in ("ok", "fallback")),
                   "fallbacks": sum(1 for _, c in w if c == "fallback")})
    lats = [lat for _, lat, c in rows if c in ("ok", "fallback")]
    codes: dict[str, int] = {}
    for _, _, c in rows:
        codes[c] = codes.get(c, 0) + 1
    overall = {"requests": len(rows), "codes": codes, "p50_ms": pct(lats, 50),
               "p90_ms": pct(lats, 90), "p99_ms": pct(lats, 99), "p999_ms": pct(lats, 99.9),
               "max_ms": round(max(lats) * 1000, 2) if lats else None,
               "errors": sum(v for k, v in codes.items() if k not in ("ok", "fallback")),
               "fallbacks": codes.get("fallback", 0),
               "worst_window_p99_ms": max((w["p99_ms"] or 0) for w in wl) if wl else None}
    return wl, overall


async def count_applied(redis_url: str, events: list) -> dict:
    """``events``: [event id, user] pairs (keys carry the user's hash tag)."""
    import redis.asyncio as aioredis

    from tipsml.state import decision_key, event_key

    r = aioredis.from_url(redis_url)
    out: dict[str, int] = {}
    for j in range(0, len(events), 2000):
        chunk = events[j:j + 2000]
        vals = await r.mget([event_key(e, u) for e, u in chunk])
        # "expired" although the decision record exists: the feedback overtook the record
        exp = [(e, u) for (e, u), v in zip(chunk, vals) if v == b"expired"]
        if exp:
            there = await r.exists(*[decision_key(e[len('soak-'):], u) for e, u in exp])
            out["expired_but_decision_exists"] = out.get("expired_but_decision_exists", 0) + there
        for v in vals:
            k = v.decode() if v else "missing"
            out[k] = out.get(k, 0) + 1
    await r.aclose()
    return out


async def redis_usage(redis_url: str) -> dict:
    import redis.asyncio as aioredis

    r = aioredis.from_url(redis_url)
    info = await r.info("memory")
    n_dec = 0
    async for _ in r.scan_iter("tips:dec:*", count=5000):
        n_dec += 1
    out = {"used_memory_mb": round(info["used_memory"] / 2**20, 1), "keys": await r.dbsize(),
           "decision_records": n_dec,
           "bytes_per_decision_record": round(info["used_memory"] / n_dec) if n_dec else None}
    await r.aclose()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--rate", type=float, default=500.0, help="tips.score requests per second")
    ap.add_argument("--feedback-fraction", type=float, default=0.3)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=1.0, help="client request timeout, s")
    ap.add_argument("--window", type=float, default=10.0, help="report window, s")
    ap.add_argument("--warmup", type=float, default=30.0, help="RSS baseline taken after this")
    ap.add_argument("--target-p99-ms", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", choices=["steady", "bursty"], default="steady",
                    help="steady open loop, or bursts of rate x burst-every requests at once "
                         "with each reaction published the instant its reply arrives")
    ap.add_argument("--burst-every", type=float, default=2.0, help="bursty: seconds between "
                    "bursts")
    ap.add_argument("--out", default=None, help="default bench/results/soak.json (steady) or "
                    "soak_bursty.json")
    ap.add_argument("--external", action="store_true",
                    help="use NATS_URL/REDIS_URL and the workers already running there")
    ap.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nats-url", help=argparse.SUPPRESS)
    ap.add_argument("--loadgen-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.loadgen:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        asyncio.run(loadgen(args))
        return 0

    from tipsdev.launcher import EmbeddedStack, exit_on_sigterm
    from tipsdev.testing import spawn_worker

    exit_on_sigterm()  # SIGTERM runs the clean-up below like Ctrl-C does

    stack, workers = None, {}
    load0 = loadavg()
    if args.external:
        env = {"NATS_URL": os.environ["NATS_URL"], "REDIS_URL": os.environ["REDIS_URL"]}
    else:
        stack = EmbeddedStack().start()
        env = stack.env()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if not args.external:
            workers["scorer"] = spawn_worker("scorer.main", env, log_path=str(tmp / "scorer.log"))
            workers["feedback-consumer"] = spawn_worker("feedback_consumer.main", env,
                                                        log_path=str(tmp / "feedback.log"))
        if stack:
            workers["nats-server"] = type("P", (), {"popen": stack.procs["nats"].popen})
            workers["redis-server"] = type("P", (), {"popen": stack.procs["redis"].popen})
        lg_out = tmp / "loadgen.json"
        lg = subprocess.Popen([sys.executable, __file__, "--loadgen", "--nats-url",
                               env["NATS_URL"], "--loadgen-out", str(lg_out),
                               "--duration", str(args.duration), "--rate", str(args.rate),
                               "--feedback-fraction", str(args.feedback_fraction),
                               "--users", str(args.users), "--timeout", str(args.timeout),
                               "--seed", str(args.seed), "--profile", args.profile,
                               "--burst-every", str(args.burst_every)])
        pids = {k: w.popen.pid for k, w in workers.items()}
        pids["loadgen"] = lg.pid
        samples = []
        t0 = time.monotonic()
        rss_start = {k: rss_mb(p) for k, p in pids.items()}
        rss_warm = None
        print(f"soak: {args.rate:.0f} req/s for {args.duration:.0f} s; pids {pids}", flush=True)
        while lg.poll() is None:
            time.sleep(5.0)
            el = time.monotonic() - t0
            s = {"t_s": round(el, 1), "loadavg": loadavg(),
                 "rss_mb": {k: rss_mb(p) for k, p in pids.items()}}
            samples.append(s)
            if rss_warm is None and el >= args.warmup:
                rss_warm = s["rss_mb"]
            if int(el) % 60 < 5:
                print(f"  t={el:5.0f}s load={s['loadavg'][0]:.2f} rss={s['rss_mb']}", flush=True)
        if lg.returncode != 0:
            raise RuntimeError(f"load generator exited with {lg.returncode}")
        res = json.loads(lg_out.read_text())
        # feedback: wait until the consumer has caught up, then check every event
        events = res["events"]
        deadline = time.monotonic() + 120
        applied = {}
        while time.monotonic() < deadline:
            applied = asyncio.run(count_applied(env["REDIS_URL"], events))
            if applied.get("missing", 0) == 0:
                break
            time.sleep(2.0)
        rss_end = {k: rss_mb(p) for k, p in pids.items()}
        usage = asyncio.run(redis_usage(env["REDIS_URL"]))
        alive = {k: w.popen.poll() is None for k, w in workers.items()}
        windows, overall = summarize(res["rows"], args.window)
        base = rss_warm or rss_start
        drift = {k: (round(rss_end[k] - base[k], 1) if rss_end.get(k) is not None and
                     base.get(k) is not None else None) for k in pids if k != "loadgen"}
        peak = {k: max((s["rss_mb"].get(k) or 0) for s in samples) if samples else None
                for k in pids}
        report = {
            "what": "tips.score open loop at the target rate with feedback flowing",
            "config": {k: getattr(args, k) for k in ("duration", "rate", "feedback_fraction",
                                                      "users", "timeout", "window", "warmup",
                                                      "target_p99_ms", "seed", "profile",
                                                      "burst_every")},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "loadavg_start": load0,
                        "loadavg_end": loadavg(),
                        "loadavg_max_1m": max((s["loadavg"][0] for s in samples), default=None),
                        "note": "shared machine: other engineers' jobs run meanwhile"},
            "sent": res["sent"], "answered": res["answered"], "overall": overall,
            "p99_under_target": (overall["p99_ms"] or 1e9) <= args.target_p99_ms,
            "rss_mb": {"start": rss_start, "after_warmup": rss_warm, "end": rss_end,
                       "peak": peak, "drift_after_warmup": drift},
            "workers_alive_at_end": alive, "redis_at_end": usage,
            "feedback": {"published": len(events),
                         "publish_failures": res["feedback_publish_failures"],
                         "outcomes": applied, "lost": applied.get("missing", 0),
                         "note": "expired_but_decision_exists = rewards lost to the race "
                                 "between the async decision write and fast feedback"},
            "windows": windows, "samples": samples,
        }
        out = Path(args.out or DEFAULT_OUT.with_name(
            "soak.json" if args.profile == "steady" else "soak_bursty.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        print(json.dumps({k: report[k] for k in ("overall", "p99_under_target", "feedback")},
                         indent=1))
        print(f"RSS drift after warm-up (MiB): {drift}; load avg {report['machine']}")
        print(f"written {out}")
        return 0
    finally:
        for w in workers.values():
            if hasattr(w, "stop"):
                w.stop()
        if stack:
            stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())

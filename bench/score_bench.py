"""tips.score latency under open-loop load, against the floor of a trivial nats-py echo.

    make bench-score                 # 500 and 1000 req/s, 30 s each, shadows on
    python bench/score_bench.py --rates 500 --duration 10
    python bench/score_bench.py --sweep --sweep-start 500 --duration 10   # the knee

Starts the embedded stack (real nats-server + redis-server) unless --external, the
scorer as its own process (shadow policies on: egreedy-v2 + linucb beside egreedy-v1),
and an echo responder process; this process is the client (``--client lean``: the NATS
protocol by hand, bench/leanclient.py, so the generator takes little of the cores it
shares with what it measures; ``--client nats-py``: nats-py's ``request()``). Open loop:
requests are sent on a fixed schedule whatever the replies do, and latency is measured
from the *scheduled* send time, so a stall shows up as latency (no coordinated omission).
Echo and tips.score alternate in ``--windows`` windows per run, so both sample the same
minutes of a shared machine. Each run reads every process's CPU time from /proc: the
scorer's per decision (and its user/system split), the echo responder's per message, the
client's, nats-server's and redis-server's per request; ``--perf-stat`` also counts the
scorer's syscalls (read, write, epoll_pwait: its loop turns, getpid) and context switches
per decision with ``perf stat`` attached during the tips.score windows. ``--sweep`` raises the rate by ``--step`` until the median
p99 over ``--repeats`` runs passes 3x the echo floor; the knee also goes into
bench/results/score.json (``knee``, by replica count). Results are written after every
rate (an interrupted run keeps what it measured; SIGTERM stops every process it started).
Writes bench/results/score.json (or ``--out``) and prints one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "score.json"
sys.path.insert(0, str(ROOT / "bench"))
ECHO_SUBJECT = "bench.echo"


async def echo_server(url: str) -> None:
    import nats

    nc = await nats.connect(url)

    async def cb(msg):
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=cb)
    await nc.flush()
    print(json.dumps({"ready": "echo"}), flush=True)
    await asyncio.Event().wait()


def payloads(n_users: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_users):
        tasks = [{"id": j, "title": f"task {j}", "priority": int(rng.integers(0, 5)),
                  "overdue": bool(rng.random() < 0.3)} for j in range(int(rng.integers(0, 6)))]
        out.append(json.dumps({
            "user_id": f"bench-user-{i}",
            "context": {"hour_of_day": int(rng.integers(0, 24)),
                        "day_of_week": int(rng.integers(0, 7)), "tasks": tasks},
            "profile_features": {"completion_rate": float(rng.random()),
                                 "dismiss_rate": float(rng.random()) * 0.5,
                                 "mean_dwell_ms": float(rng.integers(1000, 900000)),
                                 "preferred_hour": int(rng.integers(0, 24)),
                                 "tip_volume": int(rng.integers(0, 500))},
        }).encode())
    return out


async def open_loop(nc, subject: str, bodies: list[bytes], rate: float, duration: float,
                    timeout: float = 2.0) -> dict:
    lat, errors, n, wall = await open_loop_raw(nc, subject, bodies, rate, duration, timeout)
    return summarize(subject, rate, duration, lat, errors, n, wall)


def summarize(subject: str, rate: float, duration: float, lat: list[float],
              errors: dict[str, int], n: int, wall: float) -> dict:
    a = np.array(lat) * 1000.0
    return {
        "subject": subject, "target_rate": rate, "duration_s": duration, "sent": n,
        "ok": int(a.size), "errors": sum(errors.values()), "error_kinds": errors,
        "achieved_rate": round(a.size / wall, 1) if wall else None,
        "p50_ms": round(float(np.percentile(a, 50)), 3) if a.size else None,
        "p90_ms": round(float(np.percentile(a, 90)), 3) if a.size else None,
        "p99_ms": round(float(np.percentile(a, 99)), 3) if a.size else None,
        "max_ms": round(float(a.max()), 3) if a.size else None,
    }


async def open_loop_raw(nc, subject: str, bodies: list[bytes], rate: float, duration: float,
                        timeout: float = 2.0, offset: int = 0):
    """Requests on a fixed schedule; (latencies in s, errors by kind, sent, wall seconds)."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    n = int(rate * duration)
    interval = 1.0 / rate
    tasks = []
    pending: set = set()
    clock = time.perf_counter  # uvloop's loop.time() has only millisecond resolution

    def check(data: bytes, scheduled: float) -> None:
        if subject != ECHO_SUBJECT and not data.startswith(b'{"ok":true'):
            code = json.loads(data).get("error", {}).get("code", "bad_reply")
            errors[code] = errors.get(code, 0) + 1
            return
        lat.append(clock() - scheduled)

    def failed(e: BaseException) -> None:
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    async def one(i: int, scheduled: float):  # nats-py: request() is a coroutine
        try:
            check((await nc.request(subject, bodies[(offset + i) % len(bodies)],
                                    timeout=timeout)).data, scheduled)
        except Exception as e:  # noqa: BLE001 - counted
            failed(e)

    def done(fut, scheduled: float) -> None:  # the lean requester: request() is a future
        pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            failed(fut.exception() if not fut.cancelled() else TimeoutError())
        else:
            check(fut.result().data, scheduled)

    lean = not asyncio.iscoroutinefunction(nc.request)
    # every request due is sent at each wake-up (a timer per request would cost the
    # generator more CPU than the request, and uvloop's timers have 1 ms resolution)
    t0 = clock() + 0.05
    i = 0
    while i < n:
        now = clock()
        while i < n and t0 + i * interval <= now:
            scheduled = t0 + i * interval
            if lean:
                fut = nc.request(subject, bodies[(offset + i) % len(bodies)], timeout)
                pending.add(fut)
                fut.add_done_callback(lambda f, s=scheduled: done(f, s))
            else:
                tasks.append(asyncio.create_task(one(i, scheduled)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i * interval - clock()))
    await asyncio.gather(*tasks)
    while pending:
        await asyncio.wait(list(pending))
        await asyncio.sleep(0)  # the done callbacks run
    return lat, errors, n, clock() - t0


def spawn(argv: list[str], env: dict) -> subprocess.Popen:
    from tipsdev.launcher import child_preexec

    p = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         preexec_fn=child_preexec())
    line = p.stdout.readline()
    if b"ready" not in line:
        p.kill()
        raise RuntimeError(f"{argv} did not start: {line!r}")
    return p


def stop(p: subprocess.Popen, timeout: float = 10.0) -> float | None:
    """SIGTERM, then SIGKILL past ``timeout``; returns the seconds it took to exit after
    SIGTERM (None if it had to be killed)."""
    if p.poll() is not None:
        return 0.0
    t0 = time.monotonic()
    p.terminate()
    try:
        p.wait(timeout=timeout)
        return round(time.monotonic() - t0, 2)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)
        return None


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (from /proc; Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (from /proc; Linux)."""
    return sum(proc_cpu_split(pid))


# what the kernel does for the scorer per decision (``--perf-stat``): its syscalls, loop
# turns (epoll_pwait) and context switches
PERF_EVENTS = ["syscalls:sys_enter_read", "syscalls:sys_enter_write",
               "syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_getpid",
               "context-switches"]


def redis_commandstats(url: str | None) -> dict[str, tuple[int, int]]:
    """Redis's own count of calls and microseconds per command (``INFO commandstats``:
    the time inside each command, not the socket I/O around it); empty where not
    reachable."""
    if not url:
        return {}
    import redis

    try:
        r = redis.Redis.from_url(url, socket_timeout=2)
        try:
            stats = r.info("commandstats")
        finally:
            r.close()
    except (redis.RedisError, OSError):
        return {}
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for k, v in stats.items() if isinstance(v, dict)}


def commandstats_delta(a: dict, b: dict) -> dict[str, tuple[int, int]]:
    """(calls, µs) per command between two :func:`redis_commandstats` readings (the INFO
    calls themselves left out)."""
    return {cmd: (calls - a.get(cmd, (0, 0))[0], usec - a.get(cmd, (0, 0))[1])
            for cmd, (calls, usec) in b.items()
            if cmd != "info" and calls > a.get(cmd, (0, 0))[0]}


class PerfStat:
    """``perf stat`` attached to the scorer processes for one window (``None`` counts when
    perf is missing or not permitted: the run goes on without them)."""

    def __init__(self, pids: list[int]):
        self.out = Path(f"/tmp/score-bench-perf-{os.getpid()}.csv")
        self.proc = None
        try:
            self.proc = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-o", str(self.out), "-e", ",".join(PERF_EVENTS),
                 "-p", ",".join(map(str, pids))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            self.proc = None

    def stop(self) -> dict[str, float] | None:
        if self.proc is None:
            return None
        self.proc.send_signal(2)  # SIGINT: perf writes its counts and exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        counts = {}
        try:
            for line in self.out.read_text().splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].strip().isdigit():
                    counts[f[2].split(":")[-1].replace("sys_enter_", "")] = float(f[0])
        finally:
            self.out.unlink(missing_ok=True)
        return counts or None


async def measure(nc, bodies, rate: float, duration: float, scorers, echo_proc=None,
                  servers: dict[str, int] | None = None, windows: int = 5,
                  perf: bool = False, redis_url: str | None = None) -> dict:
    """The echo floor and tips.score at ``rate`` in alternating windows (``windows`` of
    each, ``duration / windows`` seconds: echo, score, echo, score, …), so both sample the
    same minutes of a noisy box: a burst of noise from elsewhere lands on both, not on one
    side of the ratio. p99 is over all of a side's windows. CPU per decision: the scorers'
    over the score windows, beside the floor's: the echo responder's per message over the
    echo windows (nats-py receiving a request and publishing its reply, nothing else), the
    client's (this process) per request, nats-server's and redis-server's per request."""
    servers = servers or {}
    side = {k: {"lat": [], "errors": {}, "n": 0, "wall": 0.0, "client": 0.0,
                "servers": dict.fromkeys(servers, 0.0)} for k in ("echo", "score")}
    echo_cpu = cpu = 0.0
    split = [0.0, 0.0]  # the scorers' user and system seconds over the score windows
    events: dict[str, float] = {}
    cmdstats: dict[str, tuple[int, int]] = {}  # Redis's (calls, µs) per command
    w = max(1, windows)
    for i in range(w):
        for name, subject in (("echo", ECHO_SUBJECT), ("score", "tips.score")):
            d = side[name]
            s0 = {k: proc_cpu_s(pid) for k, pid in servers.items()}
            p0 = (sum(proc_cpu_s(p.pid) for p in scorers) if name == "score" else
                  proc_cpu_s(echo_proc.pid) if echo_proc else 0.0)
            if name == "score":
                u0 = [proc_cpu_split(p.pid) for p in scorers]
                ps = PerfStat([p.pid for p in scorers]) if perf else None
                rs0 = redis_commandstats(redis_url)
            m0 = time.process_time()
            lat, errors, n, wall = await open_loop_raw(nc, subject, bodies, rate, duration / w,
                                                       offset=i * 7919)
            d["client"] += time.process_time() - m0
            p1 = (sum(proc_cpu_s(p.pid) for p in scorers) if name == "score" else
                  proc_cpu_s(echo_proc.pid) if echo_proc else 0.0)
            if name == "score":
                cpu += p1 - p0
                for p, (us0, sy0) in zip(scorers, u0):
                    us1, sy1 = proc_cpu_split(p.pid)
                    split[0] += us1 - us0
                    split[1] += sy1 - sy0
                for k, v in ((ps.stop() if ps else None) or {}).items():
                    events[k] = events.get(k, 0.0) + v
                for k, (calls, usec) in commandstats_delta(
                        rs0, redis_commandstats(redis_url)).items():
                    c0, u0 = cmdstats.get(k, (0, 0))
                    cmdstats[k] = (c0 + calls, u0 + usec)
            else:
                echo_cpu += p1 - p0
            for k, pid in servers.items():
                d["servers"][k] += proc_cpu_s(pid) - s0[k]
            d["lat"] += lat
            d["n"] += n
            d["wall"] += wall
            for k, v in errors.items():
                d["errors"][k] = d["errors"].get(k, 0) + v
    echo, score = (summarize(subj, rate, duration, side[k]["lat"], side[k]["errors"],
                             side[k]["n"], side[k]["wall"])
                   for k, subj in (("echo", ECHO_SUBJECT), ("score", "tips.score")))
    ratio = (score["p99_ms"] / echo["p99_ms"]) if echo["p99_ms"] and score["p99_ms"] else None
    per = lambda c, n: round(c / max(n, 1) * 1e6, 1)  # noqa: E731
    return {"rate": rate, "windows": w, "score": score, "echo": echo,
            "p99_ratio_to_echo": round(ratio, 2) if ratio else None,
            "scorer_cpu_us_per_decision": per(cpu, score["ok"]),
            "scorer_user_sys_us_per_decision": [per(split[0], score["ok"]),
                                                per(split[1], score["ok"])],
            **({"scorer_events_per_decision": {k: round(v / max(score["ok"], 1), 2)
                                               for k, v in events.items()}} if events else {}),
            # Redis's time inside each command per decision (the rest of redis-server's
            # CPU per decision is its socket I/O and wake-ups)
            **({"redis_commands_per_decision": {
                k: {"calls": round(calls / max(score["ok"], 1), 3),
                    "us": round(usec / max(score["ok"], 1), 2)}
                for k, (calls, usec) in sorted(cmdstats.items())}} if cmdstats else {}),
            "echo_cpu_us_per_message": per(echo_cpu, echo["ok"]) if echo_proc else None,
            "client_cpu_us_per_request": {k: per(side[k]["client"], side[k]["n"])
                                          for k in ("echo", "score")},
            "server_cpu_us_per_decision": {k: per(v, score["ok"]) for k, v in
                                           side["score"]["servers"].items()},
            "server_cpu_us_per_echo": {k: per(v, echo["ok"]) for k, v in
                                       side["echo"]["servers"].items()},
            "loadavg": os.getloadavg()[0],
            "ok": bool(ratio is not None and ratio <= 3.0 and score["errors"] == 0)}


async def sweep(nc, bodies, args, scorers, results, out, echo_proc=None,
                servers=None, redis_url=None) -> None:
    """Find the knee: raise the rate by ``--step`` until the median p99 over ``--repeats``
    runs passes 3x the echo floor (or requests fail); the knee is the last rate under it."""
    rows = results.setdefault("sweep", {"repeats": args.repeats, "rates": []})["rates"]
    rate = args.sweep_start
    while rate <= args.sweep_max:
        runs = [await measure(nc, bodies, rate, args.duration, scorers, echo_proc, servers,
                              args.windows, args.perf_stat, redis_url)
                for _ in range(args.repeats)]
        ratios = sorted(r["p99_ratio_to_echo"] or 1e9 for r in runs)
        p99s = sorted(r["score"]["p99_ms"] or 1e9 for r in runs)
        cpus = sorted(r["scorer_cpu_us_per_decision"] for r in runs)
        floor = sorted(r["echo_cpu_us_per_message"] or 0.0 for r in runs)
        row = {"rate": rate, "p99_ms_median": p99s[len(p99s) // 2],
               "p99_ms_min": p99s[0], "p99_ms_max": p99s[-1],
               "echo_p99_ms_median": sorted(r["echo"]["p99_ms"] or 0 for r in runs)[len(runs) // 2],
               "ratio_median": ratios[len(ratios) // 2], "ratio_min": ratios[0],
               "ratio_max": ratios[-1], "cpu_us_per_decision_median": cpus[len(cpus) // 2],
               "cpu_us_per_decision_min": cpus[0], "cpu_us_per_decision_max": cpus[-1],
               "echo_cpu_us_per_message_median": floor[len(floor) // 2],
               "user_sys_us_per_decision_median": sorted(
                   (r["scorer_user_sys_us_per_decision"] for r in runs),
                   key=sum)[len(runs) // 2],
               "errors": sum(r["score"]["errors"] for r in runs),
               "ok": ratios[len(ratios) // 2] <= 3.0 and
               sum(r["score"]["errors"] for r in runs) == 0, "runs": runs}
        rows.append(row)
        print(f"sweep {rate:.0f}/s x{args.repeats}: p99 median {row['p99_ms_median']} ms "
              f"[{row['p99_ms_min']}, {row['p99_ms_max']}], ratio median {row['ratio_median']} "
              f"[{row['ratio_min']}, {row['ratio_max']}], scorer CPU "
              f"{row['cpu_us_per_decision_median']} us/decision [{cpus[0]}, {cpus[-1]}] "
              f"(echo responder {row['echo_cpu_us_per_message_median']} us/message)",
              flush=True)
        write(results, out)
        if not row["ok"]:
            break
        rate += args.step
    good = [r for r in rows if r["ok"]]
    results["sweep"]["knee_rate"] = good[-1]["rate"] if good else None
    results["sweep"]["knee_cpu_us_per_decision"] = (good[-1]["cpu_us_per_decision_median"]
                                                     if good else None)
    results["sweep"]["knee_echo_cpu_us_per_message"] = (
        good[-1]["echo_cpu_us_per_message_median"] if good else None)


def record_knee(res: dict, out: str) -> None:
    """The knee of a finished sweep also goes into bench/results/score.json (``knee``, by
    replica count), beside the fixed-rate figures: one file says what the scorer holds."""
    sw, cfg = res["sweep"], res["config"]
    good = [r for r in sw["rates"] if r["ok"]]
    last = good[-1] if good else None
    summary = {"knee_rate": sw.get("knee_rate"), "repeats": sw["repeats"],
               "scorer_cpu_us_per_decision": sw.get("knee_cpu_us_per_decision"),
               "echo_responder_cpu_us_per_message": sw.get("knee_echo_cpu_us_per_message"),
               "p99_ms_median": last["p99_ms_median"] if last else None,
               "ratio_median": last["ratio_median"] if last else None,
               "first_rate_over": next(({"rate": r["rate"], "ratio_median": r["ratio_median"],
                                         "p99_ms_median": r["p99_ms_median"]}
                                        for r in sw["rates"] if not r["ok"]), None),
               "client": cfg.get("client"), "duration_s": cfg["duration_s"],
               "loadavg_at_end": cfg["loadavg_at_end"], "when": cfg["when"],
               "details": os.path.relpath(out, ROOT)}
    main = Path(OUT)
    # only a sweep written among the results (a trial run elsewhere leaves score.json alone)
    if Path(out).resolve() == main.resolve() or Path(out).resolve().parent != main.parent:
        return
    doc = json.loads(main.read_text()) if main.exists() else {}
    doc.setdefault("knee", {})[str(cfg["replicas"])] = summary
    write(doc, str(main))


def write(res: dict, out: str) -> None:
    """``res`` to ``out`` at once (no half-written file). A fixed-rate run keeps the knee
    that the sweeps recorded in the same file (:func:`record_knee`)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if "knee" not in res and "sweep" not in res and Path(out).exists():
        try:
            knee = json.loads(Path(out).read_text()).get("knee")
        except (ValueError, AttributeError):
            knee = None
        if knee:
            res = {**res, "knee": knee}
    tmp = Path(out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(out)


async def run(args) -> dict:
    import nats

    from tipsdev.launcher import EmbeddedStack

    stack = None
    if args.external:
        env = {"NATS_URL": os.environ["NATS_URL"], "REDIS_URL": os.environ["REDIS_URL"]}
    else:
        stack = EmbeddedStack().start()
        env = stack.env()
    env.update({"SHADOW_POLICIES": args.shadow, "DEFAULT_POLICY": args.policy,
                "METRICS_PORT": "-1", "LOG_LEVEL": "WARNING"})
    results = {"rates": [], "complete": False}
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(args.replicas):
            # SCORER_PYTHON: another interpreter for the scorer (e.g. a newer CPython, with
            # PYTHONPATH naming shared/src and scorer/src), the rest of the bench unchanged
            procs.append(spawn([os.environ.get("SCORER_PYTHON") or sys.executable, "-m",
                                "scorer.main"], env))
        scorers = list(procs)
        echo_proc = spawn([sys.executable, __file__, "--echo-server", env["NATS_URL"]], env)
        procs.append(echo_proc)
        if args.client == "lean":  # the generator's own CPU kept small (bench/leanclient.py)
            from leanclient import LeanRequester

            nc = await LeanRequester.connect(env["NATS_URL"])
        else:
            nc = await nats.connect(env["NATS_URL"], pending_size=64 * 1024 * 1024)
        bodies = payloads(args.users)
        await open_loop(nc, "tips.score", bodies, 200, 3)  # warm-up: users' state, JIT paths
        servers = {n: p.popen.pid for n, p in stack.procs.items()} if stack else {}
        if args.sweep:
            await sweep(nc, bodies, args, scorers, results, args.out, echo_proc, servers,
                        env["REDIS_URL"])
        for rate in ([] if args.sweep else args.rates):
            row = await measure(nc, bodies, rate, args.duration, scorers, echo_proc, servers,
                                args.windows, args.perf_stat, env["REDIS_URL"])
            score, echo = row["score"], row["echo"]
            ratio = row["p99_ratio_to_echo"]
            target = 5.0 if rate <= 500 else 15.0
            row.update(target_p99_ms=target, meets_target=bool(
                score["p99_ms"] is not None and score["p99_ms"] <= target
                and score["errors"] == 0 and ratio is not None and ratio <= 3.0))
            results["rates"].append(row)
            print(f"rate {rate}/s: score p50 {score['p50_ms']} ms p99 {score['p99_ms']} ms "
                  f"max {score['max_ms']} ms errors {score['errors']} | echo p99 "
                  f"{echo['p99_ms']} ms | ratio {results['rates'][-1]['p99_ratio_to_echo']}",
                  flush=True)
            write(results, args.out)  # what is measured is kept, whatever happens next
        await nc.close()
        results["complete"] = True
    except BaseException as e:
        results["error"] = repr(e)
        raise
    finally:
        # the scorer's own shutdown is part of what is measured: it must exit within 10 s
        stops = [stop(p) for p in procs[:args.replicas]]
        results["scorer_stop_s"] = (None if any(x is None for x in stops) else max(stops)
                                    ) if stops else None
        for p in procs[args.replicas:]:
            stop(p)
        if stack:
            stack.stop()
        results["config"] = {"policy": args.policy, "shadow": args.shadow, "users": args.users,
                             "client": args.client,
                             "replicas": args.replicas,
                             "duration_s": args.duration, "cpus": os.cpu_count(),
                             "python": platform.python_version(),
                             "loadavg_at_end": os.getloadavg(),
                             "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write(results, args.out)
    return results


def use_uvloop() -> None:
    """The benches' processes run on uvloop, as the workers do (when it is installed)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[500, 1000])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--policy", default="egreedy-v1")
    ap.add_argument("--shadow", default="egreedy-v2,linucb")
    ap.add_argument("--external", action="store_true", help="use NATS_URL/REDIS_URL")
    ap.add_argument("--replicas", type=int, default=1, help="scorer processes (queue group)")
    ap.add_argument("--client", choices=["lean", "nats-py"], default="lean",
                    help="the load generator's requester: lean (the NATS protocol by hand, "
                    "bench/leanclient.py) or nats-py's request()")
    ap.add_argument("--sweep", action="store_true", help="find the knee: the highest rate "
                    "whose median p99 over --repeats runs stays <= 3x the echo floor")
    ap.add_argument("--sweep-start", type=float, default=250)
    ap.add_argument("--sweep-max", type=float, default=3000)
    ap.add_argument("--step", type=float, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--windows", type=int, default=5, help="sweep: echo and tips.score "
                    "alternate in this many windows per run (both sample the same noise)")
    ap.add_argument("--perf-stat", action="store_true",
                    help="count the scorer's syscalls and context switches per decision "
                         "(perf stat attached during the tips.score windows)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--echo-server", help=argparse.SUPPRESS)
    args = ap.parse_args()
    use_uvloop()
    if args.echo_server:
        asyncio.run(echo_server(args.echo_server))
        return 0
    from tipsdev.launcher import exit_on_sigterm

    exit_on_sigterm()  # SIGTERM / Ctrl-C: partial results written, every process stopped
    res = asyncio.run(run(args))
    if res.get("sweep"):
        sw = res["sweep"]
        record_knee(res, args.out)
        print(f"knee ({res['config']['replicas']} scorer replica(s)): {sw.get('knee_rate')} req/s "
              f"(median p99 <= 3x echo over {sw['repeats']} runs), scorer CPU "
              f"{sw.get('knee_cpu_us_per_decision')} us/decision (the echo responder "
              f"{sw.get('knee_echo_cpu_us_per_message')} us/message); wrote {args.out}")
        return 0
    ok = all(r["meets_target"] for r in res["rates"])
    summary = "; ".join(f"{int(r['rate'])}/s p99 {r['score']['p99_ms']} ms "
                        f"(echo {r['echo']['p99_ms']} ms, x{r['p99_ratio_to_echo']}, "
                        f"errors {r['score']['errors']})" for r in res["rates"])
    print(f"tips.score: {summary} -> {'targets met' if ok else 'TARGETS MISSED'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

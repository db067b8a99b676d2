"""Proof by killing nodes: the services on a real cluster under load, one NATS node and
then one Redis master killed with SIGKILL.

    python bench/cluster_failover.py [--rate 300] [--feedback 0.3]
        -> bench/results/cluster_failover.{json,md}

A :class:`tipsdev.cluster.ClusterStack` (3 nats-server nodes, one JetStream cluster with
every stream R3; a Redis Cluster of 3 masters + 3 replicas, ``cluster-node-timeout``
2 s), one scorer and one feedback consumer (real processes), open-loop ``tips.score``
traffic at ``--rate`` requests/s over 4 client connections spread over the 3 NATS nodes,
and a reaction published (until the stream acknowledges it, ``Nats-Msg-Id`` = event id)
for ``--feedback`` of the decisions. Timeline: ``--phase`` s of steady traffic, ``kill -9``
of the NATS node the scorer is connected to, ``--phase`` s, ``kill -9`` of the Redis master
holding most of the users' slots (its replica is promoted), ``--phase`` s, then the
traffic stops and every reward is awaited.

Reported per failover: scorer errors and fallbacks in the window after the kill, how long
they lasted (first to last bad reply after the kill), p50/p99 of the replies before,
during (the 10 s after the kill) and after; then rewards published, applied, doubled
(state recomputed with numpy from the decision records: n per arm model) and the
idempotency claims by outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests package: tests.chaoslib

import nats

from tests.chaoslib import (
    LatencyLog,
    Ledger,
    claim_keys,
    exactly_once_report,
    get_many,
    loadavg,
    score,
)
from tipsdev.cluster import ClusterStack
from tipsdev.launcher import exit_on_sigterm
from tipsdev.testing import spawn_worker
from tipsml.rewards import REWARD_TABLE
from tipsml.state import StateStore, connect_redis

OUT = ROOT / "bench" / "results"
REACTIONS = list(REWARD_TABLE)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * (len(xs) - 1)))] * 1000, 1)


def window_stats(rows, t0: float, t1: float) -> dict:
    sel = [r for r in rows if t0 <= r[0] < t1]
    ok = [r[1] for r in sel if r[2] == "ok"]
    return {"requests": len(sel), "ok": len(ok),
            "fallbacks": sum(1 for r in sel if r[2] == "fallback"),
            "errors": sum(1 for r in sel if r[2] not in ("ok", "fallback")),
            "p50_ms": pct([r[1] for r in sel], 0.5), "p99_ms": pct([r[1] for r in sel], 0.99)}


def scorer_node(cs: ClusterStack) -> str:
    """The NATS node the scorer is connected to (monitoring endpoint /connz)."""
    import urllib.request

    for i, mp in enumerate(cs.nats_monitor_ports):
        with urllib.request.urlopen(f"http://127.0.0.1:{mp}/connz?limit=1024", timeout=2) as fh:
            conns = json.loads(fh.read()).get("connections") or []
        if any(c.get("name") == "scorer" for c in conns):
            return f"nats{i + 1}"
    return "nats1"


def wait_promoted(cs: ClusterStack, victim: str, timeout: float) -> float:
    """Seconds until the killed master's replica is a master (3 masters again, without
    the victim) and every live node says cluster_state:ok."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = cs.redis_masters()
        if victim not in m and len(m) == cs.masters and cs._redis_ok():
            return time.monotonic() - t0
        time.sleep(0.1)
    return float("nan")


def outage(rows, t_kill: float, t_end: float) -> dict:
    bad = [r for r in rows if t_kill <= r[0] < t_end and r[2] != "ok"]
    codes: dict[str, int] = {}
    for r in bad:
        codes[r[2]] = codes.get(r[2], 0) + 1
    return {"bad_replies": len(bad), "codes": codes,
            "fallbacks": sum(1 for r in bad if r[2] == "fallback"),
            "errors": sum(1 for r in bad if r[2] != "fallback"),
            "first_bad_s": round(bad[0][0] - t_kill, 2) if bad else None,
            "lasted_s": round(bad[-1][0] - t_kill, 2) if bad else 0.0}


async def run(args) -> dict:
    with ClusterStack() as cs:
        env = {**cs.env(), "FEEDBACK_ACK_WAIT_S": "5", "FEEDBACK_MAX_DELIVER": "20",
               "FEEDBACK_BACKOFF_S": "[0.25,0.5,1,1,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2]",
               "FEEDBACK_MISSING_GRACE_S": "30", "REDIS_TIMEOUT_S": "0.25",
               "METRICS_PORT": "-1", "LOG_LEVEL": "WARNING"}
        servers = cs.nats_url.split(",")
        scorer = spawn_worker("scorer.main", {**env, "NATS_URL": cs.nats_url},
                              log_path=str(cs.workdir / "scorer.log"))
        consumer = spawn_worker("feedback_consumer.main",
                                {**env, "NATS_URL": ",".join(servers[1:] + servers[:1])},
                                log_path=str(cs.workdir / "consumer.log"))
        ncs = [await nats.connect(servers=servers[i % 3:] + servers[:i % 3],
                                  max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                  pending_size=64 * 1024 * 1024) for i in range(4)]
        r = connect_redis(cs.redis_url)
        await r.initialize()  # the slot map, for picking the master to kill
        store = StateStore(r)
        log = LatencyLog()
        ledger = Ledger()
        rng = random.Random(11)
        stop = asyncio.Event()
        pub_failures = [0]
        pending: set[asyncio.Task] = set()
        users = [f"fo-{i}" for i in range(args.users)]

        async def feedback(nc, rep, user):
            ev = f"fo-{rep['decision_id']}"
            reaction = rng.choice(REACTIONS)
            body = json.dumps({"event_id": ev, "decision_id": rep["decision_id"],
                               "user_id": user, "reaction": reaction,
                               "ts": time.time()}).encode()
            js = nc.jetstream(timeout=2.0)
            deadline = time.monotonic() + 120
            while True:  # a careful producer: retry until acked, same Nats-Msg-Id
                try:
                    await js.publish(f"feedback.{reaction}", body, headers={"Nats-Msg-Id": ev},
                                     timeout=2.0)
                    ledger.add(ev, rep["decision_id"], user, REWARD_TABLE[reaction])
                    return
                except Exception:  # noqa: BLE001 - counted, retried
                    pub_failures[0] += 1
                    if time.monotonic() > deadline:
                        return
                    await asyncio.sleep(0.2)

        async def one(i):
            nc = ncs[i % len(ncs)]
            user = users[i % len(users)]
            t = time.monotonic()
            try:
                rep = await score(nc, user, i, timeout=2.0)
            except Exception as e:  # noqa: BLE001 - a client-side failure is a failure too
                rep = {"ok": False, "error": {"code": f"exception:{type(e).__name__}"}}
            log.add(t, time.monotonic() - t, rep)
            if rep.get("ok") and rng.random() < args.feedback:
                await feedback(nc, rep, user)

        async def traffic():
            i, nxt = 0, time.monotonic()
            while not stop.is_set():
                tk = asyncio.create_task(one(i))
                pending.add(tk)
                tk.add_done_callback(pending.discard)
                i += 1
                nxt += 1.0 / args.rate
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))

        events = {}
        t_start = time.monotonic()
        load = asyncio.create_task(traffic())
        await asyncio.sleep(args.phase)
        # --- kill -9 the NATS node the scorer is connected to
        victim_nats = scorer_node(cs)
        events["nats_kill"] = time.monotonic()
        cs.kill(victim_nats)
        await asyncio.sleep(args.phase)
        # --- kill -9 the Redis master with the most of our users' keys
        masters = cs.redis_masters()
        from redis.asyncio.cluster import RedisCluster  # noqa: F401 - type of r
        counts: dict[int, int] = {}
        for u in users:
            node = r.get_node_from_key(f"tips:st:{{{u}}}:x")
            counts[node.port] = counts.get(node.port, 0) + 1
        port = max(counts, key=counts.get)
        victim = next(n for n, p in masters.items() if p == port)
        roles_before = cs.redis_roles()
        events["redis_kill"] = time.monotonic()
        cs.kill(victim)
        ok_after = await asyncio.to_thread(wait_promoted, cs, victim, 60.0)
        events["redis_cluster_ok_s"] = round(ok_after, 2)
        roles_after = cs.redis_roles()
        await asyncio.sleep(max(0.0, args.phase - ok_after))
        stop.set()
        await load
        events["traffic_end"] = time.monotonic()
        if pending:
            await asyncio.wait(pending, timeout=150)
        # --- every reward applied?
        t_wait = time.monotonic()
        keys = claim_keys(ledger.events)
        applied_claims = 0
        await r.nodes_manager.initialize()  # this client's slot map, after the failover
        while time.monotonic() - t_wait < 180:
            vals = []
            try:
                for j in range(0, len(keys), 1000):
                    vals += await get_many(r, keys[j:j + 1000])
            except Exception:  # noqa: BLE001 - a stale slot map: refresh, look again
                await r.nodes_manager.initialize()
                await asyncio.sleep(1.0)
                continue
            applied_claims = sum(1 for v in vals if v is not None)
            if applied_claims == len(keys):
                break
            await asyncio.sleep(1.0)
        rep = await exactly_once_report(r, store, ledger)
        rows = log.rows
        tn, tr, te = events["nats_kill"], events["redis_kill"], events["traffic_end"]
        res = {
            "config": {"rate_req_s": args.rate, "feedback_fraction": args.feedback,
                       "phase_s": args.phase, "users": args.users, "nats_nodes": 3,
                       "stream_replicas": 3, "redis": "3 masters + 3 replicas",
                       "cluster_node_timeout_ms": 2000, "scorer_redis_timeout_ms": 250,
                       "cpus": os.cpu_count()},
            "achieved_rate_req_s": round(len(rows) / (te - t_start), 1),
            "phases": {
                "before": window_stats(rows, t_start + 2, tn),
                "nats_kill_during_10s": window_stats(rows, tn, tn + 10),
                "between": window_stats(rows, tn + 10, tr),
                "redis_kill_during_10s": window_stats(rows, tr, tr + 10),
                "after": window_stats(rows, tr + 10, te),
            },
            "nats_failover": {**outage(rows, tn, tr), "killed": victim_nats,
                              "scorer_was_connected_to_it": True},
            "redis_failover": {**outage(rows, tr, te), "killed": victim,
                               "replica_promoted_after_s": events["redis_cluster_ok_s"],
                               "roles_before": roles_before, "roles_after": roles_after},
            "feedback_publish_retries": pub_failures[0],
            "rewards_published": len(ledger.events),
            "rewards_claimed": applied_claims,
            "rewards_applied_outcome": rep["outcomes"].get("applied", 0),
            "rewards_lost": rep["lost"], "rewards_doubled": rep["doubled"],
            "state_mismatched_arms": rep["mismatched_arms"], "claims": rep["outcomes"],
            "loadavg": loadavg(),
        }
        for nc in ncs:
            await nc.close()
        await store.close()
        scorer.stop()
        consumer.stop()
        return res


def write(res: dict, out: Path) -> None:
    out.write_text(json.dumps(res, indent=2))
    ph = res["phases"]
    nf, rf = res["nats_failover"], res["redis_failover"]
    md = ["# Failover under load (`python bench/cluster_failover.py`)", "",
          f"3 nats-server nodes (JetStream cluster, streams R3) + Redis Cluster 3 masters / 3 "
          f"replicas on this machine ({res['config']['cpus']} CPUs, shared; load average "
          f"{res['loadavg'][0]:.1f} at the end), one scorer, one feedback consumer. Open-loop "
          f"`tips.score` at {res['config']['rate_req_s']} req/s (achieved "
          f"{res['achieved_rate_req_s']}), a reaction on {res['config']['feedback_fraction']:.0%} "
          f"of the decisions.", "",
          "| window | requests | ok | fallbacks | errors | p50 ms | p99 ms |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"before": "before", "nats_kill_during_10s": "10 s after kill -9 of a NATS node",
             "between": "between", "redis_kill_during_10s": "10 s after kill -9 of a Redis master",
             "after": "after"}
    for k, lab in names.items():
        w = ph[k]
        md.append(f"| {lab} | {w['requests']} | {w['ok']} | {w['fallbacks']} | {w['errors']} | "
                  f"{w['p50_ms']} | {w['p99_ms']} |")
    md += ["", "| failover | bad replies (fallback / error) | lasted | notes |", "|---|---:|---:|---|",
           f"| NATS node `{nf['killed']}` | {nf['fallbacks']} / {nf['errors']} | "
           f"{nf['lasted_s']} s | error codes {nf['codes'] or '-'} |",
           f"| Redis master `{rf['killed']}` | {rf['fallbacks']} / {rf['errors']} | "
           f"{rf['lasted_s']} s | its replica promoted after {rf['replica_promoted_after_s']} s; "
           f"codes {rf['codes'] or '-'} |", "",
           f"Rewards published {res['rewards_published']}, claimed {res['rewards_claimed']}, "
           f"applied {res['rewards_applied_outcome']}; lost {res['rewards_lost']}, doubled "
           f"{res['rewards_doubled']}, arm models differing from numpy "
           f"{res['state_mismatched_arms']}; publish retries during the failovers "
           f"{res['feedback_publish_retries']}. Claims: {res['claims']}."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def combine(paths: list[str], out: Path) -> None:
    """Runs of this script (their JSON files) → one table: median [min–max] per figure."""
    import statistics

    runs = [json.loads(Path(p).read_text()) for p in paths]

    def agg(get) -> str:
        xs = [get(r) for r in runs]
        xs = [x for x in xs if x is not None]
        if not xs:
            return "-"
        med = statistics.median(xs)
        return f"{med:g} [{min(xs):g}–{max(xs):g}]" if len(xs) > 1 else f"{med:g}"

    loads = ", ".join(f"{r['loadavg'][0]:.0f}" for r in runs)
    names = {"before": "before", "nats_kill_during_10s": "10 s after kill -9 of the scorer's NATS node",
             "between": "between", "redis_kill_during_10s": "10 s after kill -9 of a Redis master",
             "after": "after"}
    md = [f"# Failover under load: {len(runs)} runs (`python bench/cluster_failover.py`, "
          "then `--combine`)", "",
          f"Each run: 3 nats-server nodes (R3 streams) + Redis Cluster 3 masters / 3 replicas on "
          f"this shared {runs[0]['config']['cpus']}-CPU machine (load average at the end of the "
          f"runs: {loads}), one scorer, one feedback "
          f"consumer, open-loop `tips.score` at {runs[0]['config']['rate_req_s']:g} req/s, a "
          f"reaction on {runs[0]['config']['feedback_fraction']:.0%} of the decisions. "
          "Median [min–max] over the runs.", "",
          "| window | fallbacks | errors | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for k, lab in names.items():
        md.append(f"| {lab} | {agg(lambda r, k=k: r['phases'][k]['fallbacks'])} | "
                  f"{agg(lambda r, k=k: r['phases'][k]['errors'])} | "
                  f"{agg(lambda r, k=k: r['phases'][k]['p50_ms'])} | "
                  f"{agg(lambda r, k=k: r['phases'][k]['p99_ms'])} |")
    md += ["", "| failover | fallbacks | errors | bad replies lasted (s) | replica promoted after (s) |",
           "|---|---:|---:|---:|---:|",
           f"| NATS node | {agg(lambda r: r['nats_failover']['fallbacks'])} | "
           f"{agg(lambda r: r['nats_failover']['errors'])} | "
           f"{agg(lambda r: r['nats_failover']['lasted_s'])} | – |",
           f"| Redis master | {agg(lambda r: r['redis_failover']['fallbacks'])} | "
           f"{agg(lambda r: r['redis_failover']['errors'])} | "
           f"{agg(lambda r: r['redis_failover']['lasted_s'])} | "
           f"{agg(lambda r: r['redis_failover']['replica_promoted_after_s'])} |", "",
           "| run | rewards published | applied | lost | doubled | arm models ≠ numpy |",
           "|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(runs, 1):
        md.append(f"| {i} | {r['rewards_published']} | {r['rewards_applied_outcome']} | "
                  f"{r['rewards_lost']} | {r['rewards_doubled']} | {r['state_mismatched_arms']} |")
    out.write_text(json.dumps({"runs": runs}, indent=2))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--feedback", type=float, default=0.3)
    ap.add_argument("--phase", type=float, default=20.0)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--out", default=str(OUT / "cluster_failover.json"))
    ap.add_argument("--combine", nargs="+", metavar="RUN.json",
                    help="only combine earlier runs' JSON files into --out (median, spread)")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, Path(args.out))
        return
    res = asyncio.run(run(args))
    write(res, Path(args.out))


if __name__ == "__main__":
    main()

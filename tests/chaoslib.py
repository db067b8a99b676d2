"""Helpers of the fault and fuzz suites: real stacks, traffic, exactly-once accounting.

Every figure a fault test measures is passed to :func:`record`; when ``CHAOS_RESULTS``
names a file, it is appended there as one JSON line (``bench/chaos_report.py`` runs the
suites with it set and renders ``bench/results/chaos.json`` + ``CHAOS.md``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np

from tipsml.bandits import decode_arm, dim_of, stored_update
from tipsml.messaging.connection import request_json
from tipsml.state import StateStore, decision_key, event_key, state_key

SHORT = os.environ.get("CHAOS_SHORT") == "1"  # the CI form (`make chaos`)

# fast redelivery so a killed consumer's messages come back within seconds
FAST_FEEDBACK = {"FEEDBACK_ACK_WAIT_S": "2", "FEEDBACK_BACKOFF_S": "[0.25,0.5,1,1,2,2,2]",
                 "FEEDBACK_MAX_DELIVER": "8", "FEEDBACK_BATCH": "128",
                 # an unknown decision is retried this long before it counts as expired
                 "FEEDBACK_MISSING_GRACE_S": "2"}


def record(scenario: str, **figures) -> dict:
    row = {"scenario": scenario, "short": SHORT, "ts": time.time(), **figures}
    print("CHAOS", json.dumps(row, default=str))
    path = os.environ.get("CHAOS_RESULTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
    return row


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def metric(port: int, name: str, timeout: float = 2.0, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``, read from a worker's
    real /metrics endpoint (0.0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as fh:
        text = fh.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


# ---------------------------------------------------------------- traffic
async def score(nc, user: str, i: int = 0, timeout: float = 2.0, **extra) -> dict:
    return await request_json(nc, "tips.score", {
        "user_id": user,
        "context": {"hour_of_day": (i * 5) % 24, "day_of_week": i % 7,
                    "tasks": [{"title": "t", "priority": i % 5, "overdue": i % 2 == 0}]},
        "profile_features": {"completion_rate": 0.5, "preferred_hour": 10}, **extra},
        timeout=timeout)


async def make_decisions(nc, users: list[str], per_user: int, concurrency: int = 16,
                         redis=None) -> list[tuple[str, dict]]:
    """Decisions through the real scorer; waits until their records are in Redis."""
    sem = asyncio.Semaphore(concurrency)
    out: list[tuple[str, dict]] = []

    async def one(u, i):
        async with sem:
            r = await score(nc, u, i)
            assert r.get("ok") and not r.get("fallback"), r
            out.append((u, r))

    await asyncio.gather(*(one(u, i) for u in users for i in range(per_user)))
    if redis is not None:
        keys = [decision_key(d["decision_id"], u) for u, d in out]
        for _ in range(200):
            n = 0
            for j in range(0, len(keys), 500):
                n += await exists_many(redis, keys[j:j + 500])
            if n == len(keys):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("decision records not written")
    else:
        await asyncio.sleep(0.5)
    return out


def feedback_body(event_id: str, decision_id: str, user: str, reaction: str | None = None,
                  reward: float | None = None) -> bytes:
    b = {"event_id": event_id, "decision_id": decision_id, "user_id": user, "ts": time.time()}
    if reaction:
        b["reaction"] = reaction
    if reward is not None:
        b["reward"] = reward
    return json.dumps(b).encode()


async def publish_until_acked(js, subject: str, data: bytes, msg_id: str | None,
                              give_up_s: float = 60.0) -> int:
    """What a careful producer does: retry until the stream acknowledges (Nats-Msg-Id makes
    a retry after a lost ack harmless). Returns the number of failed attempts."""
    failures = 0
    deadline = time.monotonic() + give_up_s
    hdr = {"Nats-Msg-Id": msg_id} if msg_id else None
    while True:
        try:
            await js.publish(subject, data, headers=hdr, timeout=1.0)
            return failures
        except Exception:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@dataclass
class Ledger:
    """What was published: event → (decision, user, reward); the oracle of exactly-once."""

    events: dict[str, tuple[str, str, float]] = field(default_factory=dict)

    def add(self, event_id: str, decision_id: str, user: str, reward: float) -> None:
        self.events[event_id] = (decision_id, user, reward)

    @property
    def rewarded(self) -> dict[str, float]:
        return {d: r for d, _, r in self.events.values()}


async def exists_many(r, keys: list[str]) -> int:
    """EXISTS over keys of many users (per key on a Redis Cluster: they span slots)."""
    if type(r).__name__ == "RedisCluster":
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        return sum(await pipe.execute())
    return await r.exists(*keys) if keys else 0


async def get_many(r, keys: list[str]) -> list:
    if type(r).__name__ == "RedisCluster":
        return await r.mget_nonatomic(keys)
    return await r.mget(keys)


def claim_keys(events) -> list[str]:
    """Claim keys of a ledger's events ({event: (decision, user, reward)}) or of
    (event, user) pairs."""
    if isinstance(events, dict):
        return [event_key(e, v[1]) for e, v in events.items()]
    return [event_key(e, u) for e, u in events]


async def applied_count(r, event_ids) -> int:
    keys = claim_keys(event_ids)
    n = 0
    for j in range(0, len(keys), 1000):
        vals = await get_many(r, keys[j:j + 1000])
        n += sum(1 for v in vals if v is not None)
    return n


async def wait_applied(r, event_ids, timeout: float) -> float | None:
    """Seconds until every event has its idempotency claim, or None on timeout."""
    t0 = time.monotonic()
    ids = event_ids if isinstance(event_ids, dict) else list(event_ids)
    while time.monotonic() - t0 < timeout:
        if await applied_count(r, ids) == len(ids):
            return time.monotonic() - t0
        await asyncio.sleep(0.2)
    return None


async def expected_state(store: StateStore, rewarded: dict[str, float], lam: float = 1.0,
                         records: dict[str, dict] | None = None):
    """{state key: {arm: full float64 vector}} recomputed with numpy from the decision
    records, rounding to the stored float32 layout after each update as the Lua does."""
    exp: dict[str, dict[str, bytes]] = {}
    users = {} if records is not None else await store.decision_users(rewarded)
    for did, r in rewarded.items():
        rec = records[did] if records is not None else await store.get_decision(did, users.get(did))
        arm = rec["arm"]
        for p in rec["learners"].split(","):
            skey = rec[f"skey:{p}"]
            x = np.frombuffer(rec[f"x:{p}"], dtype="<f8")
            cur = exp.setdefault(skey, {}).get(arm)
            exp[skey][arm] = stored_update(cur, x, r, getattr(store, "lams", {}).get(p, lam))
    return {k: {a: decode_arm(b, dim_of(b)) for a, b in v.items()} for k, v in exp.items()}


async def exactly_once_report(r, store: StateStore, ledger: Ledger,
                              records: dict[str, dict] | None = None) -> dict:
    """Compare the final Redis state with the numpy recomputation.

    ``lost`` = expected updates missing, ``doubled`` = updates beyond the expected ones
    (counted on the n field of every arm model), ``mismatched_arms`` = arm models whose
    A⁻¹/b differ from numpy, ``outcomes`` = the idempotency claims by value."""
    exp = await expected_state(store, ledger.rewarded, records=records)
    lost = doubled = mismatched = 0
    for skey, arms in exp.items():
        got = await r.hgetall(skey)
        for arm, v in arms.items():
            blob = got.get(arm.encode())
            dim = round((-1 + (1 + 4 * (v.shape[0] - 2)) ** 0.5) / 2)
            g = decode_arm(blob, dim)
            d = round(float(g[0] - v[0]))
            lost += max(0, -d)
            doubled += max(0, d)
            # float32 storage rounds after every update, and consumers apply in another
            # order than this loop: equal up to float32 rounding of the running sums
            if g.shape != v.shape or not np.allclose(
                    g, v, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(v).max()))):
                mismatched += 1
    outcomes: dict[str, int] = {}
    ids = claim_keys(ledger.events)
    for j in range(0, len(ids), 1000):
        for v in await get_many(r, ids[j:j + 1000]):
            k = v.decode() if v else "missing"
            outcomes[k] = outcomes.get(k, 0) + 1
    return {"lost": lost, "doubled": doubled, "mismatched_arms": mismatched,
            "outcomes": outcomes, "events": len(ids)}


async def dlq_count(js, subject: str = "dlq.feedback") -> int:
    try:
        info = await js.stream_info("DEADLETTER", subjects_filter=subject)
    except Exception:  # noqa: BLE001 - stream not created yet
        return 0
    return sum((info.state.subjects or {}).values()) if info.state.subjects else 0


class LatencyLog:
    """Per request: (t_sent, latency_s, code) with code ``ok``, ``fallback`` or the error."""

    def __init__(self):
        self.rows: list[tuple[float, float, str]] = []

    def add(self, t: float, lat: float, reply: dict) -> None:
        if reply.get("ok"):
            code = "fallback" if reply.get("fallback") else "ok"
        else:
            code = (reply.get("error") or {}).get("code", "?")
        self.rows.append((t, lat, code))

    def between(self, t0: float, t1: float):
        return [x for x in self.rows if t0 <= x[0] < t1]


async def score_traffic(nc, stop: asyncio.Event, log: LatencyLog, rate: float = 50.0,
                        timeout: float = 0.5, prefix: str = "traffic") -> None:
    """Open-loop tips.score traffic: one request every 1/rate s, each in its own task."""
    tasks = set()
    i = 0
    nxt = time.monotonic()

    async def one(i):
        t = time.monotonic()
        try:
            rep = await score(nc, f"{prefix}-{i % 50}", i, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - a client-side exception is a failure too
            rep = {"ok": False, "error": {"code": f"exception:{type(e).__name__}"}}
        log.add(t, time.monotonic() - t, rep)

    while not stop.is_set():
        t = asyncio.create_task(one(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
        nxt += 1.0 / rate
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 2)


def random_reaction(rng: random.Random) -> tuple[str | None, float | None, float]:
    from tipsml.rewards import REWARD_TABLE

    if rng.random() < 0.2:
        rw = round(rng.random(), 3)
        return None, rw, rw
    rc = rng.choice(list(REWARD_TABLE))
    return rc, None, REWARD_TABLE[rc]


async def live_updates(r, policy: str = "egreedy-v1", prefix: str = "") -> int:
    n = 0
    async for k in r.scan_iter(f"tips:st:{{{prefix}*:{policy}", count=1000):
        for v in (await r.hgetall(k)).values():
            n += int(decode_arm(v, dim_of(v))[0])
    return n


__all__ = [
    "FAST_FEEDBACK",
    "SHORT",
    "LatencyLog",
    "Ledger",
    "applied_count",
    "claim_keys",
    "dlq_count",
    "exactly_once_report",
    "exists_many",
    "expected_state",
    "feedback_body",
    "get_many",
    "live_updates",
    "loadavg",
    "make_decisions",
    "metric",
    "publish_until_acked",
    "random_reaction",
    "record",
    "rss_mb",
    "score",
    "score_traffic",
    "state_key",
    "wait_applied",
]

"""Bytes of state per user, per decision record and per DECISIONS message — before and
after the compact layouts — measured with ``MEMORY USAGE`` on a real redis-server, and
the precision of float32 storage against today's float64 updates.

    python bench/compact_state.py            # -> bench/results/compact_state.{json,md}

* state per user: the three default policies (egreedy-v1 D=7, egreedy-v2 D=12, linucb
  D=7), every one of the 5 arms updated, written by the real reward script (layout 2)
  vs the same models written as layout-1 float64 blobs (what Redis held before);
* decision record: one record written by ``StateStore.record_decisions`` (layout 2) vs
  the former hash (long field names, float64 vectors, state keys and hp ids inside);
* DECISIONS: bytes of the one message per decision vs the three it replaces;
* precision: 10,000 random updates (x ~ the scorer's feature ranges, rewards in [-1, 1])
  applied in float64 and through the float32 layout, max relative errors of A⁻¹, b, θ and
  of the scores θ·x on 1,000 random contexts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import nats
import numpy as np
import orjson

from scorer.decisionlog import expand_entry
from tipsdev.launcher import EmbeddedStack
from tipsml.bandits import decode_arm, initial_arm, pack, sherman_morrison_update, stored_update
from tipsml.state import StateStore, decision_key, pulls_key, state_key

ARMS = ["focus_block", "break_reminder", "task_breakdown", "prioritize", "plan_tomorrow"]
POLS = {"egreedy-v1": 7, "egreedy-v2": 12, "linucb": 7}
OUT = Path(__file__).resolve().parent / "results"


def precision(dim: int, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    v = initial_arm(dim, 1.0)
    blob = None
    for _ in range(n):
        x = np.concatenate([[1.0], rng.uniform(-1, 1, dim - 1)])
        r = float(rng.uniform(-1, 1))
        v = sherman_morrison_update(v, x.astype("<f4").astype(np.float64), r)
        blob = stored_update(blob, x, r)
    g = decode_arm(blob, dim)
    a, ga = v[2 + dim:].reshape(dim, dim), g[2 + dim:].reshape(dim, dim)
    b, gb = v[2:2 + dim], g[2:2 + dim]
    th, gth = a @ b, ga @ gb
    xs = np.concatenate([np.ones((1000, 1)), rng.uniform(-1, 1, (1000, dim - 1))], axis=1)
    s, gs = xs @ th, xs @ gth
    return {"dim": dim, "updates": n,
            "max_rel_err_Ainv": float(np.abs(ga - a).max() / np.abs(a).max()),
            "max_rel_err_b": float(np.abs(gb - b).max() / np.abs(b).max()),
            "rel_err_theta": float(np.linalg.norm(gth - th) / np.linalg.norm(th)),
            "max_rel_err_score": float(np.abs(gs - s).max() / np.abs(s).max()),
            "n_exact": bool(g[0] == v[0])}


async def measure(url: str, listpack_value: int | None) -> dict:
    st = StateStore.from_url(url)
    r = st.r
    await r.flushall()
    if listpack_value is not None:
        await r.config_set("hash-max-listpack-value", listpack_value)
    rng = np.random.default_rng(1)

    async def mem(key: str) -> int:
        return int(await r.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)

    # --- state per user, layout 2 through the real scripts
    user = "mem-user-000001"
    recs = []
    for i in range(25):  # 5 per arm: every arm of every policy has a model
        xs = {p: np.concatenate([[1.0], rng.uniform(0, 1, d - 1)]) for p, d in POLS.items()}
        recs.append({"decision_id": f"memdec{i:04d}", "user_id": user, "arm": ARMS[i % 5],
                     "policy": "egreedy-v1", "policy_version": "v", "propensity": 0.82,
                     "ts": time.time(), "learners": list(POLS),
                     "vectors": {p: (state_key(p, user), xs[p]) for p in POLS},
                     "hyper": {p: st.hyper[p] for p in POLS}})
    await st.record_decisions(recs)
    dec_new = await mem(decision_key(recs[0]["decision_id"], user))
    for i, rec in enumerate(recs):
        res = await st.apply_reward(f"memev{i}", rec["decision_id"], user, 1.0)
        assert res.outcome == "applied", res
    state_new = {p: await mem(state_key(p, user)) for p in POLS}
    pulls = await mem(pulls_key("egreedy-v1", user))
    enc = {p: (await r.object("encoding", state_key(p, user))).decode() for p in POLS}
    # --- the same models as layout-1 float64 blobs (what Redis held before)
    old_user = "mem-user-000002"
    for p, d in POLS.items():
        blobs = await r.hgetall(state_key(p, user))
        await r.hset(f"tips:st:{p}:{old_user}",
                     mapping={a: pack(decode_arm(b, d)) for a, b in blobs.items()})
    state_old = {p: await mem(f"tips:st:{p}:{old_user}") for p in POLS}
    # --- the former decision record (fields as state.py wrote them before)
    rec = recs[0]
    old = {"user": user, "arm": rec["arm"], "policy": rec["policy"],
           "learners": ",".join(rec["learners"]), "propensity": repr(rec["propensity"]),
           "ts": repr(rec["ts"]), "version": "egreedy-v1/egreedy/ctx7-v1/eps=0.1,lambda=1"}
    for p, (_sk, x) in rec["vectors"].items():
        old[f"skey:{p}"] = f"tips:st:{p}:{user}"
        old[f"x:{p}"] = np.asarray(x, dtype="<f8").tobytes()
        old[f"hp:{p}"] = st.hyper[p]
    okey = f"tips:dec:{'f' * 32}"
    await r.hset(okey, mapping=old)
    await r.expire(okey, 90000)
    dec_old = await mem(okey)
    from tipsml.state import due_key, event_key
    # a due set as production has them (millions of entries: skiplist encoding)
    due = due_key(99)
    n_due = 5000
    for j in range(0, n_due, 1000):
        await r.zadd(due, {f"{(j + i):032x}:{user}": time.time() + 86400 + i
                           for i in range(1000)})
    due_per_entry = round(await mem(due) / n_due)
    claim = await mem(event_key("memev0", user))
    dkey = decision_key(rec["decision_id"], user)
    dec_fields = {k.decode(): len(v) for k, v in (await r.hgetall(dkey)).items()}
    await st.close()
    return {"state_new": state_new, "state_old": state_old, "pulls": pulls, "encoding": enc,
            "decision_new": dec_new, "decision_old": dec_old, "decision_fields": dec_fields,
            "due_entry": due_per_entry, "due_entries_measured": n_due, "event_claim": claim}


async def decisions_message() -> dict:
    """One real scorer entry (Scorer.score on a fresh user, no Redis needed for the shape)."""
    from scorer.scoring import Scorer
    from scorer.settings import ScorerSettings
    from tipsml.contract import ScoreRequest

    class _Store:  # models of a fresh user: the scorer only needs load_batch here
        async def load_batch(self, reqs):
            return [[[None] * len(a) for _ in k] for k, a in reqs]

    sc = Scorer(ScorerSettings(), _Store(), rng=np.random.default_rng(0))
    out = await sc.score(ScoreRequest.model_validate({
        "user_id": "user-000123", "request_id": "req-42",
        "context": {"hour_of_day": 9, "day_of_week": 2,
                    "tasks": [{"title": "t", "priority": 3, "overdue": True}]},
        "profile_features": {"completion_rate": 0.5, "preferred_hour": 10}}))
    msg = out.log
    assert len(msg) == 1
    new = len(orjson.dumps(msg[0]))
    old = [len(orjson.dumps(e)) for e in expand_entry(msg[0])]
    return {"message_bytes": new, "former_messages": len(old), "former_bytes": sum(old)}


async def nats_disk(nats_url: str, workdir: Path, n: int = 20000) -> dict:
    """Disk bytes per DECISIONS message in a file stream, S2-compressed (as the DECISIONS
    stream is now) and not: n real scorer entries (users, contexts, choices vary)."""
    from nats.js.api import StorageType, StoreCompression, StreamConfig

    from scorer.scoring import Scorer
    from scorer.settings import ScorerSettings
    from tipsml.contract import ScoreRequest

    class _Store:
        async def load_batch(self, reqs):
            return [[[None] * len(a) for _ in k] for k, a in reqs]

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for name, comp in (("DS2", StoreCompression.S2), ("DRAW", StoreCompression.NONE)):
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"],
                                         storage=StorageType.FILE, compression=comp))
    sc = Scorer(ScorerSettings(), _Store(), rng=np.random.default_rng(0))
    rng = np.random.default_rng(5)
    raw = 0
    for i in range(n):
        out = await sc.score(ScoreRequest.model_validate({
            "user_id": f"user-{int(rng.integers(10**7)):08d}", "request_id": f"r{i}",
            "context": {"hour_of_day": int(rng.integers(24)), "day_of_week": int(rng.integers(7)),
                        "tasks": [{"title": "t", "priority": int(rng.integers(5)),
                                   "overdue": bool(rng.integers(2))}] * int(rng.integers(1, 4))},
            "profile_features": {"completion_rate": float(rng.random()),
                                 "preferred_hour": int(rng.integers(24))}}))
        data = orjson.dumps(out.log[0])
        raw += len(data)
        hdr = {"Nats-Msg-Id": f"{out.reply['decision_id']}:egreedy-v1"}
        await js.publish("ds2.egreedy-v1", data, headers=hdr)
        await js.publish("draw.egreedy-v1", data, headers=hdr)
    await nc.flush()
    await asyncio.sleep(1.0)
    await nc.close()

    def du(name: str) -> int:
        return sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file()
                   and f"/streams/{name}/" in str(f) and f.suffix == ".blk")

    return {"messages": n, "json_bytes_per_msg": round(raw / n),
            "disk_bytes_per_msg_s2": round(du("DS2") / n),
            "disk_bytes_per_msg_uncompressed": round(du("DRAW") / n)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--out", default=str(OUT / "compact_state.json"))
    args = ap.parse_args()
    prec = [precision(7, args.updates, 7), precision(12, args.updates, 12)]
    with EmbeddedStack() as s:
        m0 = asyncio.run(measure(s.redis_url, 64))  # redis-server's default
        m = asyncio.run(measure(s.redis_url, 512))  # the setting deploy/ and the launcher use
        disk = asyncio.run(nats_disk(s.nats_url, s.workdir, args.messages))
    dm = asyncio.run(decisions_message())
    res = {"precision": prec, "redis": m, "nats_disk": disk, "redis_default_listpack_64": m0, "decisions": dm,
           "state_per_user_new": sum(m["state_new"].values()),
           "state_per_user_old": sum(m["state_old"].values()),
           "state_per_user_new_default_config": sum(m0["state_new"].values()),
           "decision_new_default_config": m0["decision_new"]}
    Path(args.out).write_text(json.dumps(res, indent=2))
    md = ["# Compact state: measured bytes (`python bench/compact_state.py`)", "",
          "`MEMORY USAGE <key> SAMPLES 0` on redis-server 7 (jemalloc; includes key, value and",
          "per-key overhead), one user with all 5 arms of the three default policies updated.",
          "`hash-max-listpack-value 512` (set by the launcher, the compose files and documented",
          "for managed Redis in deploy/README.md) keeps a user's 5-arm hash and a decision",
          "record one compact listpack instead of a hash table (redis-server's default is 64).", "",
          "| what | before (float64, default config) | after, default config | after, listpack 512 |",
          "|---|---:|---:|---:|"]
    for p in POLS:
        md.append(f"| state `{p}` (5 arms, D={POLS[p]}) | {m0['state_old'][p]:,} B | "
                  f"{m0['state_new'][p]:,} B | {m['state_new'][p]:,} B |")
    md.append(f"| **bandit state per user (3 policies)** | **{sum(m0['state_old'].values()):,} B** | "
              f"**{sum(m0['state_new'].values()):,} B** | **{res['state_per_user_new']:,} B** |")
    md.append(f"| pull counters of the live policy | {m0['pulls']:,} B | {m0['pulls']:,} B | "
              f"{m['pulls']:,} B |")
    md.append(f"| **decision record** (24 h + 1 h) | **{m0['decision_old']:,} B** | "
              f"**{m0['decision_new']:,} B** | **{m['decision_new']:,} B** |")
    md.append(f"| DECISIONS per decision | {dm['former_messages']} messages, "
              f"{dm['former_bytes']:,} B | 1 message, {dm['message_bytes']:,} B | same |")
    md.append(f"| DECISIONS on disk per decision (one replica; JSON {disk['json_bytes_per_msg']} B) | "
              f"3 messages | "
              f"{disk['disk_bytes_per_msg_uncompressed']:,} B uncompressed | "
              f"{disk['disk_bytes_per_msg_s2']:,} B S2 (stream default now) |")
    md.append(f"| due-set entry (default reward) | | | ~{m['due_entry']} B |")
    md.append(f"| event claim `tips:evt:{{u}}:<id>` (48 h) | | | {m['event_claim']} B |")
    md += ["", "User id of 15 characters (`mem-user-000001`): each of the 3 state keys and the "
           "decision key holds it once, so longer ids add their length per key."]
    md += ["", f"Decision record fields now (bytes): {m['decision_fields']}.", "",
           "## float32 layout vs float64 updates", "",
           "| D | updates | max rel. err A⁻¹ | max rel. err b | rel. err θ | max rel. err θ·x | n exact |",
           "|---:|---:|---:|---:|---:|---:|:--:|"]
    for p in prec:
        md.append(f"| {p['dim']} | {p['updates']:,} | {p['max_rel_err_Ainv']:.1e} | "
                  f"{p['max_rel_err_b']:.1e} | {p['rel_err_theta']:.1e} | "
                  f"{p['max_rel_err_score']:.1e} | {p['n_exact']} |")
    md += ["", "Relative errors are max |Δ| over the block divided by max |entry| of the "
           "float64 result (entry-wise relative error of near-zero off-diagonals is meaningless)."]
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Capacity plan from measured bytes: Redis memory and shards, NATS disk per day, scorer
replicas, for 1M / 10M users at 1,000 / 5,000 decisions/s.

    python bench/capacity.py   # reads bench/results/compact_state.json
                               # -> bench/results/capacity.{json,md}

Inputs (measured by bench/compact_state.py): bytes per user of bandit state + pull
counters, per decision record, per due-set entry, per event claim, and DECISIONS disk
bytes per decision (S2). Assumptions, all stated in the output: reward window 24 h and
record grace 1 h (records live 25 h), event claims 48 h, every decision ends with a claim
(reaction or default reward) and reacted-to ones with two (reaction + the default's
``already_rewarded``: ``REACTION_FRACTION``), every user active within ``STATE_TTL_S``,
FEEDBACK messages (reactions only: the default reward publishes nothing) ~250 B on disk each, 30 days of DECISIONS and 14 of FEEDBACK kept,
jemalloc fragmentation ×1.2, ≤ 25 GB of data per Redis master (fast failover resync and
AOF rewrite), one replica per master, one scorer replica per ~800 decisions/s (what one
replica sustained with p99 ≤ 15 ms in bench/results/score.json on a 2-core machine:
1,000 req/s; 20 % headroom) plus one spare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
REACTION_FRACTION = 0.3
FRAGMENTATION = 1.2
GB_PER_MASTER = 25
RECORD_S = 25 * 3600
DUE_S = 24 * 3600
CLAIM_S = 48 * 3600
FEEDBACK_MSG_B = 250
SCORER_RPS = 800


def plan(m: dict, users: int, rate: int) -> dict:
    r = m["redis"]
    per_user = sum(r["state_new"].values()) + r["pulls"]
    state_gb = users * per_user / 1e9
    rec_gb = rate * RECORD_S * r["decision_new"] / 1e9
    due_gb = rate * DUE_S * r["due_entry"] / 1e9
    claim_gb = rate * (1 + REACTION_FRACTION) * CLAIM_S * r["event_claim"] / 1e9
    data = state_gb + rec_gb + due_gb + claim_gb
    mem = data * FRAGMENTATION
    masters = max(3, math.ceil(mem / GB_PER_MASTER))
    disk = m["nats_disk"]["disk_bytes_per_msg_s2"]
    dec_day = rate * 86400 * disk / 1e9
    fb_day = rate * REACTION_FRACTION * 86400 * FEEDBACK_MSG_B / 1e9  # reactions only
    return {"users": users, "decisions_per_s": rate,
            "redis_data_gb": {"state": round(state_gb, 1), "decision_records": round(rec_gb, 1),
                              "due_sets": round(due_gb, 1), "event_claims": round(claim_gb, 1)},
            "redis_memory_gb": round(mem, 1), "redis_masters": masters,
            "redis_nodes": 2 * masters,
            "nats_disk_gb_per_day_per_replica": round(dec_day + fb_day, 1),
            "nats_disk_gb_retained_per_replica": round(30 * dec_day + 14 * fb_day),
            "scorer_replicas": math.ceil(rate / SCORER_RPS) + 1}


def main() -> None:
    m = json.loads((OUT / "compact_state.json").read_text())
    rows = [plan(m, u, r) for u in (1_000_000, 10_000_000) for r in (1000, 5000)]
    (OUT / "capacity.json").write_text(json.dumps(rows, indent=2))
    md = ["# Capacity from measured bytes (`python bench/capacity.py`)", "",
          "| users | decisions/s | Redis data: state / records / due / claims (GB) | Redis memory | "
          "masters (+1 replica each) | NATS disk per day, per replica | NATS retained (30 d / 14 d) | scorer replicas |",
          "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for x in rows:
        d = x["redis_data_gb"]
        md.append(f"| {x['users']:,} | {x['decisions_per_s']:,} | {d['state']} / "
                  f"{d['decision_records']} / {d['due_sets']} / {d['event_claims']} | "
                  f"{x['redis_memory_gb']} GB | {x['redis_masters']} | "
                  f"{x['nats_disk_gb_per_day_per_replica']} GB | "
                  f"{x['nats_disk_gb_retained_per_replica']} GB | {x['scorer_replicas']} |")
    r = m["redis"]
    md += ["", f"Measured (bench/results/compact_state.md): {sum(r['state_new'].values()) + r['pulls']:,} B "
           f"of state per user, {r['decision_new']} B per decision record, {r['due_entry']} B per "
           f"due-set entry, {r['event_claim']} B per event claim, "
           f"{m['nats_disk']['disk_bytes_per_msg_s2']} B of DECISIONS on disk per decision (S2).",
           "", "Assumptions: " + " ".join(
               __doc__.split("Assumptions, all stated in the output: ")[1].split())]
    (OUT / "capacity.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Which users lose their reads while a Redis master fails over? The scorer's read path
alone (no NATS, no other load): ``StateStore.load_batch`` for 30 users every 0.2 s on a
:class:`tipsdev.cluster.ClusterStack`, ``kill -9`` of the master holding the first user's
slot 8 s in (replication settled), counted per batch for the killed master's users and
for the others.

    python bench/cluster_read_isolation.py   # -> bench/results/cluster_read_isolation.json
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tipsdev.cluster import ClusterStack
from tipsml.state import StateStore, state_key

OUT = ROOT / "bench" / "results" / "cluster_read_isolation.json"


async def probe(cs: ClusterStack, kill_at: float = 8.0, until: float = 20.0) -> dict:
    st = StateStore.from_url(cs.redis_url)
    await st.warm()
    users = [f"iso-{i}" for i in range(30)]
    node_of = {u: st.r.get_node_from_key(state_key("egreedy-v1", u)).port for u in users}
    victim_port = node_of[users[0]]
    victim = next(n for n, p in cs.redis_masters().items() if p == victim_port)
    t0 = time.monotonic()
    killed = None
    rows = []
    while time.monotonic() - t0 < until:
        if killed is None and time.monotonic() - t0 > kill_at:
            cs.kill(victim)
            killed = time.monotonic()
        ts = time.monotonic()
        out = await st.load_batch([([state_key("egreedy-v1", u)], ["a"]) for u in users],
                                  deadline_s=0.2)
        bad = [u for u, o in zip(users, out) if isinstance(o, BaseException)]
        rows.append({"t": round(ts - (killed or ts), 2) if killed else None,
                     "ms": round((time.monotonic() - ts) * 1000, 1),
                     "bad_killed_master": sum(1 for u in bad if node_of[u] == victim_port),
                     "bad_other_masters": sum(1 for u in bad if node_of[u] != victim_port)})
        await asyncio.sleep(0.2)
    await st.close()
    after = [r for r in rows if r["t"] is not None]
    bad_victim = [r for r in after if r["bad_killed_master"]]
    return {"users": len(users),
            "users_on_killed_master": sum(1 for u in users if node_of[u] == victim_port),
            "batches_after_kill": len(after),
            "max_bad_other_masters": max((r["bad_other_masters"] for r in after), default=0),
            "killed_master_users_failed_for_s": round(bad_victim[-1]["t"], 2) if bad_victim else 0.0,
            "max_batch_ms_after_kill": max((r["ms"] for r in after), default=0.0),
            "rows": rows}


def main() -> None:
    with ClusterStack() as cs:
        res = asyncio.run(probe(cs))
    OUT.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

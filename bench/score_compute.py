"""What one decision's own compute costs, piece by piece, without the network (issue 12).

    .venv/bin/python bench/score_compute.py                  # this checkout
    PYTHONPATH=<base>/shared/src:<base>/scorer/src .venv/bin/python bench/score_compute.py \\
        --out /tmp/base.json                                  # another commit's code

Real models from a real Redis (the embedded stack: 50 bench users, each rewarded a few
times so their arms have state), then each piece timed in a loop of ``--n`` calls, median
of ``--repeats``: the request's validation (pydantic), the feature vectors, the arms' maths
and choice of the live policy and its two shadows (``choose_many``), the decision record
as the decision log writes it to Redis (RESP bytes), the DECISIONS entry's JSON, and
``Scorer.score`` whole with its models already read (the Redis round trip replaced by an
answer at hand). A microbench runs hot in the caches: in the scorer process, which shares
two cores with nats-server, Redis and the client, the same code costs about twice as much.
Writes bench/results/score_compute.json.
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
OUT = ROOT / "bench" / "results" / "score_compute.json"
sys.path.insert(0, str(ROOT / "bench"))


def timed(fn, n: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return {"us_median": round(statistics.median(runs), 2), "us_min": round(min(runs), 2),
            "us_max": round(max(runs), 2)}


async def measure(redis_url: str, n: int, repeats: int) -> dict:
    import orjson
    from score_bench import payloads

    from scorer.scoring import Scorer
    from scorer.settings import ScorerSettings
    from tipsml.bandits import choose_many
    from tipsml.contract import ScoreRequest, parse
    from tipsml.features import build_vectors
    from tipsml.resp import pack
    from tipsml.state import StateStore, state_key

    settings = ScorerSettings(redis_url=redis_url, default_policy="egreedy-v1",
                              shadow_policies=["egreedy-v2", "linucb"])
    store = StateStore.from_url(redis_url)
    sc = Scorer(settings, store)
    bodies = payloads(50, seed=1)
    reqs = [parse(ScoreRequest, b) for b in bodies]
    try:
        for i, r in enumerate(reqs):  # a few rewards each: the arms' models are stored
            for j in range(3):
                out = await sc.score(r)
                await store.record_decisions([out.record])
                await store.apply_reward(f"cmp-{i}-{j}-{os.getpid()}", out.reply["decision_id"],
                                         r.user_id, float(j % 2))
        pols = [sc.policies[p] for p in ("egreedy-v1", "egreedy-v2", "linucb")]
        models = {r.user_id: await sc.reader.load([state_key(p.name, r.user_id) for p in pols],
                                                  sc.arms) for r in reqs}
        outs = [await sc.score(r) for r in reqs]
        i = [0]

        def nxt():
            i[0] = (i[0] + 1) % len(reqs)
            return i[0]

        xs = [build_vectors([p.features for p in pols], r.context, r.profile_features)
              for r in reqs]
        res = {
            "validation (pydantic, ScoreRequest)": timed(
                lambda: parse(ScoreRequest, bodies[nxt()]), n, repeats),
            "feature vectors (2 versions)": timed(
                lambda: build_vectors([p.features for p in pols], (r := reqs[nxt()]).context,
                                      r.profile_features), n, repeats),
            "choose_many (live + 2 shadows)": timed(
                lambda: choose_many(pols, sc.arms, models[reqs[(k := nxt())].user_id],
                                    [xs[k][p.features.version] for p in pols], sc.rng),
                n, repeats),
        }
        recs = [o.record for o in outs]
        if hasattr(store, "_record_resp"):
            rec_fn = lambda: store._record_resp([recs[nxt()]])  # noqa: E731
        else:  # an older commit: the commands, then packed
            rec_fn = lambda: b"".join(pack(*c) for c in store._record_commands(  # noqa: E731
                [recs[nxt()]]))
        res["decision record as RESP"] = timed(rec_fn, n, repeats)
        res["DECISIONS entry JSON"] = timed(lambda: orjson.dumps(outs[nxt()].log[0]), n, repeats)

        async def at_hand(pols_, skeys, arms):  # the models already read: no round trip
            return models[reqs[i[0]].user_id], None

        sc._load_models = at_hand
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                await sc.score(reqs[nxt()])
            runs.append((time.perf_counter() - t) / n * 1e6)
        res["Scorer.score, models at hand"] = {
            "us_median": round(statistics.median(runs), 2), "us_min": round(min(runs), 2),
            "us_max": round(max(runs), 2)}
        return res
    finally:
        await store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    from tipsdev.launcher import EmbeddedStack

    with EmbeddedStack() as st:
        res = asyncio.run(measure(st.redis_url, args.n, args.repeats))
    import tipsml

    doc = {"pieces": res, "n": args.n, "repeats": args.repeats,
           "code": str(Path(tipsml.__file__).resolve().parents[2]),
           "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    for k, v in res.items():
        print(f"{k:40s} {v['us_median']:8.2f} us  [{v['us_min']}, {v['us_max']}]")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

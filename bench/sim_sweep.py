"""Hyper-parameter sweep on the persona world (devtools/src/tipsdev/sim/world.py): ε, α, v, λ, λ_p.

Every configuration plays the same paired seeds (common random numbers), so rows are
comparable; the table gives cumulative regret as % of the oracle's reward by rounds
10 / 30 / 100 / 300 and over the last 50 rounds (mean and 95% t-interval over seeds).
The defaults in settings are chosen from this table; the held-out world
(``bench/sim_heldout.py``) then uses them untouched.

    python bench/sim_sweep.py                       # 100 users × 300 rounds × 3 seeds
    python bench/sim_sweep.py --users 200 --seeds 5 --only thompson
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tipsdev.sim.__main__ import Progress, seeds_arg
from tipsdev.sim.report import cold_start_table, to_json
from tipsdev.sim.runner import SimConfig, aggregate, run_inproc

GRID: dict[str, list[str]] = {
    "egreedy-v2 (ε)": [f"egreedy-v2[epsilon={e}]" for e in (0.01, 0.03, 0.05, 0.1, 0.2)],
    "egreedy-v2 (λ, ε = 0.1)": [f"egreedy-v2[lam={lam}]" for lam in (0.3, 3.0)],
    "linucb (α)": [f"linucb[alpha={a}]" for a in (0.1, 0.25, 0.5, 1.0)],
    "thompson (v)": [f"thompson[v={v}]" for v in (0.05, 0.1, 0.2, 0.3, 0.5)],
    "egreedy-pooled (ε, λ_p = 50)": [f"egreedy-pooled[epsilon={e},lam=50]"
                                     for e in (0.01, 0.03, 0.05, 0.1)],
    "egreedy-pooled (λ_p, ε = 0.03)": [f"egreedy-pooled[epsilon=0.03,lam={lam}]"
                                       for lam in (10, 25, 100, 200)],
    "linucb-pooled (α, λ_p = 50)": [f"linucb-pooled[alpha={a},lam=50]" for a in (0.03, 0.1, 0.3)],
    "thompson-pooled (v, λ_p = 50)": [f"thompson-pooled[v={v},lam=50]" for v in (0.03, 0.1, 0.3)],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--seeds", type=seeds_arg, default=seeds_arg("3"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="groups whose title starts with this")
    ap.add_argument("--out", default="bench/results/sim_sweep")
    args = ap.parse_args(argv)
    groups = {g: v for g, v in GRID.items() if g.startswith(args.only)}
    names = [n for v in groups.values() for n in v]
    cfg = SimConfig(policies=tuple(names), users=args.users, rounds=args.rounds,
                    seeds=args.seeds, workers=args.workers)
    prog = Progress(len(names) * len(cfg.seeds), "sweep")
    t0 = time.time()
    try:
        rows = run_inproc(cfg, prog)
    finally:
        prog.close()
    res = aggregate(rows, cfg)
    res["groups"] = groups
    res["elapsed_s"] = time.time() - t0
    for p in res["policies"].values():  # the curves are not needed in the sweep file
        p.pop("regret_curve", None)
    js = to_json(res, f"{args.out}.json")
    md = [f"# Hyper-parameter sweep, persona world ({args.users} users × {args.rounds} rounds × "
          f"{len(cfg.seeds)} paired seeds, in-process, realistic client)", "",
          f"`python bench/sim_sweep.py --users {args.users} --rounds {args.rounds} "
          f"--seeds {len(cfg.seeds)}`; {res['elapsed_s']:.0f} s. Cumulative regret as % of "
          "the oracle's reward (mean [95% CI over seeds]).", ""]
    for g, ns in groups.items():
        sub = dict(res, policies={n: res["policies"][n] for n in ns if n in res["policies"]})
        md += [f"## {g}", "", cold_start_table(sub).split("\n", 2)[2], ""]
    Path(f"{args.out}.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"wrote {js} and {args.out}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

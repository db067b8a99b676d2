"""The bias of learning only from reactions, measured: regret of every policy when ignored
tips send nothing, with and without the service's default reward, against the former
simulator that sent ``feedback.ignored`` for every ignored tip.

    make sim-default-reward            # = python bench/sim_default_reward.py
    python bench/sim_default_reward.py --users 40 --rounds 120 --seeds 3   # quick look

In-process mode (the scorer's policy code + the numpy twin of the Lua update), same
worlds and the same policy randomness for the four feedback models of a policy, so the
differences are paired per seed:

* ``explicit``    — the former simulator (an ``ignored`` event at once; no real app can);
* ``default W=1`` — realistic client, default reward 0.0 when the window closes, the
  window shorter than the gap to the user's next tip (the service's design);
* ``default W=3`` — the same with a window of 3 rounds (one simulated day: a 24 h window
  at 3 tips a day), so the learner sees each ignored tip's 0 three tips later;
* ``no default``  — realistic client, nothing ever learned from silence (before issue 18).

Writes ``bench/results/sim_default_reward.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from tipsdev.sim.__main__ import Progress, seeds_arg
from tipsdev.sim.inproc import EXPLICIT, FeedbackModel
from tipsdev.sim.runner import SimConfig, run_rows
from tipsdev.sim.stats import fmt_ci, mean_ci

MODELS = {
    "explicit": EXPLICIT,
    "default W=1": FeedbackModel("realistic", 0.0, 1),
    "default W=3": FeedbackModel("realistic", 0.0, 3),
    "no default": FeedbackModel("realistic", None, 1),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="egreedy-v1,egreedy-v2,linucb,thompson")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--seeds", type=seeds_arg, default=tuple(range(10)))
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sim_default_reward"))
    args = ap.parse_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    cfg = SimConfig(policies=tuple(policies), users=args.users, rounds=args.rounds,
                    seeds=tuple(args.seeds), workers=args.workers)
    cohorts = [(f"{p}|{m}", p, i, fb) for i, p in enumerate(policies)
               for m, fb in MODELS.items()]
    prog = Progress(len(cohorts) * len(cfg.seeds), "policy × feedback model × seed")
    t0 = time.perf_counter()
    try:
        rows = run_rows(cfg, prog, cohorts)
    finally:
        prog.close()
    by = {(r["policy"], r["seed"]): r for r in rows}
    seeds = sorted(cfg.seeds)
    res = {"config": {**cfg.to_dict(), "models": {m: fb.label for m, fb in MODELS.items()}},
           "policies": {}}
    for p in policies:
        out = res["policies"][p] = {}
        base = np.array([by[f"{p}|explicit", s]["regret_curve"][-1] for s in seeds])
        for m in MODELS:
            rs = [by[f"{p}|{m}", s] for s in seeds]
            reg = np.array([r["regret_curve"][-1] for r in rs])
            out[m] = {
                "regret": mean_ci(reg),
                "regret_pct_of_oracle": mean_ci([100 * (r["oracle"] - r["mean_expected"])
                                                 / r["oracle"] for r in rs]),
                "mean_expected": mean_ci([r["mean_expected"] for r in rs]),
                "delta_regret_vs_explicit": mean_ci(reg - base),
                "delta_pct_vs_explicit": float(100 * (reg.mean() - base.mean()) / base.mean()),
                "updates_per_user": {k: float(np.mean([r["updates"][k] for r in rs]) / cfg.users)
                                     for k in rs[0]["updates"]},
            }
    res["elapsed_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1))
    md = table(res)
    Path(f"{out}.md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {out}.json and {out}.md ({res['elapsed_s']:.0f} s)")
    return 0


def table(res: dict) -> str:
    c = res["config"]
    lines = [
        (f"{c['users']} users × {c['rounds']} rounds × {len(c['seeds'])} seeds, in-process; "
        "regret per user at the last round vs the oracle (95% t-interval over seeds); "
        "Δ = paired difference from the explicit-ignored simulator (same world, same policy "
        "randomness)."), "",
        ("| policy | explicit ignored (former sim) | realistic + default 0 (W=1) | "
        "realistic + default 0 (W=3, one day) | realistic, no default reward | "
        "bias without default (Δ regret) |"),
        "|---|---|---|---|---|---|"]
    for p, ms in res["policies"].items():
        cells = [fmt_ci(ms[m]["regret"], 2) for m in MODELS]
        for j, m in enumerate(MODELS):
            if m != "explicit":
                cells[j] += f" (Δ {ms[m]['delta_pct_vs_explicit']:+.1f}%)"
        nd = ms["no default"]["delta_regret_vs_explicit"]
        lines.append(f"| {p} | " + " | ".join(cells) +
                     f" | {nd['mean']:+.2f} [{nd['lo']:+.2f}, {nd['hi']:+.2f}] |")
    any_p = next(iter(res["policies"].values()))
    u = any_p["no default"]["updates_per_user"]
    lines += ["", (f"Without a default reward a learner gets {u['reactions']:.0f} updates per user "
              f"in {c['rounds']} rounds (the rest, {u['silent']:.0f}, were ignored tips: "
              "silence), so its arm models estimate reward *given a reaction*; "
              "with it, every decision is learned from once (the last window's may still be "
              "open at the end).")]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

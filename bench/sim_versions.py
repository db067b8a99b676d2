"""Prompt versions chosen by the loop vs the fixed sticky rotation (simulator).

Personas get hidden preferences over prompt styles (devtools/src/tipsdev/sim/versions.py). On the
same tip-kind sequence (served by ``--arm-policy``), three version strategies play:
the sticky rotation (TIP_PROMPT_VERSION=v1,v2-mentor,v3-few-shot,v4-grounded), the
version bandit (TIP_PROMPT_VERSION=bandit:…, tipsml.versions) and the oracle. Reported
with 95% t-intervals over seeds: regret over versions per tip (vs the best version for
the user and tip kind) overall and in the last 50 rounds, and the share of tips written
by the best version per arm. Then the bandit's log is used off-policy: IPS / SNIPS
estimates of "always v4-grounded" and "always v1", from the logged version propensities,
against their true values.

    python bench/sim_versions.py               # 200 users × 300 rounds × 5 seeds
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tipsdev.sim.stats import fmt_ci, mean_ci
from tipsdev.sim.versions import VERSIONS, VersionWorld, arm_sequence, play_versions
from tipsdev.sim.world import make_episode


def one_seed(seed: int, users: int, rounds: int, arm_policy: str, epsilon: float) -> dict:
    ep = make_episode(seed, users, rounds)
    vw = VersionWorld(ep)
    arms = arm_sequence(ep, arm_policy)
    out: dict = {"seed": seed}
    for strat in ("rotation", "bandit", "oracle"):
        res = play_versions(vw, arms, strat, np.random.default_rng([seed, 555]), epsilon)
        reg = res["best"] - res["expected"]
        # the best single version per tip kind (what a per-arm bandit can reach)
        ev = np.take_along_axis(vw.expected, arms[:, :, None, None], axis=2)[:, :, 0, :]
        per_arm_best = {}
        for a in range(len(ep.arms)):
            m = arms == a
            if m.any():
                per_arm_best[a] = int(np.argmax(ev[m].mean(axis=0)))
        hit = np.array([[res["version"][u, t] == per_arm_best[arms[u, t]]
                         for t in range(rounds)] for u in range(users)])
        out[strat] = {"regret_per_tip": float(reg.mean()),
                      "regret_last50": float(reg[:, -50:].mean()),
                      "regret_curve": reg.mean(axis=0).tolist(),
                      "mean_expected": float(res["expected"].mean()),
                      "best_share_last50": float(hit[:, -50:].mean())}
        if strat == "bandit":
            # off-policy: value of "always version j" from the bandit's log
            r, p, v = res["reward"].ravel(), res["propensity"].ravel(), res["version"].ravel()
            ope = {}
            for j, name in enumerate(VERSIONS):
                w = (v == j) / p
                ope[name] = {"ips": float((w * r).mean()), "snips": float((w * r).sum() / w.sum()),
                             "true": float(ev[:, :, j].mean()),
                             "min_propensity": float(p.min())}
            out["ope"] = ope
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--arm-policy", default="egreedy-pooled")
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="bench/results/sim_versions")
    args = ap.parse_args(argv)
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.workers) as ex:
        rows = list(ex.map(one_seed, range(args.seeds), [args.users] * args.seeds,
                           [args.rounds] * args.seeds, [args.arm_policy] * args.seeds,
                           [args.epsilon] * args.seeds))
    summ = {}
    for s in ("rotation", "bandit", "oracle"):
        summ[s] = {k: mean_ci([r[s][k] for r in rows])
                   for k in ("regret_per_tip", "regret_last50", "mean_expected",
                             "best_share_last50")}
        summ[s]["regret_curve"] = np.mean([r[s]["regret_curve"] for r in rows], axis=0).tolist()
    ope = {v: {k: mean_ci([r["ope"][v][k] for r in rows]) for k in ("ips", "snips", "true")}
           for v in VERSIONS}
    res = {"config": vars(args), "versions": list(VERSIONS), "summary": summ, "ope": ope,
           "per_seed": [{k: v for k, v in r.items() if k != "ope"} for r in rows],
           "elapsed_s": time.time() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(res, indent=1))
    lines = [f"# Prompt versions chosen by the loop ({args.users} users × {args.rounds} rounds × "
             f"{args.seeds} seeds; tip kinds served by {args.arm_policy})", "",
             f"`python bench/sim_versions.py --users {args.users} --rounds {args.rounds} "
             f"--seeds {args.seeds}`; {res['elapsed_s']:.0f} s. Mean [95% CI over seeds].", "",
             "| strategy | regret over versions per tip | same, last 50 rounds | "
             "tips by the best version of their kind, last 50 rounds | mean E[r] |",
             "|---|---|---|---|---|"]
    for s in ("rotation", "bandit", "oracle"):
        m = summ[s]
        lines.append(f"| {s} | {fmt_ci(m['regret_per_tip'])} | {fmt_ci(m['regret_last50'])} | "
                     f"{fmt_ci(m['best_share_last50'], 3)} | {fmt_ci(m['mean_expected'])} |")
    lines += ["", "Off-policy value of 'always version v' from the bandit's log (its logged "
              "version propensities), against the true value:", "",
              "| version | IPS | SNIPS | true |", "|---|---|---|---|"]
    for v in VERSIONS:
        o = ope[v]
        lines.append(f"| {v} | {fmt_ci(o['ips'])} | {fmt_ci(o['snips'])} | {fmt_ci(o['true'])} |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

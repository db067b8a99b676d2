"""Promotion gate: should candidate policy B replace baseline A?

``python -m tipsdev.gate --candidate egreedy-v2 --baseline egreedy-v1``

For each seed the simulator draws one world (users, personas, contexts, profile
features, reaction uniforms) and plays A and B on it — common random numbers, so the
per-seed difference ``d_s = mean_reward(B) − mean_reward(A)`` is paired. Each policy
keeps its own exploration randomness (independent streams), so A against A is *not* a
zero-variance tautology: it is exactly the noise floor the gate has to see through.

Verdict (95% t-interval of the mean of ``d_s`` over seeds, ``--min-effect`` δ, default
0.005 ≈ 1.3% of egreedy-v1's reward — a promotion must be worth its risk, and with δ = 0
an A-vs-A gate would still "promote" in 2.5% of runs by construction):

* ``promote``  — the lower bound is above δ: B is better;
* ``reject``   — the upper bound is below 0: B is worse;
* ``hold``     — otherwise: no evidence that B is better (e.g. A and B the same policy).

The simulator runs the realistic client by default (ignored tips send nothing; the
service's default reward 0.0 applies when the window closes, ``--window`` rounds later);
``--client explicit`` is the former simulator, ``--default-reward none`` turns it off.

Exit status 0 for ``promote``, 1 otherwise. The result is printed, written to
``bench/results/gate_<candidate>_vs_<baseline>.json`` and logged to MLflow, and a model
card for each of the two policy versions is written to the MLflow model registry
(:mod:`tipsdev.cards`; ``--no-cards`` skips it); the last lines say where to read them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tipsdev.sim.runner import (
    SimConfig,
    persona_regret,
    regret_at,
    regret_pct_at,
    regret_pct_last,
    run_rows,
)
from tipsdev.sim.stats import mean_ci

DEFAULT_MIN_EFFECT = 0.005  # absolute reward; ≈1.3% of egreedy-v1's mean reward
DEFAULT_SEEDS = tuple(range(10))


def decide(diffs, min_effect: float = DEFAULT_MIN_EFFECT, level: float = 0.95) -> dict:
    ci = mean_ci(diffs, level)
    if ci["n"] < 2:
        verdict = "hold"
        why = "fewer than 2 seeds: no interval"
    elif ci["lo"] > min_effect:
        verdict, why = "promote", f"the whole {level:.0%} CI is above {min_effect:g}"
    elif ci["hi"] < 0:
        verdict, why = "reject", f"the whole {level:.0%} CI is below 0 (candidate worse)"
    else:
        below = "0" if ci["lo"] <= 0 else "values below the minimum effect"
        verdict, why = "hold", f"the {level:.0%} CI includes {below}"
    return {"diff": ci, "verdict": verdict, "why": why}


def offline_metrics(rows: list[dict], label: str, cfg: SimConfig) -> dict:
    """What a model card reports from a sweep: regret at checkpoints, reward, per persona."""
    rs = sorted((r for r in rows if r["policy"] == label), key=lambda r: r["seed"])
    curves = np.stack([r["regret_curve"] for r in rs])
    out = {"sim": {"config_text": f"{cfg.users} users × {cfg.rounds} rounds × {len(rs)} "
                                  f"seeds, {cfg.mode}",
                   "feedback": cfg.feedback().label if cfg.mode == "inproc" else cfg.client,
                   "regret_at": regret_at(curves),
                   "mean_reward": mean_ci([r["mean_reward"] for r in rs]),
                   "seeds": [r["seed"] for r in rs]}}
    if all("oracle_curve" in r for r in rs):  # cold start: % of the oracle's reward by round
        oc = np.stack([r["oracle_curve"] for r in rs])
        out["sim"]["regret_pct_at"] = regret_pct_at(curves, oc)
        out["sim"]["regret_pct_last50"] = regret_pct_last(curves, oc, 50)
    if all("persona_regret" in r for r in rs):
        out["persona_regret"] = persona_regret(rs)
    return out


def gate(candidate: str, baseline: str, *, users: int = 200, rounds: int = 300,
         seeds=DEFAULT_SEEDS, mode: str = "inproc", min_effect: float | None = None,
         workers: int = 0, progress=None, personas=None, client: str = "realistic",
         default_reward: float | None = 0.0, window: int = 1) -> dict:
    min_effect = DEFAULT_MIN_EFFECT if min_effect is None else min_effect
    cfg = SimConfig(policies=(baseline, candidate), users=users, rounds=rounds,
                    seeds=tuple(seeds), mode=mode, workers=workers, client=client,
                    default_reward=default_reward, window=window)
    if personas:
        cfg.personas = tuple(personas)
    cohorts = [("A", baseline, 0), ("B", candidate, 1)]
    t0 = time.perf_counter()
    rows = run_rows(cfg, progress, cohorts)
    res = gate_from_rows(rows, cfg, candidate, baseline, "B", "A", min_effect)
    res["elapsed_s"] = time.perf_counter() - t0
    return res


def gate_from_rows(rows: list[dict], cfg: SimConfig, candidate: str, baseline: str,
                   cand_label: str, base_label: str,
                   min_effect: float = DEFAULT_MIN_EFFECT) -> dict:
    """The verdict from a sweep that played both (labels of their cohorts) on paired seeds."""
    by = {(r["policy"], r["seed"]): r for r in rows if r["policy"] in (cand_label, base_label)}
    seeds = sorted({sd for _, sd in by})
    a = np.array([by[base_label, s]["mean_reward"] for s in seeds])
    b = np.array([by[cand_label, s]["mean_reward"] for s in seeds])
    ea = np.array([by[base_label, s]["mean_expected"] for s in seeds])
    eb = np.array([by[cand_label, s]["mean_expected"] for s in seeds])
    res = decide(b - a, min_effect)
    res.update({
        "candidate": candidate, "baseline": baseline, "config": cfg.to_dict(),
        "min_effect": min_effect,
        "baseline_reward": mean_ci(a), "candidate_reward": mean_ci(b),
        "relative_lift_pct": float(100 * (b.mean() - a.mean()) / a.mean()),
        "diff_expected": mean_ci(eb - ea),
        "per_seed": [{"seed": s, "baseline": float(x), "candidate": float(y), "diff": float(y - x)}
                     for s, x, y in zip(seeds, a, b)],
        "offline": {"baseline": offline_metrics(rows, base_label, cfg),
                    "candidate": offline_metrics(rows, cand_label, cfg)},
    })
    return res


def verdict_entry(res: dict) -> dict:
    import datetime as _dt

    return {"at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "candidate": res["candidate"], "baseline": res["baseline"],
            "verdict": res["verdict"], "diff": res["diff"], "summary": summary(res)}


def write_cards(items: list[tuple[str, dict]], verdict: dict | None = None) -> list[dict]:
    """One model card per (policy name, offline metrics); returns where each one is."""
    from tipsdev import cards
    from tipsdev.sim.runner import policies_from_env
    from tipsml.settings import BaseServiceSettings

    try:
        from scorer.settings import ScorerSettings  # SHADOW_LEARN lives there

        settings = ScorerSettings()
    except ImportError:
        settings = BaseServiceSettings()
    reg = policies_from_env([n for n, _ in items])
    out = []
    for name, off in items:
        p = reg[name]
        card = cards.build_card(p, off, settings=settings, ope=cards.ope_from_results(p),
                                verdict=verdict)
        info = cards.write_card(card)
        info["policy"] = name
        info["policy_id"] = p.version
        out.append(info)
    return out


def card_lines(infos: list[dict]) -> list[str]:
    lines = []
    for i in infos:
        if "error" in i:
            lines.append(f"model card {i['policy']}: not written ({i['error']})")
        else:
            lines.append(f"model card {i['policy']} ({i['policy_id']}): registered model "
                         f"{i['name']} version {i['version']} in {i['uri']} — card.md at "
                         f"{i['artifact']}")
    if infos and any("error" not in i for i in infos):
        lines.append("read them: make mlflow-ui → Models, or python -c \"from tipsdev.cards "
                     "import read_card; print(read_card('<policy>'))\"")
    return lines


def summary(res: dict) -> str:
    d = res["diff"]
    cfg = res["config"]
    return (f"gate {res['candidate']} vs {res['baseline']}: Δ mean reward = {d['mean']:+.4f} "
            f"(95% CI [{d['lo']:+.4f}, {d['hi']:+.4f}], {res['relative_lift_pct']:+.1f}%) over "
            f"{d['n']} paired seeds × {cfg['users']} users × {cfg['rounds']} rounds "
            f"({cfg['mode']}) "
            f"→ {res['verdict'].upper()} ({res['why']})")


def _np(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def main(argv: list[str] | None = None) -> int:
    from tipsdev.sim.__main__ import Progress, default_reward_arg, seeds_arg
    from tipsdev.sim.tracking import log_run

    ap = argparse.ArgumentParser(prog="python -m tipsdev.gate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--seeds", type=seeds_arg, default=tuple(range(10)))
    ap.add_argument("--mode", choices=["inproc", "nats"], default="inproc")
    ap.add_argument("--min-effect", type=float, default=DEFAULT_MIN_EFFECT,
                    help="smallest mean-reward gain worth a promotion "
                         "(absolute; default %(default)s)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--client", choices=["realistic", "explicit"], default="realistic",
                    help="realistic: ignored tips send nothing (default); explicit: the former sim")
    ap.add_argument("--default-reward", type=default_reward_arg, default=0.0,
                    help="reward applied at window close without a reaction; none = off")
    ap.add_argument("--window", type=int, default=1, help="reward window in rounds")
    ap.add_argument("--out", default=None,
                    help="json path (default bench/results/gate_<B>_vs_<A>.json)")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--no-cards", action="store_true", help="do not write model cards")
    args = ap.parse_args(argv)
    total = len(args.seeds) * (2 if args.mode == "inproc" else 2 * args.users * args.rounds)
    prog = Progress(total, "gate")
    try:
        res = gate(args.candidate, args.baseline, users=args.users, rounds=args.rounds,
                   seeds=args.seeds, mode=args.mode, min_effect=args.min_effect,
                   workers=args.workers, progress=prog, client=args.client,
                   default_reward=args.default_reward, window=args.window)
    finally:
        prog.close()
    print(summary(res))
    for side in ("baseline", "candidate"):
        pa = res["offline"][side]["sim"].get("regret_pct_at")
        if pa:
            print(f"  {res[side]:>16s} regret % of oracle by round: " + ", ".join(
                f"{t}: {c['mean']:.1f} [{c['lo']:.1f}, {c['hi']:.1f}]" for t, c in pa.items()))
    for row in res["per_seed"]:
        print(f"  seed {row['seed']:>3}: A {row['baseline']:.4f}  B {row['candidate']:.4f}  "
              f"Δ {row['diff']:+.4f}")
    out = Path(args.out or f"bench/results/gate_{args.candidate}_vs_{args.baseline}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=_np))
    print(f"wrote {out}")
    if not args.no_mlflow:
        info = log_run("tips-gate", f"{args.candidate}-vs-{args.baseline}",
                       params={**res["config"], "candidate": args.candidate,
                               "baseline": args.baseline, "min_effect": args.min_effect},
                       metrics={"diff": res["diff"], "lift_pct": res["relative_lift_pct"]},
                       tags={"verdict": res["verdict"]}, artifacts=[out])
        if "error" in info:
            print(f"MLflow: not logged ({info['error']})", file=sys.stderr)
        else:
            print(f"MLflow: run {info['run_id']} in experiment tips-gate at {info['uri']}")
    if not args.no_cards:
        from tipsml.bandits import POLICY_KINDS

        # one card per served policy version (simulator-only variants get none)
        items = list({n: res["offline"][k] for k, n in (("candidate", args.candidate),
                                                        ("baseline", args.baseline))
                      if n in POLICY_KINDS}.items())
        for line in card_lines(write_cards(items, verdict_entry(res))):
            print(line)
    return 0 if res["verdict"] == "promote" else 1



if __name__ == "__main__":
    raise SystemExit(main())

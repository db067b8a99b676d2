"""``python -m tipsdev.sim`` — run the persona simulator.

Examples::

    python -m tipsdev.sim        # 4 policies, 200 users × 300 rounds × 10 seeds, in-process
    python -m tipsdev.sim --mode nats --users 20 --rounds 15 --seeds 2   # through the real workers
    python -m tipsdev.sim --policies egreedy-v1,egreedy-v2 --seeds 0-4 --out bench/results/sim_small

Feedback (``--client``): ``realistic`` (default) — ignored tips send nothing, as with a
real app; the service's default reward (``--default-reward``, 0.0; ``none`` = off) is
applied when a decision's window closes (``--window`` rounds; in NATS mode the feedback
consumer's ``DEFAULT_REWARD`` / ``REWARD_WINDOW_S`` decide). ``explicit`` — the former
simulator, which sent ``feedback.ignored`` for every ignored tip.

NATS mode uses the stack at ``NATS_URL`` (workers already running) or, when unset,
starts an embedded nats-server + redis-server and spawns the scorer and the feedback
consumer. Policy hyper-parameters come from the same env as the scorer (``EPSILON``,
``LINUCB_ALPHA``, ``THOMPSON_V`` ...). Output: a table on stdout, ``<out>.json``,
``<out>.png`` (regret curves with 95% bands) and an MLflow run (``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import argparse
import sys
import time

from tipsdev.sim.report import regret_plot, regret_table, to_json
from tipsdev.sim.runner import DEFAULT_POLICIES, SimConfig, run
from tipsdev.sim.tracking import log_run
from tipsdev.sim.world import DEFAULT_PERSONAS


def parse_seeds(s: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in s.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return tuple(out)


def seeds_arg(v: str) -> tuple[int, ...]:
    """``10`` → seeds 0..9; ``3-7`` or ``1,4,9`` → exactly those."""
    if v.isdigit():
        return tuple(range(int(v)))
    return parse_seeds(v)


def add_world_args(ap: argparse.ArgumentParser, users: int, rounds: int, seeds: str) -> None:
    ap.add_argument("--users", type=int, default=users)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--seeds", type=seeds_arg, default=seeds_arg(seeds),
                    help="a count (10 = seeds 0..9) or a list/range (3-7, 1,4,9)")
    ap.add_argument("--personas", default=",".join(DEFAULT_PERSONAS))
    ap.add_argument("--tips-per-day", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="processes (in-process mode)")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--client", choices=["realistic", "explicit"], default="realistic",
                    help="realistic: ignored tips send nothing (default); explicit: the former sim")
    ap.add_argument("--default-reward", type=default_reward_arg, default=0.0,
                    help="reward applied when a window closes without a reaction; none = off")
    ap.add_argument("--window", type=int, default=1,
                    help="reward window in rounds (in-process; NATS mode: REWARD_WINDOW_S)")
    ap.add_argument("--world", choices=["personas", "heldout"], default="personas",
                    help="personas: the tuning world (sim/world.py); heldout: sim/world2.py")


def default_reward_arg(v: str) -> float | None:
    return None if v.strip().lower() in ("none", "off", "") else float(v)


class Progress:
    """tqdm when available, a plain counter otherwise."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)
        except ImportError:  # pragma: no cover
            self.bar = None
        self.n = 0

    def __call__(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tipsdev.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    ap.add_argument("--mode", choices=["inproc", "nats"], default="inproc")
    add_world_args(ap, 200, 300, "10")
    ap.add_argument("--out", default="bench/results/sim_regret",
                    help="path prefix of the .json and .png outputs")
    args = ap.parse_args(argv)
    cfg = SimConfig(policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
                    users=args.users, rounds=args.rounds, seeds=args.seeds,
                    personas=tuple(args.personas.split(",")), tips_per_day=args.tips_per_day,
                    mode=args.mode, workers=args.workers, client=args.client,
                    default_reward=args.default_reward, window=args.window,
                    world_name=args.world)
    if args.mode == "inproc":
        prog = Progress(len(cfg.seeds) * len(cfg.policies), "policy × seed runs")
    else:
        prog = Progress(len(cfg.seeds) * cfg.rounds * cfg.users * len(cfg.policies), "decisions")
    t0 = time.time()
    try:
        res = run(cfg, prog)
    finally:
        prog.close()
    table = regret_table(res)
    print(table)
    js = to_json(res, f"{args.out}.json")
    png = regret_plot(res, f"{args.out}.png")
    print(f"\nwrote {js} and {png} ({time.time() - t0:.0f}s)")
    if not args.no_mlflow:
        metrics = {p: {"mean_reward": v["mean_reward"]["mean"],
                       "mean_expected": v["mean_expected"]["mean"],
                       "regret": v["regret"]["mean"], "regret_lo": v["regret"]["lo"],
                       "regret_hi": v["regret"]["hi"]} for p, v in res["policies"].items()}
        info = log_run("tips-sim", f"sim-{cfg.mode}-{cfg.users}x{cfg.rounds}x{len(cfg.seeds)}",
                       params=cfg.to_dict(), metrics=metrics, artifacts=[js, png],
                       series={f"{p}.regret": v["regret_curve"]["mean"]
                               for p, v in res["policies"].items()})
        if "error" in info:
            print(f"MLflow: not logged ({info['error']})", file=sys.stderr)
        else:
            print(f"MLflow: run {info['run_id']} in experiment tips-sim at {info['uri']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

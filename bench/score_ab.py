"""tips.score latency, this checkout against another one (before/after a change).

    git worktree add --detach /tmp/base <commit>
    python bench/score_ab.py --base /tmp/base --runs 3 --rates 500 1000 --duration 10
    python bench/score_ab.py --base /tmp/base --runs 4 --cpu-rate 300 --duration 10 \
        --out bench/results/score_ab_cpu.json   # scorer CPU time per decision
    python bench/score_ab.py --base /tmp/base --same-bench --cpu-rate 500 ...  # one bench
    python bench/score_ab.py --base . --before-env SCORER_NATS_FAST_PATH=0 --cpu-rate 500

Runs ``bench/score_bench.py`` alternately from the base checkout (its ``shared/src`` and
``scorer/src`` first on PYTHONPATH, so the scorer it starts is the base code) and from
this one, ``--runs`` times each, every run with its own servers and its own echo floor;
then the median and the spread (min–max) of each figure per variant and rate.
Alternating spreads a shared machine's load over both variants alike; it does not
remove it: read the echo floor of the same runs beside every figure.
Writes ``--out`` (default bench/results/score_ab.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def one(tree: Path, out: Path, args, base: bool) -> dict:
    env = dict(os.environ)
    if base and tree != ROOT:
        from score_cpu_steps import build_c_part

        build_c_part(tree)  # a base with tipsml's C part runs with it, as `make setup` builds it
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "shared" / "src"),
                                             str(tree / "scorer" / "src")])
    else:
        env.pop("PYTHONPATH", None)
    if base:  # e.g. SCORER_NATS_FAST_PATH=0 with --base . : one setting before/after
        env.update(kv.split("=", 1) for kv in args.before_env)
    bench = (ROOT if args.same_bench else tree) / "bench" / "score_bench.py"
    cmd = [sys.executable, str(bench), "--duration",
           str(args.duration), "--out", str(out)]
    if args.cpu_rate:  # one rate, and the scorer's CPU time per decision (from /proc)
        cmd += ["--sweep", "--sweep-start", str(args.cpu_rate), "--sweep-max",
                str(args.cpu_rate), "--repeats", "1"]
    else:
        cmd += ["--rates", *[str(r) for r in args.rates]]
    print("+", ("PYTHONPATH=<base> " if base else "") + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=False)
    return json.loads(out.read_text()) if out.exists() else {}


def spread(vals: list[float]) -> dict:
    vals = [v for v in vals if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(vals), 3), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a checkout of the commit to compare with")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rates", type=float, nargs="+", default=[500, 1000])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "score_ab.json"))
    ap.add_argument("--cpu-rate", type=float, default=None,
                    help="instead of --rates: one rate per run (score_bench --sweep at that "
                         "rate only) and the scorer's CPU microseconds per decision")
    ap.add_argument("--before-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="environment of the 'before' runs only (with --base . : the same "
                         "code, one setting off and on)")
    ap.add_argument("--same-bench", action="store_true",
                    help="run this checkout's score_bench.py for both variants (only the "
                         "scorer's code differs: the same load generator and floor)")
    ap.add_argument("--no-run", action="store_true",
                    help="summarise the per-run files of an earlier invocation")
    args = ap.parse_args()
    base = Path(args.base).resolve()
    if not args.no_run and base != ROOT:
        from score_cpu_steps import build_c_part

        build_c_part(base)  # the base runs with its C part, as `make setup` builds it
    work = Path(args.out).resolve().with_suffix("")  # each run's own score_bench output
    work.mkdir(parents=True, exist_ok=True)
    raw: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.runs):
        for variant, tree in (("before", base), ("after", ROOT)):
            out = work / f"{variant}-{i + 1}.json"
            if args.no_run:
                raw[variant].append(json.loads(out.read_text()) if out.exists() else {})
            else:
                raw[variant].append(one(tree, out, args, base=variant == "before"))

    def commit(tree: Path) -> str:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                           capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=tree, capture_output=True, text=True, check=False).stdout
        return r.stdout.strip() + ("+changes" if dirty.strip() else "")

    summary: dict = {}
    if args.cpu_rate:
        for variant, results in raw.items():
            runs = [r["sweep"]["rates"][0]["runs"][0] for r in results
                    if (r.get("sweep") or {}).get("rates")]
            summary[variant] = {str(int(args.cpu_rate)): {
                "scorer_cpu_us_per_decision": spread([x["scorer_cpu_us_per_decision"]
                                                      for x in runs]),
                "score_p50_ms": spread([x["score"]["p50_ms"] for x in runs]),
                "score_p99_ms": spread([x["score"]["p99_ms"] for x in runs]),
                "echo_p99_ms": spread([x["echo"]["p99_ms"] for x in runs]),
                "p99_ratio_to_echo": spread([x["p99_ratio_to_echo"] for x in runs]),
                # the whole box's share per decision, beside the scorer's own
                "redis_cpu_us_per_decision": spread([
                    x.get("server_cpu_us_per_decision", {}).get("redis") for x in runs]),
                "nats_cpu_us_per_decision": spread([
                    x.get("server_cpu_us_per_decision", {}).get("nats") for x in runs]),
                "echo_cpu_us_per_message": spread([x.get("echo_cpu_us_per_message")
                                                   for x in runs]),
                "errors": sum(x["score"]["errors"] for x in runs)}}
    for variant, results in ([] if args.cpu_rate else raw.items()):
        for rate in args.rates:
            rows = [next((x for x in r.get("rates", []) if x["rate"] == rate), None)
                    for r in results]
            rows = [x for x in rows if x]
            summary.setdefault(variant, {})[str(int(rate))] = {
                "score_p50_ms": spread([x["score"]["p50_ms"] for x in rows]),
                "score_p99_ms": spread([x["score"]["p99_ms"] for x in rows]),
                "echo_p99_ms": spread([x["echo"]["p99_ms"] for x in rows]),
                "p99_ratio_to_echo": spread([x["p99_ratio_to_echo"] for x in rows]),
                "errors": sum(x["score"]["errors"] for x in rows),
            }
    out = {"what": "tips.score open-loop latency, base vs this checkout, alternating runs"
                   + (f"; scorer CPU per decision at {args.cpu_rate:g} req/s" if args.cpu_rate
                      else ""),
           "base": {"path": str(base), "commit": commit(base)},
           "after": {"path": str(ROOT), "commit": commit(ROOT)},
           "runs": args.runs, "rates": args.rates, "duration_s": args.duration,
           "summary": summary,
           "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg(),
                       "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "note": "shared 2-core machine: other engineers' jobs run meanwhile"},
           "raw": raw}
    Path(args.out).resolve().write_text(json.dumps(out, indent=2))
    print(f"\n{'variant':<8} {'rate':>6} {'p50 ms':>22} {'p99 ms':>26} {'echo p99 ms':>24} "
          f"{'errors':>6}" + ("  scorer / redis CPU us per decision" if args.cpu_rate else ""))
    for variant, per in summary.items():
        for rate, f in per.items():
            def fmt(d):
                return f"{d['median']} [{d['min']}, {d['max']}]"
            print(f"{variant:<8} {rate:>6} {fmt(f['score_p50_ms']):>22} "
                  f"{fmt(f['score_p99_ms']):>26} {fmt(f['echo_p99_ms']):>24} {f['errors']:>6}"
                  + (f"  {fmt(f['scorer_cpu_us_per_decision'])} / "
                     f"{fmt(f['redis_cpu_us_per_decision'])}" if args.cpu_rate else ""))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scorer CPU per decision, change by change (issue 12): one row per commit (or per
commit + environment), measured by bench/score_cpu.py on the same fixed workload.

    .venv/bin/python bench/score_cpu_steps.py                     # the issue-12 steps
    .venv/bin/python bench/score_cpu_steps.py --modes rusage --repeats 3
    .venv/bin/python bench/score_cpu_steps.py --round 2 --modes callgrind,rusage,open \
        --concurrency 1 --n 300            # this round's steps, one request at a time

``--modes open`` adds a third measure: this checkout's bench/score_profile.py at a fixed
rate (``--rate``, open loop, 10 s), the scorer's CPU per decision as the load generator
really sends it (one request at a time at low rates: no batching to hide behind).

Each step's code is checked out into a temporary worktree (``git worktree add --detach``,
removed afterwards) and run with this checkout's virtualenv and *this* score_cpu.py
(``PYTHONPATH`` points at the step's sources), so only the scorer's code differs.
Two measures per step: ``callgrind`` instructions per decision (deterministic up to the
read batching: the box's load does not move it) and ``rusage`` CPU µs per decision
(median and spread of ``--repeats`` runs; a busy box inflates it, the ratio between
rows measured in the same session is what to read). Writes
bench/results/score_cpu_steps.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "score_cpu_steps"

# (label, commit, extra environment): the commits of branch issue-12, oldest first
STEPS = [
    ("before (main + the pinned-decisions test)", "e89b84d", {}),
    ("feature vectors once per version + one numpy pass per vector (choose_many)",
     "2f8a7c2", {"REDIS_FAST_PATH": "0"}),
    ("+ hot Redis pipelines on raw RESP (tipsml.resp)", "2f8a7c2", {}),
    ("+ lean JetStream publisher for DECISIONS, resp.pack inlined", "272577b", {}),
    ("+ bandits.pick on plain floats", "HEAD", {}),
]


# round 2 (2026-11-30): low-rate costs (the open-loop CPU was 1.3-1.4 ms/decision at
# 500 req/s against 0.86 in the closed loop with 8 in flight)
ROUND2 = [
    ("before this round (main at 6e7d370)", "6e7d370", {}),
    ("+ decision log lingers 5 ms, one task per log batch; coalesced reads settle by "
     "callbacks", "600a677", {}),
    ("+ pick: no draw among one candidate, slotted Choice", "ddb2a06", {}),
    ("+ decision ids drawn 512 at a time", "1f9d56d", {}),
    ("+ linger 10 ms", "12ba8a6", {}),
]

# round 3 (2026-11-30, second session): the decision log on the fast connection, then
# what the profile at 1,000 req/s showed (choose_many, getpid() syscalls, loop turns, the
# records' packing)
ROUND3 = [
    ("before this round (main at 57c0bdb)", "57c0bdb", {}),
    ("+ DECISIONS publishes and acks on the fast NATS connection", "c05d7f8", {}),
    ("+ choose_many: one gather for b and A⁻¹, np.vecdot", "45c0133", {}),
    ("+ no getpid() syscall per loop lookup (loop kept), ids reset at fork", "6469041", {}),
    ("+ coalesced reads written at once (a future, no task per read batch)", "7b54b26", {}),
    ("+ decision records written as RESP directly", "46f9692", {}),
    ("+ one read without prior lookups; profile_fallbacks from pydantic's slot", "b750522", {}),
]

# round 4 (2026-11-30, third session): the per-decision work Python did slowly, in C
# (tipsml._hot), and fewer objects and loop turns per decision
ROUND4 = [
    ("before this round (main at 3697cd9)", "3697cd9", {}),
    ("+ the arms' maths in C (arm_stats, thompson_probs)", "249a34f", {}),
    ("+ the choice in C with numpy's own draws (pick), features rounded in C", "e7cc359", {}),
    ("+ profile fallbacks kept by the field validator (no model validator, no private "
     "attribute)", "a84837f", {}),
    ("+ metrics without the client's locks; DECISIONS publishes without a coroutine",
     "40f4b36", {}),
    ("+ NATS frames parsed in C", "ec7b3bc", {}),
    ("+ RESP commands packed in C", "0856e11", {}),
    ("+ reads answered by callback, one deadline timer; a plan per live policy", "36590ff", {}),
    ("+ decision records packed in C", "1a5cd69", {}),
    ("+ profile values without a call, resolve_profile from a table", "555bc86", {}),
]

# round 5 (2026-12-06): tips.score without a task per request, and the read path's
# reference cycle (a self-referring callback held each batch's requests until the GC's
# sweep). The rows at HEAD with SCORER_SYNC_SCORE=0 are the cycle fix alone.
ROUND5 = [
    ("before this round (main at c05e9c1)", "c05e9c1", {}),
    ("+ tips.score without a task (SCORER_SYNC_SCORE), reads and replies sent as their read "
     "ends", "1fdf3ba", {}),
    ("+ no reference cycle on the read path", "068dee6", {}),
    ("the cycle fix alone (a task per request: SCORER_SYNC_SCORE=0)", "068dee6",
     {"SCORER_SYNC_SCORE": "0"}),
]

# round 6 (2026-12-06, second session): callgrind put glibc's sprintf (resp_pack's lengths)
# at 9 % of the instructions per decision
ROUND6 = [
    ("before this round (main at 511fba8)", "511fba8", {}),
    ("+ ties within TIE_TOL (1e-6)", "ac595fe", {}),
    ("+ resp_pack writes the lengths by hand, exact size", "161881c", {}),
]

# round 7 (2026-12-07): Redis's own CPU per decision (the read's Lua call), then the
# interpreter's: the hot modules compiled by Cython (tipsml.compiled, d64dfad; reverted in
# the next commit: 16-17 % fewer instructions, no CPU time saved — README, round 7). The
# last two steps are that commit with and without them; they load only where they were
# built for its sources: `pip install cython`, then in a worktree of d64dfad
# `PYTHONPATH=shared/src:scorer/src python -m tipsml.compiled build` with this .venv's python
ROUND7 = [
    ("before this round (main at 7445bf5)", "7445bf5", {}),
    ("+ the read as plain HMGETs (no Lua script)", "cc4111d", {}),
    ("+ tipsml.compiled, turned off", "d64dfad", {"TIPSML_COMPILED": "0"}),
    ("+ tipsml.compiled: 14 hot modules compiled by Cython", "d64dfad", {}),
]


def run_open(commit: str, env: dict, args, tmp: Path, src: str) -> dict:
    """CPU per decision at a fixed rate (open loop): median and spread of --repeats runs."""
    vals = []
    for i in range(args.repeats):
        out = tmp / f"{commit}-open-{i}.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "score_profile.py"), "--no-profile",
                        "--rate", str(args.rate), "--duration", str(args.duration),
                        "--out", str(out)], env={**os.environ, **env, "PYTHONPATH": src},
                       check=True, stdout=subprocess.DEVNULL)
        vals.append(json.loads(out.read_text())["cpu_us_per_decision"])
    vals.sort()
    return {"median": vals[len(vals) // 2], "min": vals[0], "max": vals[-1], "runs": vals}


def build_c_part(tree: Path) -> None:
    """A checkout with tipsml's C part (shared/setup.py, issue 12 round 4) gets it built
    in place, so its step runs with it as `make setup` would (older ones have none)."""
    shared = tree / "shared"
    if (shared / "setup.py").exists() and not list((shared / "src" / "tipsml").glob("_hot*.so")):
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=shared,
                       check=True, stdout=subprocess.DEVNULL)


def run_step(commit: str, env: dict, mode: str, args, tmp: Path) -> dict:
    wt = tmp / commit
    if not wt.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(wt), commit], cwd=ROOT,
                       check=True)
        build_c_part(wt)
    src = ":".join(str(wt / m / "src") for m in ("shared", "scorer", "devtools"))
    if mode == "open":
        return run_open(commit, env, args, tmp, src)
    out = tmp / f"{commit}-{mode}-{abs(hash(tuple(sorted(env.items()))))}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "score_cpu.py"), "--mode", mode,
           "--n", str(args.n), "--concurrency", str(args.concurrency), "--out", str(out)]
    if mode == "rusage":
        cmd += ["--repeats", str(args.repeats)]
    subprocess.run(cmd, env={**os.environ, **env, "PYTHONPATH": src}, check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--modes", default="callgrind,rusage")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--round", type=int, choices=[1, 2, 3, 4, 5, 6, 7], default=1,
                    help="1: issue 12's first steps; 2: low-rate costs; 3: the third round; "
                         "4: the C part; 5: no task per request; 6: RESP lengths by hand; "
                         "7: no Lua on the read, compiled modules")
    ap.add_argument("--rate", type=float, default=500, help="--modes open: requests/s")
    ap.add_argument("--duration", type=float, default=10, help="--modes open: seconds")
    ap.add_argument("--out")
    args = ap.parse_args()
    args.out = args.out or str(OUT) + ("" if args.round == 1 else f"_round{args.round}"
                                       f"_c{args.concurrency}")
    steps = {1: STEPS, 2: ROUND2, 3: ROUND3, 4: ROUND4, 5: ROUND5, 6: ROUND6,
             7: ROUND7}[args.round]
    modes = args.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="score-steps-") as t:
        tmp = Path(t)
        try:
            for label, commit, env in steps:
                sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout.strip()
                row = {"step": label, "commit": sha, "env": env}
                for mode in modes:
                    res = run_step(commit, env, mode, args, tmp)
                    if mode == "callgrind":
                        ins = res["instructions_per_decision"]
                        row["instructions_per_decision"] = ins["median"]
                    elif mode == "open":
                        row["open_cpu_us_per_decision"] = res
                    else:
                        row["cpu_us_per_decision"] = res["cpu_us_per_decision"]
                        row["user_us_median"] = sorted(r["user_us_per_decision"]
                                                       for r in res["runs"])[len(res["runs"]) // 2]
                        row["sys_us_median"] = sorted(r["sys_us_per_decision"]
                                                      for r in res["runs"])[len(res["runs"]) // 2]
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            for wt in tmp.iterdir():
                if wt.is_dir():
                    subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT,
                                   capture_output=True)
    res = {"rows": rows, "config": {"n": args.n, "concurrency": args.concurrency,
                                    "round": args.round, "rate": args.rate,
                                    "duration_s": args.duration,
                                    "repeats": args.repeats, "modes": modes,
                                    "loadavg_at_end": os.getloadavg(), "cpus": os.cpu_count(),
                                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    first = rows[0]
    lines = ["| step | commit | instructions / decision | CPU µs / decision (median [min, max] "
             f"of {args.repeats}) | CPU µs / decision at {args.rate:.0f} req/s open loop |",
             "|---|---|---|---|---|"]
    for r in rows:
        ins = r.get("instructions_per_decision")
        base = first.get("instructions_per_decision")
        ins_s = (f"{ins / 1e6:.3f} M ({(ins / base - 1) * 100:+.0f} %)" if ins and base else "–")
        c = r.get("cpu_us_per_decision")
        cpu_s = f"{c['median']:.0f} [{c['min']:.0f}, {c['max']:.0f}]" if c else "–"
        o = r.get("open_cpu_us_per_decision")
        open_s = f"{o['median']:.0f} [{o['min']:.0f}, {o['max']:.0f}]" if o else "–"
        env = " ".join(f"{k}={v}" for k, v in r["env"].items())
        lines.append(f"| {r['step']}{' (' + env + ')' if env else ''} | {r['commit']} | {ins_s} "
                     f"| {cpu_s} | {open_s} |")
    md = "\n".join(lines)
    Path(args.out + ".md").write_text(
        "# Scorer CPU per decision, change by change (issue 12)\n\n"
        f"`.venv/bin/python bench/score_cpu_steps.py` — {args.n} decisions, {args.concurrency} in "
        "flight, shadows on (egreedy-v1 + egreedy-v2 + linucb), the scorer's real `serve` against "
        "real nats-server + redis-server; the window ends when DECISIONS holds every decision. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(instructions are load-independent; the µs are inflated by a busy box).\n\n" + md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

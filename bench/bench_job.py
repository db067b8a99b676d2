"""Wall time and leaderboard of a 3-prompt × 4-scenario × 1-model tip-bench job.

Starts the embedded stack (real nats-server, redis-server and the llama-cpp server with
SmolLM2-135M from PyPI), one bench-worker subprocess (``python -m bench_worker.main``),
a fresh MLflow sqlite store, then submits the job through the CLI code path
(``bench_worker.cli.run_job``) and waits for it: the wall time is submit → ``done``
event, everything included (generation, judging by the same model, MLflow writes).

    .venv/bin/python bench/bench_job.py [--prompts v1,v2-mentor,v3-few-shot]
        [--n-scenarios 4] [--n-tips 2] [--max-tokens 96] [--workers 1]
        [--out bench/results/bench_job.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def _run(args, stack, mlflow_uri: str) -> dict:
    from bench_worker import leaderboard as LB
    from bench_worker.cli import run_job
    from bench_worker.job import BenchJob
    from bench_worker.settings import BenchSettings

    settings = BenchSettings(nats_url=stack.nats_url, redis_url=stack.redis_url,
                             llm_api_base=stack.llm_url, llm_model=args.model,
                             mlflow_tracking_uri=mlflow_uri, metrics_port=-1)
    job = BenchJob(experiment=args.experiment, models=[args.model],
                   prompts=args.prompts.split(","), n_scenarios=args.n_scenarios,
                   n_tips=args.n_tips, temperature=args.temperature, max_tokens=args.max_tokens,
                   seed=args.seed, judge="llm")
    cell_s: list[float] = []

    def show(ev):
        if ev["event"] == "cell_done":
            cell_s.append(ev.get("seconds") or 0.0)
        print(f"  {ev['event']:<12} {ev.get('done', '')}/{ev.get('total', '')} "
              f"{(ev.get('current') or {}).get('label', '')}", file=sys.stderr, flush=True)

    out = await run_job(job, settings, timeout=args.timeout, on_event=show)
    final = out["final"] or {}
    board = out.get("leaderboard") or {}
    print(LB.format_table(board) if board.get("ok") else board, file=sys.stderr)
    return {"job": job.model_dump(), "job_id": job.id, "n_cells": job.n_cells,
            "final_event": {k: final.get(k) for k in ("event", "done", "failed", "total")},
            "wall_s": round(out["wall_s"], 2),
            "cell_s": {"n": len(cell_s), "mean": round(sum(cell_s) / len(cell_s), 2)
                       if cell_s else None, "max": max(cell_s) if cell_s else None},
            "llm_calls": job.n_cells * job.n_tips * 2,
            "leaderboard": {k: board.get(k) for k in ("rows", "comparison", "bootstrap",
                                                       "judge", "rubric")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="openai/smollm2-135m")
    ap.add_argument("--prompts", default="v1,v2-mentor,v3-few-shot")
    ap.add_argument("--n-scenarios", type=int, default=4)
    ap.add_argument("--n-tips", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--experiment", default="tip-bench-bench-job")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_job.json"))
    args = ap.parse_args(argv)

    from tipsdev.launcher import EmbeddedStack
    from tipsdev.testing import spawn_worker

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp, \
            EmbeddedStack(llm=True) as stack:
        mlflow_uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**stack.env(), "LLM_MODEL": args.model, "MLFLOW_TRACKING_URI": mlflow_uri,
               "METRICS_PORT": "-1"}
        workers = [spawn_worker("bench_worker.main", env, log_path=f"{tmp}/worker.log")
                   for _ in range(args.workers)]
        try:
            res = asyncio.run(_run(args, stack, mlflow_uri))
        finally:
            for w in workers:
                w.stop()
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "platform": platform.platform(), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "workers": args.workers,
                      "llm": "SmolLM2-135M-Instruct Q4_1 via llama-cpp-python server, "
                             f"{os.environ.get('TIPS_LLM_THREADS', '2')} threads"}
    res["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["command"] = "python bench/bench_job.py " + " ".join(argv or sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wall {res['wall_s']}s for {res['n_cells']} cells; written {args.out}")
    return 0 if res["final_event"]["event"] == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())

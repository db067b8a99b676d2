"""tip-bench command line.

    python -m bench_worker.cli run --models openai/smollm2-135m --prompts v1,v2-mentor \
        --n-scenarios 4 --n-tips 2 [--experiment tip-bench] [--judge llm] [--seed 0]
    python -m bench_worker.cli leaderboard --experiment tip-bench [--job-id J] [--chart]
    python -m bench_worker.cli experiments
    python -m bench_worker.cli runs --experiment tip-bench [--job-id J] [--kind cell|all]
    python -m bench_worker.cli export --experiment tip-bench --out pending.json
    python -m bench_worker.cli apply scored.json
    python -m bench_worker.cli agreement --experiment tip-bench

``run`` publishes ``bench.run`` on the BENCH stream (header ``Tips-Admin-Token`` from
``ADMIN_TOKEN`` when set), follows ``bench.status.<job_id>`` with a live progress bar and
prints the leaderboard. Re-running the same command resumes the same job (same job id).
``export`` / ``apply`` / ``agreement`` talk to the MLflow store directly (the seeds'
Phase B: a human or external judge scores the exported JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from bench_worker import leaderboard as LB
from bench_worker.job import BenchJob
from tipsml import subjects as S
from tipsml.contract import ContractError, describe_validation_error

from .settings import BenchSettings

TERMINAL_EVENTS = ("done",)


def _bar(ev: dict, width: int = 30) -> str:
    total = max(1, int(ev.get("total") or 1))
    done, failed = int(ev.get("done") or 0), int(ev.get("failed") or 0)
    filled = int(width * (done + failed) / total)
    eta = ev.get("eta_s")
    cur = (ev.get("current") or {}).get("label", "")
    eta_s = f" eta {eta:.0f}s" if isinstance(eta, (int, float)) and ev["event"] != "done" else ""
    fail_s = f" failed {failed}" if failed else ""
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}{fail_s}{eta_s}  "
            f"{ev['event']}: {cur}")[:160]


async def run_job(job: BenchJob, settings: BenchSettings | None = None, *, nc=None,
                  timeout: float = 3600.0, on_event=None, leaderboard: bool = True) -> dict:
    """Submit ``job`` and follow it to the end; returns events, final event, leaderboard."""
    from tipsml.messaging.connection import connect, ensure_streams, request_json

    settings = settings or BenchSettings()
    own = nc is None
    if own:
        nc = await connect(settings, "bench-cli")
    js = nc.jetstream()
    try:
        await ensure_streams(js, ["BENCH", "BENCH_STATUS", "DEADLETTER"])
        job_id = job.id
        events: list[dict] = []
        q: asyncio.Queue = asyncio.Queue()

        async def cb(msg):
            try:
                await q.put(json.loads(msg.data))
            except ValueError:
                pass

        sub = await nc.subscribe(S.bench_status_subject(job_id), cb=cb)
        await nc.flush()
        headers = {"Nats-Msg-Id": f"bench-run:{job_id}:{uuid.uuid4().hex[:12]}",
                   "Tips-Job-Id": job_id}
        if settings.admin_token:
            headers["Tips-Admin-Token"] = settings.admin_token
        t0 = time.monotonic()
        await js.publish(S.BENCH_RUN, job.model_dump_json().encode(), headers=headers,
                         timeout=5.0)
        final = None
        deadline = t0 + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    final = {"event": "timeout", "job_id": job_id}
                    break
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=left)
                except TimeoutError:
                    continue
                events.append(ev)
                if on_event:
                    on_event(ev)
                if ev["event"] in TERMINAL_EVENTS or (ev["event"] == "error"
                                                      and not ev.get("retrying")):
                    final = ev
                    break
        finally:
            await sub.unsubscribe()
        wall = time.monotonic() - t0
        out = {"job_id": job_id, "events": events, "final": final, "wall_s": wall}
        if leaderboard and final and final["event"] == "done":
            hdr = {"Tips-Admin-Token": settings.admin_token} if settings.admin_token else None
            out["leaderboard"] = await request_json(
                nc, S.BENCH_LEADERBOARD, {"experiment": job.experiment, "job_id": job_id},
                timeout=settings.leaderboard_timeout_s, headers=hdr)
        return out
    finally:
        if own:
            await nc.drain()


def _job_from_args(a) -> BenchJob:
    from pydantic import ValidationError

    try:
        return BenchJob(experiment=a.experiment, models=a.models.split(","),
                        prompts=a.prompts.split(","), n_scenarios=a.n_scenarios,
                        n_tips=a.n_tips, temperature=a.temperature, max_model_b=a.max_model_b,
                        judge=a.judge, judge_model=a.judge_model, seed=a.seed,
                        max_tokens=a.max_tokens, job_id=a.job_id)
    except ValidationError as e:
        raise SystemExit(f"invalid job: {describe_validation_error(e)}") from None


def _cmd_run(a) -> int:
    settings = BenchSettings()
    job = _job_from_args(a)
    if not a.quiet:
        print(f"job {job.id}: {job.n_cells} cells ({len(job.models)} model(s) × "
              f"{len(job.prompts)} prompt(s) × {job.n_scenarios} scenario(s)), "
              f"experiment {job.experiment}", file=sys.stderr)
    tty = sys.stderr.isatty()

    def show(ev):
        if a.quiet:
            return
        if ev["event"] == "error":
            err = ev.get("error", {})
            print(f"\n{'retrying: ' if ev.get('retrying') else 'ERROR '}"
                  f"{err.get('code')}: {err.get('message')}", file=sys.stderr)
            return
        line = _bar(ev)
        print(("\r" + line.ljust(160)) if tty else line, end="" if tty else "\n",
              file=sys.stderr, flush=True)

    out = asyncio.run(run_job(job, settings, timeout=a.timeout, on_event=show))
    if tty and not a.quiet:
        print(file=sys.stderr)
    final = out["final"] or {}
    if a.json:
        print(json.dumps({k: v for k, v in out.items() if k != "events"}, indent=1,
                         default=str))
    if final.get("event") != "done":
        err = final.get("error") or {"code": final.get("event"), "message": ""}
        print(f"job {out['job_id']} did not finish: {err['code']}: {err['message']}",
              file=sys.stderr)
        return 2
    print(f"job {out['job_id']} done in {out['wall_s']:.1f}s "
          f"({final.get('done')}/{final.get('total')} cells, {final.get('failed', 0)} failed)")
    lb = out.get("leaderboard") or {}
    if not a.json:
        if lb.get("ok"):
            print(LB.format_table(lb))
        else:
            print(f"leaderboard unavailable: {lb.get('error')}")
    return 0


def _cmd_leaderboard(a) -> int:
    from tipsml.messaging.connection import connect, request_json

    settings = BenchSettings()

    async def go():
        nc = await connect(settings, "bench-cli")
        try:
            hdr = {"Tips-Admin-Token": settings.admin_token} if settings.admin_token else None
            return await request_json(nc, S.BENCH_LEADERBOARD,
                                      {"experiment": a.experiment, "job_id": a.job_id,
                                       "judge": a.judge, "chart": a.chart,
                                       "agreement": a.agreement},
                                      timeout=settings.leaderboard_timeout_s, headers=hdr)
        finally:
            await nc.drain()

    lb = asyncio.run(go())
    if a.json or not lb.get("ok"):
        print(json.dumps(lb, indent=1))
        return 0 if lb.get("ok") else 1
    print(LB.format_table(lb))
    if lb.get("leaderboard_run_id"):
        print(f"chart logged to MLflow run {lb['leaderboard_run_id']} (leaderboard.png)")
    if lb.get("agreement"):
        print(json.dumps(lb["agreement"], indent=1))
    return 0


def _admin_request(subject: str, payload: dict) -> dict:
    from tipsml.messaging.connection import connect, request_json

    settings = BenchSettings()

    async def go():
        nc = await connect(settings, "bench-cli")
        try:
            hdr = {"Tips-Admin-Token": settings.admin_token} if settings.admin_token else None
            return await request_json(nc, subject, payload,
                                      timeout=settings.leaderboard_timeout_s, headers=hdr)
        finally:
            await nc.drain()

    return asyncio.run(go())


def _ms(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t / 1000)) if t else "-"


def _cmd_experiments(a) -> int:
    out = _admin_request(S.BENCH_EXPERIMENTS, {"limit": a.limit})
    if a.json or not out.get("ok"):
        print(json.dumps(out, indent=1))
        return 0 if out.get("ok") else 1
    print(f"{'experiment':<28} {'jobs':>5} {'cell runs':>9}  last update (UTC)")
    for e in out["experiments"]:
        print(f"{e['name']:<28} {e['n_jobs']:>5} {e['n_runs']:>9}  {_ms(e.get('last_update_ms'))}")
    if not out["experiments"]:
        print("(no experiments yet: `make bench-run`)")
    return 0


def _cmd_runs(a) -> int:
    out = _admin_request(S.BENCH_RUNS, {"experiment": a.experiment, "job_id": a.job_id,
                                        "kind": a.kind, "limit": a.limit})
    if a.json or not out.get("ok"):
        print(json.dumps(out, indent=1))
        return 0 if out.get("ok") else 1
    print(f"{'run id':<34} {'status':<9} {'kind':<11} {'job':<14} {'model':<26} "
          f"{'prompt':<12} composite  started (UTC)")
    for r in out["runs"]:
        comp = r.get("metrics", {}).get("composite_mean")
        print(f"{r['run_id']:<34} {r['status']:<9} {r.get('kind') or '-':<11} "
              f"{(r.get('job_id') or '-')[:14]:<14} {(r.get('model') or '-')[:26]:<26} "
              f"{(r.get('prompt') or '-')[:12]:<12} "
              f"{'-' if comp is None else f'{comp:.2f}':>9}  {_ms(r.get('start_ms'))}")
    if out.get("truncated"):
        print(f"(first {a.limit} shown; --limit N for more)")
    return 0


def _tracker():
    from bench_worker.tracking import Tracker, default_tracking_uri

    s = BenchSettings()
    return Tracker(s.mlflow_tracking_uri or default_tracking_uri(), s.artifact_root)


def _cmd_export(a) -> int:
    from bench_worker import human

    doc = human.export(_tracker(), a.experiment, job_id=a.job_id, only_pending=not a.all)
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    if a.out in (None, "-"):
        print(text)
    else:
        with open(a.out, "w") as fh:
            fh.write(text)
        print(f"{len(doc['items'])} candidate(s) exported to {a.out}", file=sys.stderr)
    return 0


def _cmd_apply(a) -> int:
    from bench_worker import human

    with open(a.file) as fh:
        try:
            data = json.load(fh)
        except ValueError as e:
            print(f"not JSON: {e}", file=sys.stderr)
            return 1
    try:
        out = human.apply(_tracker(), data)
    except ContractError as e:
        print(f"refused ({e.code.value}): {e.message}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


def _cmd_agreement(a) -> int:
    from bench_worker import human

    print(json.dumps(human.experiment_agreement(_tracker(), a.experiment, a.job_id), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench_worker.cli")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start (or resume) a job, follow it, print the leaderboard")
    r.add_argument("--experiment", default="tip-bench")
    r.add_argument("--models", required=True, help="comma list of LiteLLM model strings")
    r.add_argument("--prompts", default="v1", help="comma list of prompt versions")
    r.add_argument("--n-scenarios", type=int, default=4)
    r.add_argument("--n-tips", type=int, default=2)
    r.add_argument("--temperature", type=float, default=0.7)
    r.add_argument("--max-model-b", type=float, default=4.0)
    r.add_argument("--max-tokens", type=int, default=96)
    r.add_argument("--judge", default="llm", choices=["llm", "human", "both"])
    r.add_argument("--judge-model", default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--job-id", default=None)
    r.add_argument("--timeout", type=float, default=6 * 3600)
    r.add_argument("--json", action="store_true")
    r.add_argument("--quiet", action="store_true")
    lb = sub.add_parser("leaderboard", help="rows by (model, prompt) with 95%% CIs")
    lb.add_argument("--experiment", default="tip-bench")
    lb.add_argument("--job-id", default=None)
    lb.add_argument("--judge", default="auto", choices=list(LB.JUDGES))
    lb.add_argument("--chart", action="store_true", help="log a PNG chart to MLflow")
    lb.add_argument("--agreement", action="store_true")
    lb.add_argument("--json", action="store_true")
    xs = sub.add_parser("experiments", help="list bench experiments (bench.experiments)")
    xs.add_argument("--limit", type=int, default=100)
    xs.add_argument("--json", action="store_true")
    rs = sub.add_parser("runs", help="list the runs of an experiment (bench.runs)")
    rs.add_argument("--experiment", default="tip-bench")
    rs.add_argument("--job-id", default=None)
    rs.add_argument("--kind", default="cell", choices=["cell", "leaderboard", "agreement", "all"])
    rs.add_argument("--limit", type=int, default=200)
    rs.add_argument("--json", action="store_true")
    ex = sub.add_parser("export", help="pending candidates as JSON for a human judge")
    ex.add_argument("--experiment", default="tip-bench")
    ex.add_argument("--job-id", default=None)
    ex.add_argument("--all", action="store_true", help="also already-judged runs")
    ex.add_argument("--out", default="-")
    ap_ = sub.add_parser("apply", help="apply a scored JSON file to the MLflow runs")
    ap_.add_argument("file")
    ag = sub.add_parser("agreement", help="LLM vs human judge agreement")
    ag.add_argument("--experiment", default="tip-bench")
    ag.add_argument("--job-id", default=None)
    a = ap.parse_args(argv)
    return {"run": _cmd_run, "leaderboard": _cmd_leaderboard, "experiments": _cmd_experiments,
            "runs": _cmd_runs, "export": _cmd_export,
            "apply": _cmd_apply, "agreement": _cmd_agreement}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())

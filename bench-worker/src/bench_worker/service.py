"""The bench coordinator: jobs → cells on the BENCH work queue → MLflow runs → leaderboard.

Flow (every step safe to repeat, so any worker may die at any point):

1. ``bench.run`` (consumer ``bench-jobs``): authorise, validate (prompt versions, model
   sizes) — a refused job gets an ``error`` event on ``bench.status.<job_id>`` and a dead
   letter before any work. A valid job syncs finished cells (Redis ∪ MLflow), then
   publishes the pending cells of its first unfinished *phase* (model) as
   ``bench.cell.<job_id>.<n>`` with ``Nats-Msg-Id: bench-cell:<job_id>:<n>:a<attempt>``
   (re-sending the job re-publishes the same ids: JetStream drops the duplicates).
2. ``bench.cell.>`` (consumer ``bench-cells``, any number of workers): skip if done;
   take a Redis lease; heartbeat ``in_progress`` + lease renewals while generating and
   judging; write the MLflow run; record it in Redis; publish ``cell_done``; ack last.
   A redelivered cell whose MLflow run already finished is recorded, not redone.
3. The worker that finishes the last cell of a phase publishes the next phase; the one
   that finishes the job (exactly one, by a Redis flag) logs the leaderboard run with
   the PNG chart and publishes ``done`` with the leaderboard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tipsml import prompts as P
from tipsml import subjects as S
from tipsml.contract import ContractError, ErrorCode, loads_object, parse
from tipsml.llm import LLMClient, LLMError
from tipsml.natsutil import publish_dead_letter
from bench_worker import human
from bench_worker import leaderboard as LB
from bench_worker.job import BenchJob, Cell, cell_message, model_size_b, parse_parameter_size, validate
from bench_worker.judge import TRANSIENT, LLMJudge
from bench_worker.runner import run_cell
from bench_worker.store import JobStore
from bench_worker.tracking import Tracker

log = logging.getLogger("bench_worker")

ADMIN_HEADER = "Tips-Admin-Token"


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def _validate(model, obj: dict):
    from pydantic import ValidationError

    from tipsml.contract import describe_validation_error

    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise ContractError(ErrorCode.invalid_request, describe_validation_error(e)) from None


class Transient(Exception):
    """A failure worth retrying later (LLM/MLflow/Redis/NATS unavailable)."""


@dataclass
class Counters:
    """Optional metric hooks (the worker passes Prometheus objects)."""

    jobs: Any = None      # Counter(outcome)
    cells: Any = None     # Counter(outcome)
    cell_s: Any = None    # Histogram
    busy: Any = None      # Gauge

    def inc(self, which: str, label: str) -> None:
        c = getattr(self, which)
        if c is not None:
            c.labels(label).inc()


class BenchService:
    def __init__(self, settings, nc, redis, tracker: Tracker, counters: Counters | None = None):
        self.s = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.store = JobStore(redis)
        self.tracker = tracker
        self.c = counters or Counters()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.llm = LLMClient(model=settings.llm_model, api_base=settings.llm_api_base,
                             api_key=settings.llm_api_key, timeout=settings.llm_timeout_s,
                             retries=1, keep_alive=settings.keep_alive,
                             breaker_failures=5, breaker_s=2.0)

    # ------------------------------------------------------------------ helpers

    def _authorised(self, msg) -> bool:
        token = self.s.admin_token
        return not token or (msg.headers or {}).get(ADMIN_HEADER) == token

    async def status(self, job_id: str, event: str, msg_id: str, **fields) -> None:
        payload = {"job_id": job_id, "event": event, "ts": time.time(),
                   "worker": self.worker_id, **fields}
        try:
            await self.js.publish(S.bench_status_subject(job_id), _dumps(payload),
                                  headers={"Nats-Msg-Id": f"bench-status:{job_id}:{msg_id}"},
                                  timeout=5.0)
        except Exception as e:  # noqa: BLE001 - progress is best effort, work goes on
            log.warning("status %s for %s not published: %s", event, job_id, e)

    async def _progress(self, job: BenchJob) -> dict:
        done, failed = await self.store.counts(job.id)
        total = job.n_cells
        eta = await self.store.eta_s(job.id, done, failed, total)
        return {"experiment": job.experiment, "done": done, "failed": failed, "total": total,
                "eta_s": None if eta is None else round(eta, 1)}

    def judge_for(self, job: BenchJob) -> LLMJudge:
        model = job.judge_model or self.s.judge_model or self.s.llm_model
        return LLMJudge(self.llm, model, max_retries=self.s.judge_max_retries,
                        max_tokens=self.s.judge_max_tokens, timeout_s=self.s.llm_timeout_s,
                        response_mode=self.s.judge_response_format,
                        keep_alive=self.s.keep_alive)

    async def model_size(self, model: str) -> float | None:
        b = model_size_b(model)
        if b is not None:
            return b
        return await self._server_size(model)

    async def _server_size(self, model: str) -> float | None:
        """Ask the server: Ollama ``/api/show`` → ``details.parameter_size``; an
        OpenAI-compatible ``/models`` entry with ``meta.n_params`` (llama.cpp)."""
        import httpx

        provider, _, name = model.partition("/")
        if not name:
            provider, name = "", model
        base = (self.s.llm_api_base or ("http://localhost:11434"
                                        if provider.startswith("ollama") else "")).rstrip("/")
        if not base:
            return None
        try:
            async with httpx.AsyncClient(timeout=self.s.model_info_timeout_s) as cli:
                if provider.startswith("ollama"):
                    r = await cli.post(f"{base}/api/show", json={"model": name})
                    if r.status_code == 200:
                        return parse_parameter_size(
                            (r.json().get("details") or {}).get("parameter_size"))
                    return None
                r = await cli.get(f"{base}/models")
                if r.status_code == 200:
                    for m in r.json().get("data", []):
                        if m.get("id") == name and (m.get("meta") or {}).get("n_params"):
                            return float(m["meta"]["n_params"]) / 1e9
        except Exception as e:  # noqa: BLE001 - unknown size is refused by validate()
            log.info("model info for %s unavailable: %s", model, e)
        return None

    # ------------------------------------------------------------------ jobs

    async def handle_job(self, msg) -> None:
        meta = msg.metadata
        sub = f"s{meta.sequence.stream}"
        job_id = "unknown"
        try:
            try:
                raw = loads_object(msg.data)
                if isinstance(raw.get("job_id"), str):
                    job_id = raw["job_id"][:64]
            except ContractError:
                raw = None
            hdr_id = (msg.headers or {}).get("Tips-Job-Id")
            if hdr_id:
                job_id = hdr_id[:64]
            if not self._authorised(msg):
                raise ContractError(ErrorCode.forbidden,
                                    "bench.run is admin only: missing or wrong Tips-Admin-Token")
            job = parse(BenchJob, msg.data)
            job_id = job.id
            if hdr_id and hdr_id != job.id:
                raise ContractError(ErrorCode.invalid_request,
                                    f"header Tips-Job-Id {hdr_id} does not match job id {job.id}")
            sizes = {m: await self.model_size(m) for m in job.models}
            validate(job, P.known(), sizes.get)
        except ContractError as e:
            await self._refuse(msg, job_id, sub, e)
            return
        try:
            await self._start(job, sub)
        except Exception as e:
            log.exception("job %s: start failed", job.id)
            if meta.num_delivered >= S.BENCH_JOBS_CONSUMER.max_deliver:
                await self._refuse(msg, job.id, sub, ContractError(
                    ErrorCode.unavailable, f"job could not start: {type(e).__name__}: {e}"))
                return
            await self.status(job.id, "error", f"start:{sub}:{meta.num_delivered}",
                              error={"code": "unavailable", "message": str(e)[:300]},
                              retrying=True)
            await msg.nak(delay=min(30.0, 2.0 * meta.num_delivered))
            return
        await msg.ack()
        self.c.inc("jobs", "accepted")

    async def _refuse(self, msg, job_id: str, sub: str, e: ContractError) -> None:
        self.c.inc("jobs", e.code.value)
        await self.status(job_id, "error", f"refused:{sub}",
                          error={"code": e.code.value, "message": e.message})
        try:
            await publish_dead_letter(self.js, f"{S.DLQ_BENCH_JOB}.{e.code.value}", msg.data,
                                      f"{e.code.value}: {e.message}", origin_subject=msg.subject,
                                      deliveries=msg.metadata.num_delivered,
                                      msg_id=f"bench-job:{sub}")
        except Exception as exc:  # noqa: BLE001
            log.warning("dead letter for job %s not published: %s", job_id, exc)
        await msg.term()

    async def _start(self, job: BenchJob, sub: str) -> None:
        found = await asyncio.to_thread(self.tracker.finished_cells, job.experiment, job.id)
        found.update(await self.store.done(job.id))
        attempts = await self.store.start_submission(job.id, job.experiment, job.n_cells, found)
        done = len(found)
        await self.status(job.id, "accepted", f"accepted:{sub}", experiment=job.experiment,
                          done=done, failed=0, total=job.n_cells, resumed=done > 0,
                          config=job.config(), eta_s=None)
        await self._advance(job, attempts=attempts, sub=sub)

    async def _advance(self, job: BenchJob, attempts: dict[int, int] | None = None,
                       sub: str = "") -> None:
        """Publish the first unfinished phase's pending cells, or finish the job."""
        done = await self.store.done(job.id)
        failed = await self.store.failed(job.id)
        settled = set(done) | set(failed)
        cells = job.cells()
        pending = [c for c in cells if c.n not in settled]
        if not pending:
            await self._finish(job, sub)
            return
        phase = pending[0].phase
        if attempts is None:
            attempts = await self.store.attempts(job.id)
        for c in pending:
            if c.phase != phase:
                break
            await self.js.publish(
                S.bench_cell_subject(job.id, c.n), _dumps(cell_message(job, c)),
                headers={"Nats-Msg-Id": f"bench-cell:{job.id}:{c.n}:a{attempts.get(c.n, 0)}"},
                timeout=5.0)

    async def _finish(self, job: BenchJob, sub: str) -> None:
        if not await self.store.mark_completed(job.id):
            return
        board, chart_run = None, None
        try:
            board, chart_run = await asyncio.to_thread(self._log_leaderboard, job)
        except Exception as e:  # noqa: BLE001 - the runs are there; the chart can be redone
            log.warning("leaderboard for %s not logged: %s", job.id, e)
        prog = await self._progress(job)
        prog["eta_s"] = 0.0
        await self.status(job.id, "done", f"done:{sub or 'cell'}:{prog['done']}", **prog,
                          leaderboard=board, leaderboard_run_id=chart_run)

    def _log_leaderboard(self, job: BenchJob) -> tuple[dict, str]:
        runs = [LB.run_summary(r) for r in self.tracker.cell_runs(job.experiment, job_id=job.id)]
        board = LB.compute(runs, judge="auto", seed=job.seed)
        fig = LB.chart(board, f"{job.experiment} · job {job.id}")
        import matplotlib.pyplot as plt

        try:
            rid = self.tracker.log_summary(
                job.experiment, "leaderboard", f"leaderboard {job.id}",
                tags={"job_id": job.id}, metrics=LB.summary_metrics(board),
                artifacts={"leaderboard.json": board, "job.json": job.model_dump()},
                figure=fig)
        finally:
            plt.close(fig)
        return board, rid

    # ------------------------------------------------------------------ cells

    async def handle_cell(self, msg) -> None:
        meta = msg.metadata
        try:
            data = json.loads(msg.data)
            job = BenchJob.model_validate(data["job"])
            cell = job.cells()[int(data["cell"])]
        except Exception as e:  # noqa: BLE001 - poison: cannot even name the cell
            await publish_dead_letter(self.js, f"{S.DLQ_BENCH_CELL}.invalid", msg.data,
                                      f"unreadable cell: {type(e).__name__}: {e}",
                                      origin_subject=msg.subject,
                                      deliveries=meta.num_delivered,
                                      msg_id=f"bench-cell-poison:{meta.sequence.stream}")
            await msg.term()
            return
        if await self.store.is_done(job.id, cell.n):
            await self._advance_after(job, cell)
            await msg.ack()
            return
        ttl_ms = int(self.s.cell_ack_wait_s * 1500)
        if not await self.store.acquire(cell.key, self.worker_id, ttl_ms):
            # another live worker holds it (a duplicate from a re-sent job): let it finish
            await msg.nak(delay=self.s.cell_ack_wait_s)
            return
        hb = asyncio.create_task(self._heartbeat(msg, cell.key, ttl_ms))
        try:
            await self._work(msg, job, cell)
        finally:
            hb.cancel()
            try:
                await self.store.release(cell.key, self.worker_id)
            except Exception as e:  # noqa: BLE001 - the lease expires by itself
                log.info("lease of %s not released: %s", cell.key, e)

    async def _heartbeat(self, msg, cell_key: str, ttl_ms: int) -> None:
        every = max(1.0, self.s.cell_ack_wait_s / 3.0)
        while True:
            await asyncio.sleep(every)
            try:
                await msg.in_progress()
                await self.store.renew(cell_key, self.worker_id, ttl_ms)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - next beat retries
                log.warning("heartbeat for %s failed: %s", cell_key, e)

    async def _work(self, msg, job: BenchJob, cell: Cell) -> None:
        meta = msg.metadata
        t0 = time.perf_counter()
        try:
            run_id = await asyncio.to_thread(self.tracker.finished_run, job.experiment, cell.key)
            if run_id is None:
                prog = await self._progress(job)
                await self.status(job.id, "cell_started", f"start:{cell.n}:{meta.num_delivered}",
                                  **prog, current={**cell.to_dict(), "label": cell.label()},
                                  delivery=meta.num_delivered)
                judge = self.judge_for(job)
                if self.c.busy is not None:
                    self.c.busy.inc()
                try:
                    rec = await run_cell(job, cell, self.llm, judge,
                                         llm_timeout_s=self.s.llm_timeout_s,
                                         keep_alive=self.s.keep_alive, judge_model=judge.model)
                finally:
                    if self.c.busy is not None:
                        self.c.busy.dec()
                run_id = await asyncio.to_thread(
                    self.tracker.log_cell, experiment=job.experiment, tags=rec.tags,
                    params=rec.params, metrics=rec.metrics, artifacts=rec.artifacts,
                    table=rec.table, run_name=rec.run_name)
                self.c.inc("cells", "done")
                if self.c.cell_s is not None:
                    self.c.cell_s.observe(time.perf_counter() - t0)
            else:
                self.c.inc("cells", "recovered")
            await self.store.record_done(job.id, cell.n, run_id)
        except ContractError as e:  # e.g. a prompt version removed since validation
            await self._cell_failed(msg, job, cell, f"{e.code.value}: {e.message}")
            return
        except (LLMError, Exception) as e:
            transient = not isinstance(e, LLMError) or e.kind in TRANSIENT
            reason = f"{type(e).__name__}: {str(e)[:300]}"
            if isinstance(e, LLMError):
                reason = f"llm {e.kind}: {e.message[:300]}"
            else:
                log.exception("cell %s failed", cell.key)
            if transient and meta.num_delivered < self.s.cell_max_deliver:
                self.c.inc("cells", "retry")
                prog = await self._progress(job)
                await self.status(job.id, "error", f"err:{cell.n}:{meta.num_delivered}", **prog,
                                  current={**cell.to_dict(), "label": cell.label()},
                                  error={"code": "unavailable", "message": reason},
                                  retrying=True, delivery=meta.num_delivered)
                await msg.nak(delay=self.s.retry_delay_s * meta.num_delivered)
                return
            await self._cell_failed(msg, job, cell, reason)
            return
        prog = await self._progress(job)
        await self.status(job.id, "cell_done", f"done:{cell.n}", **prog, run_id=run_id,
                          current={**cell.to_dict(), "label": cell.label()},
                          seconds=round(time.perf_counter() - t0, 2))
        await self._advance_after(job, cell)
        await msg.ack()

    async def _cell_failed(self, msg, job: BenchJob, cell: Cell, reason: str) -> None:
        self.c.inc("cells", "failed")
        await self.store.record_failed(job.id, cell.n, reason)
        try:
            await publish_dead_letter(self.js, f"{S.DLQ_BENCH_CELL}.failed", msg.data, reason,
                                      origin_subject=msg.subject,
                                      deliveries=msg.metadata.num_delivered,
                                      msg_id=f"bench-cell:{cell.key}:{msg.metadata.sequence.stream}")
        except Exception as e:  # noqa: BLE001
            log.warning("dead letter for %s not published: %s", cell.key, e)
        prog = await self._progress(job)
        await self.status(job.id, "cell_failed", f"failed:{cell.n}:{msg.metadata.sequence.stream}",
                          **prog, current={**cell.to_dict(), "label": cell.label()},
                          error={"code": "internal", "message": reason})
        await self._advance_after(job, cell)
        await msg.ack()

    async def _advance_after(self, job: BenchJob, cell: Cell) -> None:
        done = await self.store.done(job.id)
        failed = await self.store.failed(job.id)
        settled = set(done) | set(failed)
        phase_left = [c for c in job.phase_cells(cell.phase) if c.n not in settled]
        if not phase_left:
            await self._advance(job)

    # ------------------------------------------------------------------ leaderboard

    async def _request(self, msg, subject: str, fn) -> str:
        """Admin request-reply: authorise, run ``fn(request dict)`` in a thread within
        ``leaderboard_timeout_s``, answer exactly once; returns the outcome code."""
        code = "ok"
        try:
            if not self._authorised(msg):
                raise ContractError(ErrorCode.forbidden, f"{subject} is admin only")
            req = loads_object(msg.data)
            out = await asyncio.wait_for(asyncio.to_thread(fn, req),
                                         timeout=self.s.leaderboard_timeout_s)
            body = _dumps({"ok": True, **out})
        except ContractError as e:
            code = e.code.value
            body = _dumps({"ok": False, "error": {"code": code, "message": e.message}})
        except TimeoutError:
            code = "timeout"
            body = _dumps({"ok": False, "error": {"code": code,
                                                  "message": f"{subject} took too long"}})
        except Exception as e:
            log.exception("%s failed", subject)
            code = "internal"
            body = _dumps({"ok": False, "error": {"code": code, "message": type(e).__name__}})
        from tipsml.service import respond

        return await respond(msg, body, code)

    async def handle_leaderboard(self, msg) -> str:
        def go(req: dict) -> dict:
            if not isinstance(req.get("experiment"), str):
                raise ContractError(ErrorCode.invalid_request, "experiment (str) is required")
            judge = req.get("judge", "auto")
            if judge not in LB.JUDGES:
                raise ContractError(ErrorCode.invalid_request,
                                    f"judge must be one of {', '.join(LB.JUDGES)}")
            return self.leaderboard(req["experiment"], req.get("job_id"), judge,
                                    bool(req.get("chart", False)),
                                    bool(req.get("agreement", False)))

        return await self._request(msg, S.BENCH_LEADERBOARD, go)

    async def handle_experiments(self, msg) -> str:
        def go(req: dict) -> dict:
            from tipsml.contract import ExperimentsRequest

            r = _validate(ExperimentsRequest, req)
            return {"experiments": self.tracker.list_experiments(limit=r.limit)}

        return await self._request(msg, S.BENCH_EXPERIMENTS, go)

    async def handle_runs(self, msg) -> str:
        def go(req: dict) -> dict:
            from tipsml.contract import RunsRequest

            r = _validate(RunsRequest, req)
            if self.tracker.experiment_id(r.experiment, create=False) is None:
                raise ContractError(ErrorCode.not_found, f"no experiment {r.experiment!r}")
            runs, truncated = self.tracker.list_runs(r.experiment, job_id=r.job_id,
                                                     kind=r.kind, limit=r.limit)
            return {"experiment": r.experiment, "job_id": r.job_id, "runs": runs,
                    "truncated": truncated}

        return await self._request(msg, S.BENCH_RUNS, go)

    def leaderboard(self, experiment: str, job_id: str | None = None, judge: str = "auto",
                    chart: bool = False, agreement: bool = False) -> dict:
        if self.tracker.experiment_id(experiment, create=False) is None:
            raise ContractError(ErrorCode.not_found, f"no experiment {experiment!r}")
        runs = [LB.run_summary(r) for r in self.tracker.cell_runs(experiment, job_id=job_id)]
        board = LB.compute(runs, judge=judge)
        out = {"experiment": experiment, "job_id": job_id, **board}
        if agreement:
            out["agreement"] = human.experiment_agreement(self.tracker, experiment, job_id)
        if chart:
            import matplotlib.pyplot as plt

            fig = LB.chart(board, f"{experiment}" + (f" · job {job_id}" if job_id else ""))
            try:
                out["leaderboard_run_id"] = self.tracker.log_summary(
                    experiment, "leaderboard", f"leaderboard {job_id or 'all'}",
                    tags={"job_id": job_id or ""}, metrics=LB.summary_metrics(board),
                    artifacts={"leaderboard.json": board}, figure=fig)
            finally:
                plt.close(fig)
        return out

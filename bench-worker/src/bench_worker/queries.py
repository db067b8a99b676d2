"""The bench queries (request-reply, admin only): ``bench.leaderboard``,
``bench.experiments``, ``bench.runs``. Each reads MLflow in a thread within
``BENCH_LEADERBOARD_TIMEOUT_S`` (past it: a ``timeout`` reply); the reply mechanics are
the shared endpoint helper's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import ValidationError

from bench_worker import human
from bench_worker import leaderboard as LB
from bench_worker.admin import require_admin
from bench_worker.status import dumps
from bench_worker.tracking import Tracker
from tipsml.contract import (
    ContractError,
    ErrorCode,
    ExperimentsRequest,
    RunsRequest,
    describe_validation_error,
    loads_object,
)


def _validate(model, obj: dict):
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise ContractError(ErrorCode.invalid_request, describe_validation_error(e)) from None


class Queries:
    def __init__(self, settings, tracker: Tracker):
        self.s = settings
        self.tracker = tracker

    async def _answer(self, msg, subject: str, fn: Callable[[dict], dict]) -> bytes:
        """Authorise, then ``fn(request dict)`` in a thread within the timeout."""
        require_admin(self.s.admin_token, msg, subject)
        req = loads_object(msg.data)
        out = await asyncio.wait_for(asyncio.to_thread(fn, req),
                                     timeout=self.s.leaderboard_timeout_s)
        return dumps({"ok": True, **out})

    async def handle_leaderboard(self, msg) -> bytes:
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

        return await self._answer(msg, "bench.leaderboard", go)

    async def handle_experiments(self, msg) -> bytes:
        def go(req: dict) -> dict:
            r = _validate(ExperimentsRequest, req)
            return {"experiments": self.tracker.list_experiments(limit=r.limit)}

        return await self._answer(msg, "bench.experiments", go)

    async def handle_runs(self, msg) -> bytes:
        def go(req: dict) -> dict:
            r = _validate(RunsRequest, req)
            if self.tracker.experiment_id(r.experiment, create=False) is None:
                raise ContractError(ErrorCode.not_found, f"no experiment {r.experiment!r}")
            runs, truncated = self.tracker.list_runs(r.experiment, job_id=r.job_id,
                                                     kind=r.kind, limit=r.limit)
            return {"experiment": r.experiment, "job_id": r.job_id, "runs": runs,
                    "truncated": truncated}

        return await self._answer(msg, "bench.runs", go)

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

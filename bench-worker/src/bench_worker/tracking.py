"""MLflow logging of bench cells: one run per cell, plus leaderboard / agreement runs.

Tracking store: ``MLFLOW_TRACKING_URI`` or, by default, a local sqlite file
(``<run dir>/mlflow/mlflow.db``, artifacts beside it). Every cell run carries

* tags: ``kind=cell``, ``job_id``, ``cell_key``, ``model``, ``prompt``, ``scenario``,
  ``rubric``, ``judge``, ``judge_pending`` (``true`` until the configured judges scored);
* params: model, prompt version + hash, scenario (persona, slot, arm), temperature,
  seed, n_tips, max_tokens, judge model, rubric version + hash;
* metrics: per-criterion means, format_ok / overlong rates, composite mean and sum,
  counts (candidates, judged, judge-failed), latency and tokens;
* artifacts: ``rubric.json``, ``scenario.json``, ``prompt_messages.json``,
  ``candidates.json`` (texts, raw responses, scores, judge answers) and
  ``candidates_table.json`` (an MLflow table).

The MLflow client is synchronous: callers run these methods in a thread.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any

from tipsml import rubric as R

# no tqdm bars on stderr for every artifact read (CLI export/apply read many)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CELL = "cell"
LEADERBOARD = "leaderboard"
AGREEMENT = "agreement"


def default_tracking_uri(run_dir: str | os.PathLike | None = None) -> str:
    d = Path(run_dir or os.environ.get("TIPS_RUN_DIR", ".run")).resolve() / "mlflow"
    return f"sqlite:///{d / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: str | None = None):
        from mlflow import MlflowClient

        self.uri = tracking_uri
        db = _sqlite_path(tracking_uri)
        if artifact_root is None and db is not None:
            artifact_root = str(db.parent / "artifacts")
        self.artifact_root = artifact_root
        self._exp: dict[str, str] = {}
        self._lock = threading.Lock()
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            # first use creates the schema: one process at a time
            with open(str(db) + ".lock", "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    self.client = MlflowClient(tracking_uri=tracking_uri)
                    self.client.search_experiments(max_results=1)
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            self.client = MlflowClient(tracking_uri=tracking_uri)

    # ------------------------------------------------------------ experiments

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        with self._lock:
            if name in self._exp:
                return self._exp[name]
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                if not create:
                    return None
                loc = None
                if self.artifact_root and "://" not in self.artifact_root:
                    loc = (Path(self.artifact_root) / name).resolve().as_uri()
                elif self.artifact_root:
                    loc = f"{self.artifact_root.rstrip('/')}/{name}"
                try:
                    eid = self.client.create_experiment(
                        name, artifact_location=loc,
                        tags={"rubric": R.VERSION, "rubric_hash": R.RUBRIC_HASH,
                              "kind": "tip-bench"})
                except Exception:
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    eid = exp.experiment_id
            else:
                eid = exp.experiment_id
            self._exp[name] = eid
            return eid

    def list_experiments(self, limit: int = 100) -> list[dict]:
        """Bench experiments (tag ``kind=tip-bench``), newest first, with run and job counts."""
        out = []
        for exp in self.client.search_experiments(max_results=limit,
                                                  filter_string="tags.kind = 'tip-bench'",
                                                  order_by=["last_update_time DESC"]):
            runs = self._search(exp.experiment_id, f"tags.kind = '{CELL}'", None)
            out.append({"name": exp.name, "experiment_id": exp.experiment_id,
                        "n_runs": len(runs),
                        "n_jobs": len({r.data.tags.get("job_id") for r in runs}),
                        "created_ms": exp.creation_time, "last_update_ms": exp.last_update_time,
                        "tags": {k: v for k, v in exp.tags.items()
                                 if not k.startswith("mlflow.")}})
        return out

    def list_runs(self, experiment: str, *, job_id: str | None = None, kind: str = CELL,
                  limit: int = 200) -> tuple[list[dict], bool]:
        """Runs of an experiment, newest first: (summaries, truncated)."""
        eid = self.experiment_id(experiment, create=False)
        if eid is None:
            return [], False
        f = [] if kind == "all" else [f"tags.kind = '{kind}'"]
        if job_id:
            f.append(f"tags.job_id = '{job_id}'")
        runs = self._search(eid, " and ".join(f), limit + 1)
        out = []
        for r in runs[:limit]:
            t = r.data.tags
            out.append({"run_id": r.info.run_id, "run_name": r.info.run_name,
                        "status": r.info.status, "kind": t.get("kind"),
                        "job_id": t.get("job_id"), "model": t.get("model"),
                        "prompt": t.get("prompt"), "scenario": t.get("scenario"),
                        "start_ms": r.info.start_time, "end_ms": r.info.end_time,
                        "metrics": dict(r.data.metrics)})
        return out, len(runs) > limit

    def _search(self, eid: str, filter_string: str, limit: int | None) -> list:
        out, token = [], None
        while True:
            page = self.client.search_runs([eid], filter_string=filter_string,
                                           max_results=min(1000, limit or 1000),
                                           order_by=["attributes.start_time DESC"],
                                           page_token=token)
            out.extend(page)
            token = page.token
            if not token or (limit and len(out) >= limit):
                return out[:limit] if limit else out

    # ------------------------------------------------------------ cells

    def cell_runs(self, experiment: str, *, cell_key: str | None = None,
                  job_id: str | None = None, status: str | None = "FINISHED") -> list:
        eid = self.experiment_id(experiment, create=False)
        if eid is None:
            return []
        f = [f"tags.kind = '{CELL}'"]
        if cell_key:
            f.append(f"tags.cell_key = '{cell_key}'")
        if job_id:
            f.append(f"tags.job_id = '{job_id}'")
        if status:
            f.append(f"attributes.status = '{status}'")
        out, token = [], None
        while True:
            page = self.client.search_runs([eid], filter_string=" and ".join(f),
                                           max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def finished_run(self, experiment: str, cell_key: str) -> str | None:
        """The run id of a finished run of this cell; unfinished leftovers of a killed
        worker are marked KILLED so nothing ever counts them."""
        runs = self.cell_runs(experiment, cell_key=cell_key, status=None)
        done = [r for r in runs if r.info.status == "FINISHED"]
        for r in runs:
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")
        if not done:
            return None
        return min(done, key=lambda r: r.info.start_time).info.run_id

    def finished_cells(self, experiment: str, job_id: str) -> dict[int, str]:
        return {int(r.data.tags["cell_n"]): r.info.run_id
                for r in self.cell_runs(experiment, job_id=job_id)}

    def log_cell(self, *, experiment: str, tags: dict[str, str], params: dict[str, Any],
                 metrics: dict[str, float], artifacts: dict[str, Any],
                 table: dict[str, list] | None, run_name: str) -> str:
        from mlflow.entities import Metric, Param
        from mlflow.utils.time import get_current_time_millis

        eid = self.experiment_id(experiment)
        run = self.client.create_run(eid, run_name=run_name, tags={"kind": CELL, **tags})
        rid = run.info.run_id
        try:
            now = get_current_time_millis()
            self.client.log_batch(
                rid,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                         if v is not None],
                params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                tags=[])
            for name, obj in artifacts.items():
                self.client.log_dict(rid, obj, name)
            if table:
                self.client.log_table(rid, table, "candidates_table.json")
        except BaseException:
            self.client.set_terminated(rid, "FAILED")
            raise
        self.client.set_terminated(rid, "FINISHED")
        return rid

    def load_json(self, run_id: str, path: str) -> Any:
        return self._load_via_client(run_id, path)

    def _load_via_client(self, run_id: str, path: str) -> Any:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            local = self.client.download_artifacts(run_id, path, d)
            with open(local) as fh:
                return json.load(fh)

    def update_run(self, run_id: str, *, metrics: dict[str, float] | None = None,
                   tags: dict[str, str] | None = None,
                   artifacts: dict[str, Any] | None = None) -> None:
        from mlflow.entities import Metric, RunTag
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
                             if v is not None],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
        for name, obj in (artifacts or {}).items():
            self.client.log_dict(run_id, obj, name)

    # ------------------------------------------------------------ summary runs

    def log_summary(self, experiment: str, kind: str, name: str, *, tags: dict[str, str],
                    metrics: dict[str, float], artifacts: dict[str, Any],
                    figure=None, figure_name: str = "leaderboard.png") -> str:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        eid = self.experiment_id(experiment)
        run = self.client.create_run(eid, run_name=name, tags={"kind": kind, **tags})
        rid = run.info.run_id
        now = get_current_time_millis()
        if metrics:
            self.client.log_batch(rid, metrics=[Metric(k, float(v), now, 0)
                                                for k, v in metrics.items() if v is not None])
        for path, obj in artifacts.items():
            self.client.log_dict(rid, obj, path)
        if figure is not None:
            self.client.log_figure(rid, figure, figure_name)
        self.client.set_terminated(rid, "FINISHED")
        return rid

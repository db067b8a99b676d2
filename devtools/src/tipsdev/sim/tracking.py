"""MLflow logging of simulator / gate / OPE runs.

Tracking URI: env ``MLFLOW_TRACKING_URI``, default the project's one local store
(``.run/mlflow/mlflow.db``, shared with the bench worker); the artifacts of experiments
created here go to ``mlartifacts/`` beside the database unless ``MLFLOW_ARTIFACT_ROOT``
says otherwise. ``make mlflow-ui`` shows them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path


def tracking_uri() -> str:
    from bench_worker.tracking import default_tracking_uri

    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if math.isfinite(float(v)):
                out[key] = float(v)
    return out


def _experiment_id(experiment: str, uri: str) -> str:
    """The experiment's id, created (artifacts beside the sqlite store) when missing."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    root = os.environ.get("MLFLOW_ARTIFACT_ROOT")
    if not root and uri.startswith("sqlite:///"):
        root = str(Path(uri[len("sqlite:///"):]).parent.resolve() / "mlartifacts")
    try:
        return client.create_experiment(
            experiment, artifact_location=Path(root).resolve().as_uri() if root else None)
    except Exception:  # created meanwhile by another process
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def log_run(experiment: str, run_name: str, params: dict, metrics: dict,
            artifacts: list[str | Path] = (), tags: dict | None = None,
            series: dict[str, list[float]] | None = None, payload: dict | None = None) -> dict:
    """One MLflow run; returns {uri, experiment_id, run_id} or {error} (never raises)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri()
    try:
        import mlflow

        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        exp_id = _experiment_id(experiment, uri)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
            mlflow.log_params({k: (json.dumps(v) if isinstance(v, (list, dict, tuple)) else v)
                               for k, v in params.items()})
            mlflow.log_metrics(_flat(metrics))
            if tags:
                mlflow.set_tags(tags)
            for name, values in (series or {}).items():
                step_every = max(1, len(values) // 200)
                for i in range(0, len(values), step_every):
                    if math.isfinite(values[i]):
                        mlflow.log_metric(name, float(values[i]), step=i + 1)
            for a in artifacts:
                if Path(a).exists():
                    mlflow.log_artifact(str(a))
            if payload is not None:
                mlflow.log_dict(payload, "result.json")
            return {"uri": uri, "experiment": experiment, "experiment_id": exp_id,
                    "run_id": run.info.run_id}
    except Exception as e:  # noqa: BLE001 - tracking must never sink a simulation
        return {"uri": uri, "error": f"{type(e).__name__}: {e}"[:300]}

"""Service-suite fixtures: the four workers as their own processes (``python -m ...``, as
``make up`` runs them) on the session's embedded stack (real NATS/JetStream + Redis).

The generator talks to an address where no LLM listens, so a cache miss answers a
fallback tip at once (these tests are about the NATS surface, not the model); the bench
worker gets its own MLflow sqlite store.
"""

from __future__ import annotations

import socket

import pytest

from tipsdev.testing import spawn_worker


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("service-workers")


@pytest.fixture(scope="module")
def service_mlflow_uri(service_dir) -> str:
    """The bench worker's MLflow store (tests write runs into it directly)."""
    return f"sqlite:///{service_dir / 'mlflow.db'}"


@pytest.fixture(scope="module")
def service_workers(stack, service_dir, service_mlflow_uri):
    d = service_dir
    env = {**stack.env(), "METRICS_PORT": "-1", "LOG_LEVEL": "WARNING",
           "LLM_MODEL": "openai/smollm2-135m", "LLM_API_BASE": _dead_url(),
           "LLM_RETRIES": "0", "GENERATOR_REFILL_ON_MISS": "false",
           "MLFLOW_TRACKING_URI": service_mlflow_uri,
           "FEEDBACK_MISSING_GRACE_S": "1"}
    procs = []
    try:
        for module in ("scorer.main", "generator.main", "feedback_consumer.main",
                       "bench_worker.main"):
            procs.append(spawn_worker(module, env, timeout=120,
                                      log_path=str(d / f"{module}.log")))
        yield {p.name: p for p in procs}
    finally:
        for p in procs[::-1]:
            p.stop()

"""Bench-worker fixtures: the embedded real LLM (session), a session MLflow sqlite store,
and in-process / subprocess workers on the root ``stack`` (real NATS + Redis).

Only one set of bench workers may run at a time: they share the BENCH work-queue
durables (``bench-jobs`` / ``bench-cells``), so each test starts and stops its own.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tipsdev.launcher import EmbeddedStack

ACK_WAIT_S = 4.0  # short, so a killed worker's cell comes back quickly in tests
MODEL = "openai/smollm2-135m"


@pytest.fixture(scope="session")
def llm_stack():
    """The real embedded model (llama-cpp server + SmolLM2-135M GGUF from PyPI)."""
    with EmbeddedStack(nats=False, redis=False, llm=True) as st:
        yield st


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{d / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tracker(mlflow_uri):
    from bench_worker.tracking import Tracker

    return Tracker(mlflow_uri)


@pytest.fixture
def bench_env(stack, llm_stack, mlflow_uri) -> dict[str, str]:
    """Environment of a bench-worker subprocess."""
    return {**stack.env(), "LLM_API_BASE": llm_stack.llm_url, "LLM_MODEL": MODEL,
            "MLFLOW_TRACKING_URI": mlflow_uri, "BENCH_CELL_ACK_WAIT_S": str(ACK_WAIT_S),
            "BENCH_RETRY_DELAY_S": "1", "METRICS_PORT": "-1", "TIPS_LLM_THREADS": "2"}


@pytest.fixture
def bench_worker(stack, llm_stack, mlflow_uri):
    """``async with bench_worker(**overrides) as settings``: an in-process worker."""
    from bench_worker.main import serve
    from bench_worker.settings import BenchSettings

    @contextlib.asynccontextmanager
    async def start(**overrides):
        kw = {"nats_url": stack.nats_url, "redis_url": stack.redis_url, "metrics_port": -1,
              "llm_model": MODEL, "llm_api_base": llm_stack.llm_url,
              "mlflow_tracking_uri": mlflow_uri, "cell_ack_wait_s": ACK_WAIT_S,
              "retry_delay_s": 1.0}
        kw.update(overrides)
        settings = BenchSettings(**kw)
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, ready, stop))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=60,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        try:
            yield settings
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    return start

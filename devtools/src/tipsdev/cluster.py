"""A real cluster on one machine: 3 nats-server nodes (one JetStream cluster) and a Redis
Cluster of 3 masters + 3 replicas (6 redis-server processes, ``--cluster-enabled yes``,
created with ``redis-cli --cluster create … --cluster-replicas 1``).

Same interface as :class:`tipsdev.launcher.EmbeddedStack` where the tests and benches need
it (``nats_url`` lists the three nodes, ``redis_url`` is ``redis-cluster://…``, ``env()``
adds ``STREAM_REPLICAS=3``), plus :meth:`ClusterStack.kill` (SIGKILL one node) and
:meth:`ClusterStack.redis_masters` for failover drills.

CLI: ``python -m tipsdev.launcher up --cluster`` / ``down`` (``make up-cluster``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tipsdev.launcher import (
    LauncherError,
    Proc,
    _wait,
    child_preexec,
    find_nats_server,
    find_redis_server,
    nats_healthz,
    redis_ping,
)

# failover speed: a master is declared failed after this long without answers (the
# default 15 s would make every failover drill 15 s of errors on its slots)
NODE_TIMEOUT_MS = int(os.environ.get("REDIS_CLUSTER_NODE_TIMEOUT_MS", "2000"))


def redis_cmd(port: int, *args: str, timeout: float = 2.0) -> str:
    """One command through redis-cli (plain text reply)."""
    cli = shutil.which("redis-cli") or "redis-cli"
    out = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True,
                         text=True, timeout=timeout, check=False)
    return out.stdout


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class ClusterStack:
    nats_nodes: int = 3
    masters: int = 3
    workdir: Path | None = None
    detach: bool = False
    procs: dict[str, Proc] = field(default_factory=dict)
    nats_url: str | None = None
    redis_url: str | None = None
    nats_ports: list[int] = field(default_factory=list)
    nats_monitor_ports: list[int] = field(default_factory=list)
    redis_ports: list[int] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _nats_argv: dict[str, list[str]] = field(default_factory=dict)
    _redis_argv: dict[str, list[str]] = field(default_factory=dict)

    def __enter__(self) -> ClusterStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- processes
    def _spawn(self, name: str, argv: list[str], port: int) -> Proc:
        assert self.workdir is not None
        log = self.workdir / f"{name}.log"
        fh = open(log, "ab")
        p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=child_preexec(self.detach))
        fh.close()
        proc = Proc(name, p, port, log)
        self.procs[name] = proc
        return proc

    def start(self) -> ClusterStack:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tips-cluster-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_nats()
            self.start_redis()
        except BaseException:
            self._stop_all()
            raise
        return self

    def start_nats(self) -> None:
        n = self.nats_nodes
        ports = _free_ports(3 * n)
        self.nats_ports, self.nats_monitor_ports, cports = ports[:n], ports[n:2 * n], ports[2 * n:]
        routes = ",".join(f"nats://127.0.0.1:{c}" for c in cports)
        for i in range(n):
            name = f"nats{i + 1}"
            argv = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.nats_ports[i]),
                    "-m", str(self.nats_monitor_ports[i]), "-js",
                    "-sd", str(self.workdir / name), "-n", name,
                    "--cluster_name", "tips", "--cluster", f"nats://127.0.0.1:{cports[i]}",
                    "--routes", routes]
            self._nats_argv[name] = argv
            self._spawn(name, argv, self.nats_ports[i])
        for i in range(n):
            p = self.procs[f"nats{i + 1}"]
            _wait(lambda m=self.nats_monitor_ports[i]: nats_healthz(m), p.name, 60, p.popen, p.log)
        self.nats_url = ",".join(f"nats://127.0.0.1:{p}" for p in self.nats_ports)

    def start_redis(self) -> None:
        n = self.masters * 2
        ports = _free_ports(2 * n)  # the bus port is explicit: port + 10000 may not exist
        self.redis_ports, bus = ports[:n], ports[n:]
        for i, port in enumerate(self.redis_ports):
            name = f"redis{i + 1}"
            d = self.workdir / name
            d.mkdir(exist_ok=True)
            argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                    "--dir", str(d), "--cluster-enabled", "yes", "--cluster-port", str(bus[i]),
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # a master down must not stop the other masters' slots (the default
                    # refuses every command until its replica has taken over)
                    "--cluster-require-full-coverage", "no",
                    "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                    "--daemonize", "no", "--protected-mode", "yes",
                    "--hash-max-listpack-value", "512"]
            self._redis_argv[name] = argv
            self._spawn(name, argv, port)
        for i, port in enumerate(self.redis_ports):
            p = self.procs[f"redis{i + 1}"]
            _wait(lambda port=port: redis_ping(port), p.name, 30, p.popen, p.log)
        cli = shutil.which("redis-cli")
        if not cli:
            raise LauncherError("redis-cli not found (it comes with redis-server / redis-tools)")
        out = subprocess.run([cli, "--cluster", "create",
                              *[f"127.0.0.1:{p}" for p in self.redis_ports],
                              "--cluster-replicas", "1", "--cluster-yes"],
                             capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise LauncherError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        _wait(self._redis_ok, "redis cluster", 30)
        self.redis_url = "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.redis_ports)

    def _redis_ok(self) -> bool:
        live = [p for n, p in self._live_redis()]
        return all("cluster_state:ok" in redis_cmd(p, "cluster", "info") for p in live)

    def _live_redis(self) -> list[tuple[str, int]]:
        return [(n, p.port) for n, p in self.procs.items()
                if n.startswith("redis") and p.popen.poll() is None]

    def redis_masters(self) -> dict[str, int]:
        """{process name: port} of the nodes that are masters now."""
        out = {}
        for name, port in self._live_redis():
            if "role:master" in redis_cmd(port, "info", "replication"):
                out[name] = port
        return out

    def redis_roles(self) -> dict[str, str]:
        roles = {}
        for name, port in self._live_redis():
            info = redis_cmd(port, "info", "replication")
            roles[name] = "master" if "role:master" in info else "replica"
        return roles

    def wait_cluster_ok(self, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        _wait(self._redis_ok, "redis cluster", timeout)
        return time.monotonic() - t0

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one node (default ``kill -9``); :meth:`revive` starts it again."""
        proc = self.procs[name]
        if proc.popen.poll() is None:
            proc.popen.send_signal(sig)
            proc.popen.wait(timeout=10)

    def revive(self, name: str) -> None:
        """Start a killed node again with its data (a NATS node rejoins its cluster, a
        Redis node rejoins as a replica of whoever took over its slots)."""
        proc = self.procs[name]
        if proc.popen.poll() is None:
            return
        argv = self._nats_argv.get(name) or self._redis_argv[name]
        p = self._spawn(name, argv, proc.port)
        if name.startswith("nats"):
            i = int(name[4:]) - 1
            _wait(lambda: nats_healthz(self.nats_monitor_ports[i]), name, 60, p.popen, p.log)
        else:
            _wait(lambda: redis_ping(proc.port), name, 30, p.popen, p.log)

    def stop(self) -> None:
        if not self.detach:
            self._stop_all()

    def _stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            p = self.procs.pop(name).popen
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def env(self) -> dict[str, str]:
        return {"NATS_URL": self.nats_url or "", "REDIS_URL": self.redis_url or "",
                "STREAM_REPLICAS": str(min(3, self.nats_nodes))}

    def describe(self) -> dict:
        return {"env": self.env(), "workdir": str(self.workdir), "cluster": True,
                "nats_monitor": [f"http://127.0.0.1:{p}" for p in self.nats_monitor_ports],
                "pids": {n: p.popen.pid for n, p in self.procs.items()},
                "ports": {n: p.port for n, p in self.procs.items()},
                "logs": {n: str(p.log) for n, p in self.procs.items()}}


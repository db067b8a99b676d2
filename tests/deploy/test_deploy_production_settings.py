"""TIPS_ENV=production: every worker (and the provisioning command) refuses to start with
an empty or placeholder secret, without ADMIN_TOKEN, or without TLS to NATS - with one
clear line on stderr, before it connects anywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tipsml.settings import InsecureSettingsError

GOOD = "0123456789abcdef0123456789"
ENTRY_POINTS = {
    "scorer": ("scorer.main", "ScorerSettings"),
    "generator": ("generator.main", "GeneratorSettings"),
    "feedback": ("feedback_consumer.main", "FeedbackSettings"),
    "bench": ("bench_worker.main", "BenchSettings"),
}


def production_env(user: str, **over: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NATS_", "REDIS_", "ADMIN_", "TIPS_"))}
    env.update(TIPS_ENV="production", NATS_URL="tls://127.0.0.1:1", NATS_USER=user,
               NATS_PASSWORD=GOOD, NATS_TLS_CA="/nonexistent/ca.pem", ADMIN_TOKEN=GOOD,
               REDIS_URL=f"redis://{user}:{GOOD}@127.0.0.1:1/0", METRICS_PORT="-1")
    env.update(over)
    return env


def settings_cls(user: str):
    import importlib

    mod, cls = ENTRY_POINTS[user]
    pkg = mod.split(".")[0]
    return getattr(importlib.import_module(f"{pkg}.settings"), cls)


@pytest.mark.parametrize("user", list(ENTRY_POINTS))
@pytest.mark.parametrize("var,value,why", [
    ("NATS_PASSWORD", "change-me-scorer", "placeholder"),
    ("NATS_PASSWORD", "", "empty"),
    ("ADMIN_TOKEN", "", "ADMIN_TOKEN is empty"),
    ("ADMIN_TOKEN", "change-me-admin-token", "ADMIN_TOKEN is still the placeholder"),
    ("REDIS_URL", "redis://scorer:change-me-redis-scorer@redis:6379/0", "REDIS_URL"),
    ("REDIS_URL", "redis://redis:6379/0", "REDIS_URL is empty"),
    ("NATS_TLS_CA", "", "TLS"),
])
def test_settings_refuse_insecure_production_values(monkeypatch, user, var, value, why):
    for k, v in production_env(user, **{var: value}).items():
        monkeypatch.setenv(k, v)
    if value == "":
        monkeypatch.delenv(var, raising=False)
    if var == "NATS_TLS_CA":
        monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    with pytest.raises(ValueError) as e:
        settings_cls(user)()
    assert why.split()[0] in str(e.value), e.value
    assert isinstance(e.value.errors()[0]["ctx"]["error"], InsecureSettingsError)


@pytest.mark.parametrize("user", list(ENTRY_POINTS))
def test_good_production_settings_do_not_provision(monkeypatch, tls_dir, user):
    for k, v in production_env(user, NATS_TLS_CA=str(tls_dir / "ca.pem")).items():
        monkeypatch.setenv(k, v)
    s = settings_cls(user)()
    assert s.production and s.provision is False
    assert s.nats_connect_kwargs()["inbox_prefix"] == f"_INBOX_{user}"
    monkeypatch.setenv("TIPS_ENV", "dev")
    monkeypatch.setenv("NATS_PASSWORD", "change-me-scorer")  # dev: accepted
    monkeypatch.delenv("NATS_TLS_CA")
    s = settings_cls(user)()
    assert not s.production and s.provision is True


@pytest.mark.parametrize("user", list(ENTRY_POINTS))
def test_worker_process_exits_with_a_clear_message(user):
    mod, cls = ENTRY_POINTS[user]
    env = production_env(user, NATS_PASSWORD="change-me-" + user)
    r = subprocess.run([sys.executable, "-m", mod], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{cls}: refusing to start with TIPS_ENV=production"), line
    assert "NATS_PASSWORD is still the placeholder" in line and "Traceback" not in r.stderr


def test_provision_refuses_placeholder_admin_password():
    env = production_env("admin", NATS_PASSWORD="change-me-admin")
    r = subprocess.run([sys.executable, "-m", "tipsml.provision", "--wait", "0"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "NATS_PASSWORD is still the placeholder" in r.stderr, r.stderr

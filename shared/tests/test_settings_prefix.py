"""One settings idiom: each worker's settings read ``<PREFIX><NAME>`` first and today's
unprefixed name as an alias; a bad value stops the worker with one clear line and exit
status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from bench_worker.settings import BenchSettings
from feedback_consumer.settings import FeedbackSettings
from generator.settings import GeneratorSettings
from scorer.settings import ScorerSettings
from tipsml.settings import BaseServiceSettings, describe_settings_error, env_names

WORKER_VARS = ("SCORER_", "GENERATOR_", "FEEDBACK_", "BENCH_", "REDIS_TIMEOUT_S",
               "METRICS_PORT", "DEFAULT_REWARD", "LLM_", "NATS_URL", "EPSILON")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith(WORKER_VARS):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout


@pytest.mark.parametrize("cls,field,prefixed,legacy,a,b", [
    (ScorerSettings, "redis_timeout_s", "SCORER_REDIS_TIMEOUT_S", "REDIS_TIMEOUT_S", 0.1, 0.2),
    (ScorerSettings, "metrics_port", "SCORER_METRICS_PORT", "METRICS_PORT", 9101, 9102),
    (GeneratorSettings, "llm_model", "GENERATOR_LLM_MODEL", "LLM_MODEL", "a/x", "b/y"),
    (FeedbackSettings, "default_reward", "FEEDBACK_DEFAULT_REWARD", "DEFAULT_REWARD", 0.25, 0.5),
    (BenchSettings, "llm_api_base", "BENCH_LLM_API_BASE", "LLM_API_BASE", "http://a", "http://b"),
])
def test_prefixed_and_unprefixed_both_work_prefixed_wins(monkeypatch, cls, field, prefixed,
                                                         legacy, a, b):
    assert getattr(cls(), field) not in (a, b)
    monkeypatch.setenv(legacy, str(a))
    assert getattr(cls(), field) == a  # today's name still works
    monkeypatch.delenv(legacy)
    monkeypatch.setenv(prefixed, str(b))
    assert getattr(cls(), field) == b  # the prefixed one
    monkeypatch.setenv(legacy, str(a))
    assert getattr(cls(), field) == b  # both: the prefixed one wins
    assert getattr(cls(**{field: a}), field) == a  # keyword by field name (tests, tools)


def test_names_already_prefixed_keep_their_name(monkeypatch):
    assert env_names("generator_deadline_s", "GENERATOR_") == ["GENERATOR_DEADLINE_S"]
    assert env_names("feedback_batch", "FEEDBACK_") == ["FEEDBACK_BATCH"]
    monkeypatch.setenv("GENERATOR_DEADLINE_S", "0.75")
    monkeypatch.setenv("FEEDBACK_BATCH", "17")
    assert GeneratorSettings().generator_deadline_s == 0.75
    assert FeedbackSettings().feedback_batch == 17


def test_bench_only_options_have_no_unprefixed_alias(monkeypatch):
    monkeypatch.setenv("LLM_TIMEOUT_S", "99")  # the generator's, not the bench's
    assert BenchSettings().llm_timeout_s == 180.0
    monkeypatch.setenv("BENCH_LLM_TIMEOUT_S", "5")
    assert BenchSettings().llm_timeout_s == 5.0


def test_the_base_and_other_workers_are_untouched(monkeypatch):
    monkeypatch.setenv("SCORER_METRICS_PORT", "9101")
    assert BaseServiceSettings().metrics_port == 0
    assert GeneratorSettings().metrics_port == 0
    assert ScorerSettings().metrics_port == 9101


def test_dotenv_prefixed_wins_too(tmp_path):
    (tmp_path / ".env").write_text("REDIS_TIMEOUT_S=0.3\nSCORER_REDIS_TIMEOUT_S=0.4\n")
    assert ScorerSettings().redis_timeout_s == 0.4


@pytest.mark.parametrize("var,value,expect", [
    ("SCORER_REDIS_TIMEOUT_S", "fast", "SCORER_REDIS_TIMEOUT_S='fast': Input should be a valid"),
    ("REDIS_TIMEOUT_S", "fast", "SCORER_REDIS_TIMEOUT_S='fast'"),
    ("EPSILON", "2", "EPSILON must be in [0, 1]"),
])
def test_bad_value_is_one_clear_message(monkeypatch, var, value, expect):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as e:
        ScorerSettings()
    assert expect in describe_settings_error(e.value)


def test_secrets_are_not_echoed(monkeypatch):
    from pydantic_settings import SettingsConfigDict

    class T(BaseServiceSettings):
        model_config = SettingsConfigDict(env_prefix="T_")
        api_key: int = 0
        retries: int = 0

    monkeypatch.setenv("T_API_KEY", "sk-very-secret-value")
    monkeypatch.setenv("T_RETRIES", "many")
    with pytest.raises(ValidationError) as e:
        T()
    text = describe_settings_error(e.value)
    assert "T_RETRIES='many'" in text and "T_API_KEY: Input should be" in text
    assert "sk-very-secret-value" not in text


@pytest.mark.parametrize("module", ["scorer.main", "generator.main", "feedback_consumer.main",
                                    "bench_worker.main"])
def test_worker_exits_2_with_the_variable_named(module, tmp_path):
    prefix = {"scorer.main": "SCORER_", "generator.main": "GENERATOR_",
              "feedback_consumer.main": "FEEDBACK_", "bench_worker.main": "BENCH_"}[module]
    env = {k: v for k, v in os.environ.items() if not k.startswith(WORKER_VARS)}
    env[f"{prefix}SHUTDOWN_TIMEOUT_S"] = "soon"
    r = subprocess.run([sys.executable, "-m", module], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{prefix}SHUTDOWN_TIMEOUT_S='soon'" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr

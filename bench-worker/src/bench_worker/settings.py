"""Bench-worker settings: the shared ones (:mod:`tipsml.settings`) plus its own.

Every variable is read as ``BENCH_<NAME>`` first, then by its former unprefixed name
where it had one (``LLM_MODEL``, ``LLM_API_BASE``, ``LLM_API_KEY``, ``MLFLOW_TRACKING_URI``
and the shared ``NATS_URL``, ``ADMIN_TOKEN``, …; ``BENCH_LLM_MODEL`` wins when both are
set). The bench-only options always had the prefix and keep their names.

* ``LLM_API_BASE`` (unset): OpenAI-compatible / Ollama base URL of the models under test;
* ``LLM_MODEL`` (``ollama_chat/qwen2.5:1.5b``): default judge model (LiteLLM string);
* ``LLM_API_KEY`` (unset): key for hosted providers;
* ``MLFLOW_TRACKING_URI`` (``sqlite:///<TIPS_RUN_DIR or .run>/mlflow/mlflow.db``):
  tracking store;
* ``BENCH_ARTIFACT_ROOT`` (beside the sqlite file): artifact root for new experiments;
* ``BENCH_JUDGE_MODEL`` (``LLM_MODEL``): LLM judge when a job names none;
* ``BENCH_JUDGE_MAX_RETRIES`` (``2``): re-asks after an unusable judge answer;
* ``BENCH_JUDGE_MAX_TOKENS`` (``48``);
* ``BENCH_JUDGE_RESPONSE_FORMAT`` (``auto``): auto, json_schema, json_object_schema,
  json_object, none;
* ``BENCH_LLM_TIMEOUT_S`` (``180``): deadline of one generation / judge call (cold model
  loads);
* ``BENCH_KEEP_ALIVE`` (``0``): Ollama keep_alive: 0 unloads the weights after each call;
* ``BENCH_CELL_ACK_WAIT_S`` (``60``): ack_wait of the cell consumer (heartbeats every
  third);
* ``BENCH_CELL_MAX_DELIVER`` (``5``): deliveries of a cell before it is dead-lettered;
* ``BENCH_RETRY_DELAY_S`` (``10``): nak delay of a cell after a transient
  failure (× delivery);
* ``BENCH_MODEL_INFO_TIMEOUT_S`` (``3``): timeout asking the server for a model's size;
* ``BENCH_LEADERBOARD_TIMEOUT_S`` (``30``): past it a query answers ``timeout``;
* ``ADMIN_TOKEN`` (unset): when set, ``bench.run`` / ``bench.leaderboard`` need header
  ``Tips-Admin-Token``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tipsml.settings import BaseServiceSettings

# the bench-only options had only their BENCH_ name: no unprefixed alias
_BENCH_ONLY = ("artifact_root", "judge_model", "judge_max_retries", "judge_max_tokens",
               "judge_response_format", "llm_timeout_s", "keep_alive", "cell_ack_wait_s",
               "cell_max_deliver", "retry_delay_s", "model_info_timeout_s",
               "leaderboard_timeout_s")


class BenchSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BENCH_")
    legacy_env: ClassVar[dict[str, tuple[str, ...]]] = {name: () for name in _BENCH_ONLY}

    llm_api_base: str | None = None
    llm_model: str = "ollama_chat/qwen2.5:1.5b"
    llm_api_key: str | None = None
    mlflow_tracking_uri: str | None = None
    artifact_root: str | None = None
    judge_model: str | None = None
    judge_max_retries: int = Field(default=2, ge=0, le=10)
    judge_max_tokens: int = Field(default=48, ge=8, le=512)
    judge_response_format: str = "auto"
    llm_timeout_s: float = Field(default=180.0, gt=0)
    keep_alive: int | str = 0
    cell_ack_wait_s: float = Field(default=60.0, ge=3.0)
    cell_max_deliver: int = Field(default=5, ge=1, le=100)
    retry_delay_s: float = Field(default=10.0, ge=0.0)
    model_info_timeout_s: float = Field(default=3.0, gt=0)
    leaderboard_timeout_s: float = Field(default=30.0, gt=0)

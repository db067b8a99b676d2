"""Bench-worker settings. Connection settings (``NATS_URL``, ``REDIS_URL``, …) are the
shared ones; bench-only options use the ``BENCH_`` prefix.

| variable | default | meaning |
|---|---|---|
| ``LLM_API_BASE`` | unset | OpenAI-compatible / Ollama base URL of the models under test |
| ``LLM_MODEL`` | ``ollama_chat/qwen2.5:1.5b`` | default judge model (LiteLLM string) |
| ``LLM_API_KEY`` | unset | key for hosted providers |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///<TIPS_RUN_DIR or .run>/mlflow/mlflow.db`` | tracking store |
| ``BENCH_ARTIFACT_ROOT`` | beside the sqlite file | artifact root for new experiments |
| ``BENCH_JUDGE_MODEL`` | ``LLM_MODEL`` | LLM judge when a job names none |
| ``BENCH_JUDGE_MAX_RETRIES`` | ``2`` | re-asks after an unusable judge answer |
| ``BENCH_JUDGE_MAX_TOKENS`` | ``48`` | |
| ``BENCH_JUDGE_RESPONSE_FORMAT`` | ``auto`` | auto, json_schema, json_object_schema, json_object, none |
| ``BENCH_LLM_TIMEOUT_S`` | ``180`` | deadline of one generation / judge call (cold model loads) |
| ``BENCH_KEEP_ALIVE`` | ``0`` | Ollama keep_alive: 0 unloads the weights after each call |
| ``BENCH_CELL_ACK_WAIT_S`` | ``60`` | ack_wait of the cell consumer (heartbeats every third) |
| ``BENCH_CELL_MAX_DELIVER`` | ``5`` | deliveries of a cell before it is dead-lettered |
| ``BENCH_RETRY_DELAY_S`` | ``10`` | nak delay of a cell after a transient failure (× delivery) |
| ``BENCH_MODEL_INFO_TIMEOUT_S`` | ``3`` | timeout asking the server for a model's size |
| ``ADMIN_TOKEN`` | unset | when set, ``bench.run`` / ``bench.leaderboard`` need header ``Tips-Admin-Token`` |
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict
from tipsml.settings import BaseServiceSettings


def _env(*names: str):
    return AliasChoices(*names)


class BenchSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore",
                                      populate_by_name=True)

    llm_api_base: str | None = Field(default=None, validation_alias=_env("LLM_API_BASE",
                                                                         "llm_api_base"))
    llm_model: str = Field(default="ollama_chat/qwen2.5:1.5b",
                           validation_alias=_env("LLM_MODEL", "llm_model"))
    llm_api_key: str | None = Field(default=None, validation_alias=_env("LLM_API_KEY",
                                                                        "llm_api_key"))
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=_env("MLFLOW_TRACKING_URI", "mlflow_tracking_uri"))
    artifact_root: str | None = Field(default=None, validation_alias=_env(
        "BENCH_ARTIFACT_ROOT", "artifact_root"))
    judge_model: str | None = Field(default=None, validation_alias=_env("BENCH_JUDGE_MODEL",
                                                                        "judge_model"))
    judge_max_retries: int = Field(default=2, ge=0, le=10, validation_alias=_env(
        "BENCH_JUDGE_MAX_RETRIES", "judge_max_retries"))
    judge_max_tokens: int = Field(default=48, ge=8, le=512, validation_alias=_env(
        "BENCH_JUDGE_MAX_TOKENS", "judge_max_tokens"))
    judge_response_format: str = Field(default="auto", validation_alias=_env(
        "BENCH_JUDGE_RESPONSE_FORMAT", "judge_response_format"))
    llm_timeout_s: float = Field(default=180.0, gt=0, validation_alias=_env(
        "BENCH_LLM_TIMEOUT_S", "llm_timeout_s"))
    keep_alive: int | str = Field(default=0, validation_alias=_env("BENCH_KEEP_ALIVE",
                                                                   "keep_alive"))
    cell_ack_wait_s: float = Field(default=60.0, ge=3.0, validation_alias=_env(
        "BENCH_CELL_ACK_WAIT_S", "cell_ack_wait_s"))
    cell_max_deliver: int = Field(default=5, ge=1, le=100, validation_alias=_env(
        "BENCH_CELL_MAX_DELIVER", "cell_max_deliver"))
    retry_delay_s: float = Field(default=10.0, ge=0.0, validation_alias=_env(
        "BENCH_RETRY_DELAY_S", "retry_delay_s"))
    model_info_timeout_s: float = Field(default=3.0, gt=0, validation_alias=_env(
        "BENCH_MODEL_INFO_TIMEOUT_S", "model_info_timeout_s"))
    admin_token: str | None = Field(default=None, validation_alias=_env("ADMIN_TOKEN",
                                                                        "admin_token"))
    leaderboard_timeout_s: float = Field(default=30.0, gt=0, validation_alias=_env(
        "BENCH_LEADERBOARD_TIMEOUT_S", "leaderboard_timeout_s"))

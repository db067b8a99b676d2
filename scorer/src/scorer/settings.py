from pydantic_settings import SettingsConfigDict

from tipsml.settings import BaseServiceSettings


class ScorerSettings(BaseServiceSettings):
    """Scorer settings (env names are the field names in upper case):

    * ``REDIS_TIMEOUT_S`` (0.025): past it the reply is a flagged uniform fallback;
    * ``REDIS_BREAKER_FAILURES`` (3) consecutive failures open the breaker for
      ``REDIS_BREAKER_S`` (0.5 s): requests then fall back at once instead of waiting;
    * ``SHADOW_LEARN`` (true): shadow policies learn from the served arm's reward;
    * ``DECISION_QUEUE_MAX`` (20000): bound of the decision-log queue; above
      ``DECISION_QUEUE_HIGH_WATER`` (2000) replies wait (back-pressure) for the writer;
    * ``REDIS_READ_BATCH`` (32) / ``REDIS_READ_INFLIGHT`` (2): concurrent requests'
      state reads leave together, one pipeline per batch (~2 ms), at most 2 batches out;
    * ``SHUTDOWN_TIMEOUT_S`` (8): SIGTERM → answered, logged and closed within it."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    redis_timeout_s: float = 0.025
    redis_breaker_s: float = 0.5
    redis_breaker_failures: int = 3
    admin_redis_timeout_s: float = 1.0  # tips.stats / tips.reset: past it, 'unavailable'
    shadow_learn: bool = True
    decision_queue_max: int = 20000
    decision_queue_high_water: int = 2000  # above it, replies wait for the writer
    redis_read_batch: int = 32      # script calls per coalesced read pipeline
    redis_read_inflight: int = 2    # read pipelines out at once
    shutdown_timeout_s: float = 8.0

from pydantic_settings import SettingsConfigDict

from tipsml.settings import BaseServiceSettings


class ScorerSettings(BaseServiceSettings):
    """Scorer settings. Worker-only options use the ``SCORER_`` prefix, e.g.
    ``SCORER_REDIS_TIMEOUT_S`` (default 0.025: past it the reply is a uniform fallback)."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    redis_timeout_s: float = 0.025
    redis_breaker_s: float = 1.0
    shadow_learn: bool = True
    decision_queue_max: int = 20000

"""Generator settings: the shared ones (:mod:`tipsml.settings`) plus the LLM / prompt /
cache options.

Every variable is read as ``GENERATOR_<NAME>`` first, then by its former unprefixed name
(``LLM_MODEL`` still works; ``GENERATOR_LLM_MODEL`` wins when both are set); the
``GENERATOR_…`` options below already carry the prefix and keep their names.

* ``LLM_MODEL`` (``ollama_chat/qwen2.5:0.5b``): LiteLLM model string (``openai/<alias>``
  with ``LLM_API_BASE`` for an OpenAI-compatible server);
* ``LLM_API_BASE`` (unset): server URL (Ollama: ``http://localhost:11434``; embedded:
  ``http://127.0.0.1:<port>/v1``);
* ``LLM_API_KEY`` (unset): key for the server, when it wants one;
* ``LLM_KEEP_ALIVE`` (``10m``): Ollama ``keep_alive`` (how long the model stays loaded);
* ``LLM_TIMEOUT_S`` / ``LLM_RETRIES`` (``20`` / ``1``): default per-call deadline and
  extra attempts;
* ``DEFAULT_PROMPT_VERSION`` (``v1``): version used when a request names none;
* ``TIP_PROMPT_VERSION`` (empty): comma list: sticky-per-user rotation across versions
  (overrides the default); ``bandit:v1,v2-mentor,…``: a bandit picks the version of each
  tip from the rewards attributed to each version (``tipsml.versions``), its propensity
  logged with the exposure;
* ``PROMPT_BANDIT_EPSILON`` (``0.05``): bandit mode: uniform floor of the version choice
  (every propensity ≥ ε / #versions);
* ``PROMPT_BANDIT_PER_ARM`` (``true``): bandit mode: statistics per tip kind (false: one
  set over all kinds);
* ``PROMPT_EXPERIMENT`` (``prompt-rotation``): experiment name hashed with the user id for
  the rotation bucket;
* ``GENERATOR_DEADLINE_S`` (``1.5``): cache miss: LLM answer within this, else the
  fallback tip;
* ``GENERATOR_MAX_TOKENS`` (``48``): completion budget of one tip;
* ``GENERATOR_TEMPERATURE`` (``0.7``): sampling temperature;
* ``GENERATOR_CANDIDATES`` / ``GENERATOR_KEEP`` (``3`` / ``2``): a refresh generates this
  many candidates per (arm, version, model) and keeps at most the best ``KEEP`` that pass
  the guard;
* ``GENERATOR_MIN_SCORE`` (``6``): a candidate that passes the guard is kept only if the
  ranker scores it at least this (``tipsml.guard.Bound.score``);
* ``GENERATOR_MISS_ATTEMPTS`` (``2``): LLM answers a cache miss may try within its
  deadline (a second only with half the deadline left);
* ``GENERATOR_CACHE_ENABLED`` (``true``): serve pre-generated candidates;
* ``GENERATOR_CACHE_MAX`` / ``GENERATOR_CACHE_TTL_S`` (``4`` / ``21600``): candidates kept
  per (user, arm, version, model) and their TTL;
* ``GENERATOR_REFRESH_MIN_INTERVAL_S`` (``30``): at most one signal-driven refresh per
  user per interval (0: every signal);
* ``GENERATOR_REFRESH_TIMEOUT_S`` (``20``): deadline of one background generation;
* ``GENERATOR_REFILL_ON_MISS`` (``true``): top the list up in the background when a
  request empties it;
* ``GENERATOR_ALLOWED_MODELS`` (empty): models a request may name besides ``LLM_MODEL``;
* ``GENERATOR_SIGNAL_CONCURRENCY`` (``2``): signals processed at once;
* ``GENERATOR_BG_CONCURRENCY`` (``1``): background LLM calls at once;
* ``GENERATOR_FETCH_BATCH`` (``10``): signals fetched at most at once;
* ``GENERATOR_FETCH_TIMEOUT_S`` (``1.0``): an idle fetch returns after this;
* ``GENERATOR_BREAKER_FAILURES`` (``5``): signals to retry in a row that stop the
  fetching …;
* ``GENERATOR_BREAKER_S`` (``5.0``): … for this long (LLM or Redis down).
"""

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from tipsml.settings import BaseServiceSettings, CsvList, _split


class GeneratorSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENERATOR_")

    llm_model: str = "ollama_chat/qwen2.5:0.5b"
    llm_api_base: str | None = None
    llm_api_key: str | None = None
    llm_keep_alive: str | None = "10m"
    llm_timeout_s: float = 20.0
    llm_retries: int = 1
    default_prompt_version: str | None = None
    tip_prompt_version: CsvList = Field(default_factory=list)
    prompt_experiment: str = "prompt-rotation"
    prompt_bandit_epsilon: float = Field(default=0.05, ge=0.0, le=1.0)
    prompt_bandit_per_arm: bool = True
    generator_deadline_s: float = 1.5
    generator_max_tokens: int = 48
    generator_temperature: float = 0.7
    generator_max_tip_chars: int = 240
    generator_candidates: int = Field(default=3, ge=1, le=16)
    generator_keep: int = Field(default=2, ge=1, le=16)
    generator_miss_attempts: int = Field(default=2, ge=1, le=4)
    generator_min_score: float = 6.0
    generator_cache_enabled: bool = True
    generator_cache_max: int = 4
    generator_cache_ttl_s: int = 6 * 3600
    generator_refresh_min_interval_s: float = 30.0
    generator_refresh_timeout_s: float = 20.0
    generator_refill_on_miss: bool = True
    generator_redis_timeout_s: float = 0.05
    generator_allowed_models: CsvList = Field(default_factory=list)
    generator_signal_concurrency: int = 2
    generator_bg_concurrency: int = 1
    generator_fetch_batch: int = 10
    generator_fetch_timeout_s: float = 1.0
    generator_breaker_failures: int = Field(default=5, ge=1)
    generator_breaker_s: float = Field(default=5.0, ge=0)

    @field_validator("tip_prompt_version", "generator_allowed_models", mode="before")
    @classmethod
    def _csv2(cls, v):
        return _split(v)

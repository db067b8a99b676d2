"""Scorer settings: the shared ones (:mod:`tipsml.settings`) plus the scorer's own.

Every variable is read as ``SCORER_<NAME>`` first, then by its former unprefixed name
(``REDIS_TIMEOUT_S`` still works; ``SCORER_REDIS_TIMEOUT_S`` wins when both are set);
the shared ones too (``SCORER_METRICS_PORT`` over ``METRICS_PORT``).

* ``SCORER_REDIS_TIMEOUT_S`` (0.025): past it the reply is a flagged uniform fallback;
* ``SCORER_REDIS_BREAKER_FAILURES`` (3) failed reads in a row open the breaker for
  ``SCORER_REDIS_BREAKER_S`` (0.5 s): requests then fall back at once instead of waiting;
* ``SCORER_ADMIN_REDIS_TIMEOUT_S`` (1.0): ``tips.stats`` / ``tips.reset``: past it,
  ``unavailable``;
* ``SCORER_SHADOW_LEARN`` (true): shadow policies learn from the served arm's reward;
* ``SCORER_DECISION_QUEUE_MAX`` (20000): bound of the decision-log queue; above
  ``SCORER_DECISION_QUEUE_HIGH_WATER`` (2000) replies wait (back-pressure) for the writer;
* ``SCORER_DECISION_LOG_LINGER_S`` (0.01): a decision waits up to this long for others
  to share its write (one Redis pipeline, one flush of DECISIONS publishes); 0 writes
  each at once;
* ``SCORER_NATS_FAST_PATH`` (true): ``tips.score`` arrives on a connection of its own that
  speaks the NATS protocol by hand (:mod:`tipsml.messaging.fastsub`, about half nats-py's
  CPU per request); with TLS, or false, it stays on nats-py;
* ``SCORER_SYNC_SCORE`` (true): on that connection a request is served without a task —
  parsed, its read queued and sent as the read of NATS ends, its reply written from the
  Redis reply's callback and sent as that batch ends (two loop turns a decision instead
  of five or six); a request that needs an await (the writer behind, a pooled prior due
  for its refresh, a global model) takes the task path as before;
* ``SCORER_REDIS_READ_BATCH`` (32) / ``SCORER_REDIS_READ_INFLIGHT`` (2): concurrent
  requests' state reads leave together, one pipeline per batch, at most 2 batches out;
* ``SCORER_SHUTDOWN_TIMEOUT_S`` (8): SIGTERM → answered, logged and closed within it.
"""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tipsml.settings import BaseServiceSettings


class ScorerSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SCORER_")

    redis_timeout_s: float = 0.025
    redis_breaker_s: float = 0.5
    redis_breaker_failures: int = 3
    admin_redis_timeout_s: float = 1.0  # tips.stats / tips.reset: past it, 'unavailable'
    shadow_learn: bool = True
    decision_queue_max: int = 20000
    decision_queue_high_water: int = 2000  # above it, replies wait for the writer
    decision_log_linger_s: float = Field(0.01, ge=0.0, le=1.0)  # batch the log's writes
    nats_fast_path: bool = True  # tips.score on tipsml.messaging.fastsub (not with TLS)
    sync_score: bool = True  # on the fast path: tips.score without a task per request
    redis_read_batch: int = 32      # requests per coalesced read pipeline
    redis_read_inflight: int = 2    # read pipelines out at once

"""Feedback-consumer settings: the shared ones (:mod:`tipsml.settings`) plus its own.

Every variable is read as ``FEEDBACK_<NAME>`` first, then by its former unprefixed name
(``DEFAULT_REWARD`` still works; ``FEEDBACK_DEFAULT_REWARD`` wins when both are set); the
``FEEDBACK_…`` options already carry the prefix and keep their names.

* ``FEEDBACK_BATCH`` (256): messages fetched (and handled concurrently) at most at once;
* ``FEEDBACK_FETCH_TIMEOUT_S`` (0.25): an idle fetch returns after this;
* ``FEEDBACK_ACK_WAIT_S`` / ``FEEDBACK_MAX_DELIVER`` / ``FEEDBACK_BACKOFF_S`` /
  ``FEEDBACK_MAX_ACK_PENDING`` (``subjects.FEEDBACK_CONSUMER``): the durable's limits
  (``BACKOFF_S`` is also the nak schedule);
* ``FEEDBACK_MISSING_GRACE_S`` (10): an event for a decision not (yet) in Redis is retried
  this long before it counts as expired;
* ``FEEDBACK_DEFAULT_REWARD`` (0.0): applied once when a decision's window closes without a
  reaction; ``off``: none. ``FEEDBACK_DEFAULT_REWARD_SWEEP_S`` (1.0) /
  ``FEEDBACK_DEFAULT_REWARD_BATCH`` (256): the window sweep's period and batch;
* ``FEEDBACK_BREAKER_FAILURES`` (32) / ``FEEDBACK_BREAKER_S`` (1.0): that many messages in a
  row to retry (Redis down) stop the fetching for that long.
"""

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from tipsml import subjects as S
from tipsml.settings import BaseServiceSettings


class FeedbackSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDBACK_")

    feedback_batch: int = 256
    feedback_fetch_timeout_s: float = 0.25  # a partial batch is returned after this
    feedback_ack_wait_s: float = S.FEEDBACK_CONSUMER.ack_wait_s
    feedback_max_deliver: int = S.FEEDBACK_CONSUMER.max_deliver
    feedback_backoff_s: list[float] = list(S.FEEDBACK_CONSUMER.backoff_s)
    feedback_max_ack_pending: int = S.FEEDBACK_CONSUMER.max_ack_pending
    # an event for a decision not (yet) in Redis is retried this long before it counts
    # as expired: the scorer writes the decision record right after its reply
    feedback_missing_grace_s: float = 10.0
    # silence is a reaction too: applied once when a decision's REWARD_WINDOW_S closes
    # without a reaction ("off" or "none": no default reward, the due entries are
    # just removed). The default is the value of `ignored` in the reward table.
    default_reward: float | None = 0.0
    default_reward_sweep_s: float = 1.0
    default_reward_batch: int = 256
    # that many messages in a row to retry (Redis down) stop the fetching for that long,
    # instead of burning the deliveries of every waiting message
    feedback_breaker_failures: int = Field(default=32, ge=1)
    feedback_breaker_s: float = Field(default=1.0, ge=0)

    @field_validator("default_reward", mode="before")
    @classmethod
    def _off(cls, v):
        if isinstance(v, str) and v.strip().lower() in ("off", "none", "no", "false", ""):
            return None
        return v

    @field_validator("default_reward")
    @classmethod
    def _range(cls, v):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError("FEEDBACK_DEFAULT_REWARD (DEFAULT_REWARD) must be in [0, 1] "
                             "(or 'off')")
        return v

    def consumer_spec(self) -> S.ConsumerSpec:
        base = S.FEEDBACK_CONSUMER
        backoff = tuple(self.feedback_backoff_s)[: max(self.feedback_max_deliver - 1, 0)]
        return S.ConsumerSpec(base.stream, base.durable, base.filter_subject,
                              ack_wait_s=self.feedback_ack_wait_s,
                              max_deliver=self.feedback_max_deliver, backoff_s=backoff,
                              max_ack_pending=self.feedback_max_ack_pending)

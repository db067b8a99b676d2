"""Feedback → reward → bandit update, exactly once (logic of the feedback consumer).

Per message: validate → reward from the declared table → one Lua script (idempotency
claim on event_id + join to the decision + Sherman–Morrison update) → ack.

* invalid payload (poison): dead-lettered at once (``dlq.feedback``) and acked;
* Redis error (transient): nak with a delay that grows with the delivery count;
  after ``max_deliver`` deliveries: dead-lettered (with the reason) and acked;
* unknown decision: retried (nak with a delay, nothing claimed) while the event is
  younger than ``missing_grace_s`` — the scorer writes the decision record just after
  its reply, so a reaction sent at once can arrive first —, then claimed ``expired``.
  The grace is a time window, not a count of deliveries: the delays are spread so the
  ``max_deliver - 1``-th delivery comes after the grace (see :meth:`pending_delay`);
* expired decision, user mismatch, duplicate event, second reward for a decision:
  counted and acked, state untouched;
* decision scored with other hyper-parameters (ridge λ, feature version) than this
  consumer's for one of its learners: ``hyper_mismatch`` — logged as an error, counted,
  dead-lettered unclaimed (replayable once the settings agree), state untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from tipsml.contract import ContractError, Feedback, parse
from tipsml.messaging.pull import DEAD_LETTERED, RetryOrDeadLetter, delivered
from tipsml.rewards import reward_of
from tipsml.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    # applied | duplicate | expired | pending | mismatch | already_rewarded |
    # hyper_mismatch | invalid | retry | dead_lettered
    kind: str
    policy: str = ""
    arm: str = ""
    reaction: str = ""
    reward: float = 0.0
    prompt_version: str = ""


class FeedbackProcessor:
    """``handle(msg)`` settles one FEEDBACK message; ``settle`` is the consumer's
    :class:`tipsml.messaging.pull.RetryOrDeadLetter` (one backoff formula: the durable's
    ``backoff``; ``max_deliver``; ``dlq.feedback``)."""

    def __init__(self, store: StateStore, settle: RetryOrDeadLetter, *,
                 missing_grace_s: float = 10.0):
        self.store = store
        self.settle = settle
        self.missing_grace_s = missing_grace_s
        self.max_deliver = settle.retry.max_deliver

    async def handle(self, msg) -> Outcome:
        n = delivered(msg)
        try:
            fb = parse(Feedback, msg.data)
        except ContractError as e:
            out = await self.settle.dead_letter(msg, f"invalid_request: {e.message}")
            return Outcome("invalid" if out == DEAD_LETTERED else "retry")
        reward = reward_of(fb.reaction, fb.reward)
        claim_missing = (n >= self.max_deliver - 1 or self._age_s(msg) >= self.missing_grace_s)
        try:
            res = await self.store.apply_reward(fb.event_id, fb.decision_id, fb.user_id, reward,
                                                claim_missing=claim_missing)
        except Exception as e:  # noqa: BLE001 - Redis unavailable: retry later, never ack
            out = await self.settle(msg, f"unapplied after {n} deliveries: {e!r}")
            if out == DEAD_LETTERED:
                return Outcome("dead_lettered", reaction=fb.reaction or "")
            return Outcome("retry")
        if res.outcome == "pending":
            await self.settle.nak(msg, self.pending_delay(n, self._age_s(msg)))
            return Outcome("pending")
        if res.outcome == "hyper_mismatch":
            # scored with other hyper-parameters than this updater's: refuse, loudly; park it
            # in the DLQ (no claim was made) so a replay applies it once the config is fixed
            log.error("reward REFUSED (hyper_mismatch) event %s decision %s: %s",
                      fb.event_id, fb.decision_id, res.detail)
            out = await self.settle.dead_letter(msg, f"hyper_mismatch: {res.detail}")
            if out != DEAD_LETTERED:
                return Outcome("retry")
            return Outcome("hyper_mismatch", res.policy, res.arm, fb.reaction or "explicit",
                           reward, fb.prompt_version or res.prompt_version)
        await msg.ack()  # the reward is in Redis (the Lua script ran): now, and only now
        return Outcome(res.outcome, res.policy, res.arm, fb.reaction or "explicit", reward,
                       fb.prompt_version or res.prompt_version)

    def pending_delay(self, delivered: int, age_s: float) -> float:
        """Delay before the next look for a decision record not written yet.

        Quick first retries (the record usually lands within milliseconds), but never so
        quick that the deliveries left before the last claiming one (``max_deliver - 1``)
        run out before ``missing_grace_s`` has passed: the remaining grace is shared among
        them."""
        remaining = max(self.missing_grace_s - age_s, 0.0)
        left = max(self.max_deliver - 1 - delivered, 1)
        quick = min(0.05 * 2 ** (delivered - 1), 2.0)
        return round(max(quick, remaining / left) + 0.01, 3)

    @staticmethod
    def _age_s(msg) -> float:
        """Seconds since the event was stored in the stream."""
        ts = getattr(msg.metadata, "timestamp", None) if msg.metadata else None
        if ts is None:
            return float("inf")
        return time.time() - ts.timestamp()

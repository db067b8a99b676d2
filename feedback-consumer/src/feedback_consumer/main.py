"""Feedback consumer: durable pull consumer on FEEDBACK (``feedback.>``).

Replicas share the durable (JetStream hands each message to one of them); each
fetched batch is processed concurrently, every message acked only after its
Redis update (see :mod:`feedback_consumer.feedback`).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tipsml import metrics as M
from tipsml import subjects as S
from tipsml.messaging.breaker import CircuitBreaker
from tipsml.messaging.connection import prepare_jetstream
from tipsml.messaging.lifecycle import Worker, run_service
from tipsml.messaging.pull import PullConsumer, RetryOrDeadLetter, RetryPolicy
from tipsml.state import StateStore

from .feedback import FeedbackProcessor
from .handlers import Handlers
from .settings import FeedbackSettings
from .window import DefaultRewardSweeper

log = logging.getLogger("feedback-consumer")


class FeedbackMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.outcomes = Counter(
            "feedback_events_total",
            "feedback events by outcome: applied, duplicate, expired, pending (decision record "
            "not written yet: retried), mismatch, already_rewarded, invalid, retry, dead_lettered",
            ["outcome"], registry=r)
        self.applied = Counter("feedback_rewards_applied_total", "rewards applied",
                               ["policy", "arm"], registry=r)
        self.reward_sum = Counter("feedback_reward_sum_total", "sum of applied rewards",
                                  ["policy", "arm"], registry=r)
        self.reactions = Counter("feedback_reactions_total",
                                 "reactions per deciding policy and prompt version",
                                 ["policy", "reaction", "prompt_version"], registry=r)
        self.latency = Histogram("feedback_processing_latency_seconds",
                                 "time to process one feedback event",
                                 buckets=M.LATENCY_BUCKETS, registry=r)
        self.fetch_errors = Counter("feedback_fetch_errors_total", "failed fetches", registry=r)
        self.defaults = Counter(
            "feedback_default_rewards_total",
            "default rewards at window close by outcome: applied, already_rewarded (a "
            "reaction came first), expired (record gone), mismatch", ["outcome"], registry=r)
        self.due_backlog = Gauge("feedback_default_due_backlog",
                                 "decisions whose window closed and that wait for the sweep",
                                 registry=r)


async def serve(settings: FeedbackSettings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    async with Worker("feedback-consumer", settings, ready=ready, stop=stop) as w:
        m = FeedbackMetrics()
        port = w.metrics(m.registry)
        store = w.closing(StateStore.from_settings(settings))
        await w.connect()
        spec = settings.consumer_spec()
        await prepare_jetstream(w.js, settings, ["FEEDBACK", "DEADLETTER"], [spec],
                                provision_all_streams=True)
        settle = RetryOrDeadLetter(w.js, RetryPolicy.of(spec), S.DLQ_FEEDBACK)
        proc = FeedbackProcessor(store, settle, missing_grace_s=settings.feedback_missing_grace_s)
        sweeper = DefaultRewardSweeper(store, reward=settings.default_reward,
                                       every_s=settings.default_reward_sweep_s,
                                       batch=settings.default_reward_batch, metrics=m)
        w.task(sweeper.run, name="default-reward-sweeper", share=5.0)
        # replicas share the durable; a fetched batch is handled concurrently
        w.consume(PullConsumer(
            w.js, spec, Handlers(proc, m).feedback, settle=settle,
            concurrency=settings.feedback_batch, batch=settings.feedback_batch,
            fetch_timeout_s=settings.feedback_fetch_timeout_s,
            breaker=CircuitBreaker(settings.feedback_breaker_failures,
                                   settings.feedback_breaker_s),
            count=lambda outcome: (m.fetch_errors if outcome == "fetch_error"
                                   else m.outcomes.labels(outcome)).inc()))
        await w.run(metrics_port=port, durable=spec.durable,
                    default_reward=settings.default_reward)


def run() -> None:
    run_service(FeedbackSettings, serve)


if __name__ == "__main__":
    run()

"""Feedback consumer: durable pull consumer on FEEDBACK (``feedback.>``).

Replicas share the durable (JetStream hands each message to one of them); each
fetched batch is processed concurrently, every message acked only after its
Redis update (see :mod:`feedback_consumer.feedback`).
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tipsml import metrics as M
from feedback_consumer.feedback import FeedbackProcessor
from tipsml.natsutil import connect, prepare_jetstream
from tipsml.state import StateStore
from tipsml.worker import announce, run_service, stop_event

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
    m = FeedbackMetrics()
    port = M.serve(m.registry, settings.metrics_port, settings.metrics_addr)
    store = StateStore.from_url(settings.redis_url, reward_window_s=settings.reward_window_s,
                                lam=settings.ridge_lambda, pooled_lambda=settings.pooled_lambda,
                                record_grace_s=settings.reward_record_grace_s,
                                global_policies=settings.global_policies,
                                state_ttl_s=settings.state_ttl_s,
                                global_refresh_s=settings.global_refresh_s)
    nc = await connect(settings, "feedback-consumer")
    js = nc.jetstream()
    spec = settings.consumer_spec()
    await prepare_jetstream(js, settings, ["FEEDBACK", "DEADLETTER"], [spec],
                            provision_all_streams=True)
    sub = await js.pull_subscribe_bind(spec.durable, stream=spec.stream)
    proc = FeedbackProcessor(store, js, max_deliver=spec.max_deliver, backoff_s=spec.backoff_s,
                             missing_grace_s=settings.feedback_missing_grace_s)
    h = Handlers(proc, m)
    stop = stop or stop_event()
    sweeper = DefaultRewardSweeper(store, reward=settings.default_reward,
                                   every_s=settings.default_reward_sweep_s,
                                   batch=settings.default_reward_batch, metrics=m)
    sweeping = asyncio.create_task(sweeper.run(stop), name="default-reward-sweeper")
    announce("feedback-consumer", metrics_port=port, durable=spec.durable,
             default_reward=settings.default_reward)
    if ready:
        ready.set()

    async def _one(msg):
        try:
            await h.feedback(msg)
        except Exception:  # noqa: BLE001 - message stays unacked and is redelivered
            log.exception("feedback handling failed")

    while not stop.is_set():
        try:
            msgs = await sub.fetch(settings.feedback_batch, timeout=settings.feedback_fetch_timeout_s)
        except (nats.errors.TimeoutError, asyncio.TimeoutError, TimeoutError):
            continue  # idle: nothing to fetch
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.Error, asyncio.TimeoutError) as e:
            m.fetch_errors.inc()
            log.warning("fetch failed: %r", e)
            await asyncio.sleep(0.5)
            continue
        await asyncio.gather(*(_one(x) for x in msgs))
    try:
        await asyncio.wait_for(sweeping, 5.0)
    except Exception:  # noqa: BLE001 - a sweep cut short is redone by the next consumer
        sweeping.cancel()
    # every fetched message has been acked or nak'ed by now; a pull subscription
    # cannot be drained (the drain would wait out its timeout), so flush and close
    await nc.flush(timeout=5)
    await nc.close()
    await store.close()


def run() -> None:
    run_service(FeedbackSettings, serve)


if __name__ == "__main__":
    run()

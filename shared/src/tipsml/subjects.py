"""Subjects, streams and durable-consumer configs: defined once, here.

Every stream and durable is created idempotently by :mod:`tipsml.provision` (production:
the admin user, before the workers start) or by the workers themselves at start-up in dev
(:func:`tipsml.messaging.connection.prepare_jetstream`); every durable states ack_wait /
max_deliver / backoff / max_ack_pending, and ``ensure_consumer`` updates an existing
durable whose config drifted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# request-reply
TIPS_SCORE = "tips.score"
TIPS_STATS = "tips.stats"
TIPS_RESET = "tips.reset"
TIPS_GENERATE = "tips.generate"
BENCH_LEADERBOARD = "bench.leaderboard"
BENCH_EXPERIMENTS = "bench.experiments"
BENCH_RUNS = "bench.runs"

# JetStream subjects
SIGNALS = "signals.>"
FEEDBACK = "feedback.>"
DECISIONS = "decisions.>"
BENCH_RUN = "bench.run"
BENCH_STATUS = "bench.status"  # bench.status.<job_id>
DLQ_PREFIX = "dlq"  # dlq.<stream>.<reason>
DLQ_FEEDBACK = "dlq.feedback"
DLQ_SIGNALS = "dlq.signals"
DLQ_BENCH = "dlq.bench"


def decisions_subject(policy: str) -> str:
    return f"decisions.{policy}"


# queue groups (replicas of a worker share load)
Q_SCORER = "scorer"
Q_GENERATOR = "generator"
Q_BENCH = "bench-worker"

DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class EndpointSpec:
    """One request-reply endpoint: registered with the NATS Services API by its worker
    (tipsml.messaging.service) and documented in docs/asyncapi.yaml (tipsdev.asyncapi). ``request``
    and ``reply`` name models in tipsml.contract (or bench_worker.job)."""

    service: str
    name: str
    subject: str
    queue_group: str
    request: str
    reply: str
    summary: str
    admin: bool = False
    timeout_s: float = 2.0  # what a client should wait (tipsml.client's default)

    def metadata(self) -> dict[str, str]:
        return {"request": self.request, "reply": self.reply,
                "admin": "true" if self.admin else "false"}


SCORER_ENDPOINTS = (
    EndpointSpec("tips-scorer", "score", TIPS_SCORE, Q_SCORER, "ScoreRequest", "ScoreReply",
                 "pick a tip kind (arm) for a user now, with its propensity", timeout_s=0.5),
    EndpointSpec("tips-scorer", "stats", TIPS_STATS, Q_SCORER, "StatsRequest", "StatsReply",
                 "per-arm pulls, updates, reward sum and mean of a user's bandit state"),
    EndpointSpec("tips-scorer", "reset", TIPS_RESET, Q_SCORER, "ResetRequest", "ResetReply",
                 "clear a user's bandit state", admin=True),
)
GENERATOR_ENDPOINTS = (
    EndpointSpec("tips-generator", "generate", TIPS_GENERATE, Q_GENERATOR, "GenerateRequest",
                 "GenerateReply", "write the tip text for a user and a tip kind",
                 timeout_s=3.0),
)
BENCH_ENDPOINTS = (
    EndpointSpec("tips-bench", "leaderboard", BENCH_LEADERBOARD, Q_BENCH, "LeaderboardRequest",
                 "LeaderboardReply", "rows by (model, prompt) with bootstrap 95% CIs",
                 admin=True, timeout_s=60.0),
    EndpointSpec("tips-bench", "experiments", BENCH_EXPERIMENTS, Q_BENCH, "ExperimentsRequest",
                 "ExperimentsReply", "list bench experiments", admin=True, timeout_s=30.0),
    EndpointSpec("tips-bench", "runs", BENCH_RUNS, Q_BENCH, "RunsRequest", "RunsReply",
                 "list the runs of an experiment (optionally of one job)", admin=True,
                 timeout_s=30.0),
)
ENDPOINTS = SCORER_ENDPOINTS + GENERATOR_ENDPOINTS + BENCH_ENDPOINTS


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: int
    duplicate_window_s: int = 120
    max_bytes: int = -1
    retention: str = "limits"  # limits | workqueue | interest
    storage: str = "file"
    compression: str = "none"  # none | s2 (file storage: compressed message blocks on disk)


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float
    max_deliver: int
    backoff_s: tuple[float, ...] = field(default_factory=tuple)
    max_ack_pending: int = 1000


STREAMS: dict[str, StreamSpec] = {
    s.name: s
    for s in (
        StreamSpec("SIGNALS", ("signals.>",), max_age_s=7 * 86400, duplicate_window_s=300),
        # no max_bytes: JetStream reserves it against the disk up front (a dev machine or a
        # test stack would be refused); retention is by age, sized in deploy/README.md
        StreamSpec("FEEDBACK", ("feedback.>",), max_age_s=14 * 86400, duplicate_window_s=600),
        # the biggest stream (one JSON message per decision): S2-compressed on disk
        # (bench/results/compact_state.md measures the bytes per decision)
        StreamSpec("DECISIONS", ("decisions.>",), max_age_s=30 * 86400, duplicate_window_s=120,
                   compression="s2"),
        StreamSpec("BENCH", ("bench.run", "bench.cell.>"), max_age_s=7 * 86400,
                   duplicate_window_s=3600, retention="workqueue"),
        StreamSpec("BENCH_STATUS", ("bench.status.>",), max_age_s=7 * 86400),
        StreamSpec("DEADLETTER", ("dlq.>",), max_age_s=30 * 86400),
    )
}

FEEDBACK_CONSUMER = ConsumerSpec(
    stream="FEEDBACK",
    durable="feedback-consumer",
    filter_subject="feedback.>",
    ack_wait_s=30.0,
    max_deliver=8,
    backoff_s=(1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 60.0),
    max_ack_pending=2000,
)

SIGNALS_CONSUMER = ConsumerSpec(
    stream="SIGNALS",
    durable="generator-signals",
    filter_subject="signals.>",
    ack_wait_s=60.0,
    max_deliver=5,
    backoff_s=(2.0, 10.0, 30.0, 60.0),
    max_ack_pending=200,
)


# ---- bench (appended by the bench-worker; see bench_worker) ----
BENCH_CELL_PREFIX = "bench.cell"  # bench.cell.<job_id>.<n>
DLQ_BENCH_JOB = "dlq.bench.job"  # refused / invalid jobs
DLQ_BENCH_CELL = "dlq.bench.cell"  # cells that exhausted their deliveries


def bench_status_subject(job_id: str) -> str:
    return f"{BENCH_STATUS}.{job_id}"


def bench_cell_subject(job_id: str, n: int) -> str:
    return f"{BENCH_CELL_PREFIX}.{job_id}.{n}"


# Jobs are quick (validate, split, publish cells). Cells are long (generate + judge +
# MLflow): the worker sends in_progress heartbeats every ack_wait/3, so ack_wait only
# bounds how long a killed worker's cell waits before another worker takes it.
BENCH_JOBS_CONSUMER = ConsumerSpec(
    stream="BENCH",
    durable="bench-jobs",
    filter_subject=BENCH_RUN,
    ack_wait_s=30.0,
    max_deliver=5,
    backoff_s=(),  # transient failures nak with a delay (see bench-worker handlers)
    max_ack_pending=16,
)

BENCH_CELLS_CONSUMER = ConsumerSpec(
    stream="BENCH",
    durable="bench-cells",
    filter_subject=f"{BENCH_CELL_PREFIX}.>",
    ack_wait_s=60.0,
    max_deliver=5,
    backoff_s=(),  # redeliveries after a crash wait ack_wait; failures nak with a delay
    max_ack_pending=64,
)


# every durable, in the order the provisioning step (tipsml.provision) creates them
CONSUMERS: tuple[ConsumerSpec, ...] = (SIGNALS_CONSUMER, FEEDBACK_CONSUMER, BENCH_JOBS_CONSUMER,
                                       BENCH_CELLS_CONSUMER)

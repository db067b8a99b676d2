"""The wire contract (DESIGN.md): request/reply models, error codes, limits.

Field names are fixed by the contract; fields may be added, never renamed.
Every reply carries ``ok``; failures are ``{"ok": false, "error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# ---- limits (declared once, enforced by the models below and by the workers) ----
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID_LEN = 128
MAX_ARMS = 32
MAX_ARM_LEN = 64
MAX_TASKS = 100
MAX_TITLE_LEN = 500
MAX_PROFILE_FEATURES = 64


class ErrorCode(str, Enum):
    invalid_request = "invalid_request"
    unknown_policy = "unknown_policy"
    unknown_prompt_version = "unknown_prompt_version"
    not_found = "not_found"
    forbidden = "forbidden"
    unavailable = "unavailable"
    timeout = "timeout"
    internal = "internal"


class ContractError(Exception):
    """Raised by handlers; turned into a typed error reply by the worker."""

    def __init__(self, code: ErrorCode | str, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message


def error_reply(code: ErrorCode | str, message: str) -> dict:
    return {"ok": False, "error": {"code": ErrorCode(code).value, "message": message[:1000]}}


def error_bytes(code: ErrorCode | str, message: str) -> bytes:
    return json.dumps(error_reply(code, message)).encode()


def describe_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, str_max_length=10_000)


Id = Field(min_length=1, max_length=MAX_ID_LEN)


MIN_PRIORITY, MAX_PRIORITY = 0, 4


class Task(_Model):
    id: str | int | None = None
    title: str = Field(default="", max_length=MAX_TITLE_LEN)
    due: str | None = Field(default=None, max_length=64)
    priority: int | None = Field(
        default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY,
        description=f"task priority, an integer {MIN_PRIORITY}..{MAX_PRIORITY} (higher is more "
                    f"urgent); anything else, e.g. 5, is refused with invalid_request")
    overdue: bool | None = None


class Context(_Model):
    hour_of_day: int | None = Field(default=None, ge=0, le=23)
    day_of_week: int | None = Field(default=None, ge=0, le=6)
    tasks: list[Task] | None = Field(default=None, max_length=MAX_TASKS)


ProfileValue = float | int | bool | str | None
MAX_PROFILE_STR_LEN = 256


def _profile_value_problem(x: Any) -> str | None:
    """Why a profile value cannot be used (None when it can): the value then goes to the
    feature's declared fallback (tipsml.features), never to an error reply."""
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, int):
        try:
            float(x)
        except OverflowError:
            return "out_of_range"
        return None
    if isinstance(x, float):
        return None if math.isfinite(x) else "non_finite"
    if isinstance(x, str):
        return None if len(x) <= MAX_PROFILE_STR_LEN else "too_long"
    return "wrong_type"  # a list, an object


class _Profile(dict):
    """A request's ``profile_features`` in which unusable values were replaced by null;
    ``fallbacks`` says which and why (feature → reason). A plain dict otherwise (equal to
    one, serialised as one)."""

    __slots__ = ("fallbacks",)

    def __reduce__(self):  # copies and pickles keep the reasons
        return (_restore_profile, (dict(self), self.fallbacks))


def _restore_profile(values: dict, fallbacks: dict[str, str]) -> _Profile:
    p = _Profile(values)
    p.fallbacks = fallbacks
    return p


def _check_profile(v: dict | None) -> dict | None:
    """Structural limits (how many features, how long a name) are errors; a bad *value*
    is not, see :class:`_ProfileCarrier`: it is replaced by null here and its reason kept
    on the dict (:class:`_Profile`) — no model validator and no private attribute, which
    cost pydantic a Python-level pass per request (issue 12)."""
    if v is None:
        return None
    if len(v) > MAX_PROFILE_FEATURES:
        raise ValueError(f"at most {MAX_PROFILE_FEATURES} profile features")
    why: dict[str, str] | None = None
    for k, x in v.items():
        if len(k) > 64:
            raise ValueError("profile feature names are at most 64 characters")
        t = type(x)
        # the usual values, without a call: a finite float, an int within float range
        if (t is float and x - x == 0.0) or (t is int and -1e308 < x < 1e308):
            continue
        problem = _profile_value_problem(x)
        if problem:
            if why is None:
                why = {}
            why[k] = problem
    if why is None:
        return v
    out = _Profile(v)
    for k in why:
        out[k] = None
    out.fallbacks = why
    return out


class _ProfileCarrier(_Model):
    """Requests with ``profile_features``. The contract: a missing, null, ill-typed or
    out-of-range profile value uses the feature's fallback, never an error. Values no
    feature could use (a list, an object, a non-finite or beyond-float number such as
    1e400, a string over 256 characters) are replaced by null here — so they fall back —
    and listed in ``profile_fallbacks`` (feature → reason) for the workers' metrics."""

    profile_features: dict[str, Any] | None = None

    _pf = field_validator("profile_features")(lambda cls, v: _check_profile(v))

    @property
    def profile_fallbacks(self) -> dict[str, str]:
        pf = self.profile_features
        return pf.fallbacks if type(pf) is _Profile else {}


def _check_arms(v: list[str] | None) -> list[str] | None:
    if v is None:
        return None
    if not v:
        raise ValueError("arms must not be empty")
    if len(set(v)) != len(v):
        raise ValueError("arms must be distinct")
    for a in v:
        if not a or len(a) > MAX_ARM_LEN:
            raise ValueError(f"arm names are 1..{MAX_ARM_LEN} characters")
    return v


class ScoreRequest(_ProfileCarrier):
    user_id: str = Id
    policy: str | None = Field(default=None, max_length=64)
    arms: list[str] | None = Field(default=None, max_length=MAX_ARMS)
    context: Context | None = None
    request_id: str | None = Field(default=None, max_length=MAX_ID_LEN)

    _arms = field_validator("arms")(lambda cls, v: _check_arms(v))


class ShadowDecision(BaseModel):
    policy: str
    arm: str
    propensity: float


class ScoreReply(BaseModel):
    ok: Literal[True] = True
    decision_id: str
    policy: str
    policy_version: str
    arm: str
    propensity: float
    explored: bool
    scores: dict[str, float]
    feature_version: str
    shadow: list[ShadowDecision] = Field(default_factory=list)
    fallback: bool = False
    request_id: str | None = None


class _Reply(BaseModel):
    """Replies keep fields this version does not know (the contract adds fields freely)."""

    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str


class ErrorReply(_Reply):
    """Every failed request: ``{"ok": false, "error": {"code", "message"}}``."""

    ok: Literal[False] = False
    error: ErrorBody


class ArmStats(_Reply):
    pulls: int = 0
    updates: int = 0
    reward_sum: float = 0.0
    reward_mean: float | None = None


class PolicyStats(_Reply):
    global_model: bool = False
    version: str | None = None
    arms: dict[str, ArmStats] = Field(default_factory=dict)


class StatsReply(_Reply):
    ok: Literal[True] = True
    user_id: str
    policy: str
    arms: dict[str, ArmStats] = Field(default_factory=dict)
    policies: dict[str, PolicyStats] = Field(default_factory=dict)


class ResetReply(_Reply):
    ok: Literal[True] = True
    user_id: str
    reset_policies: list[str] = Field(default_factory=list)
    skipped_global: list[str] = Field(default_factory=list)
    keys_deleted: int = 0


class GenerateReply(_Reply):
    ok: Literal[True] = True
    tip: str
    prompt_version: str
    prompt_hash: str | None = None
    model: str
    source: Literal["cache", "llm", "fallback"]
    latency_ms: float
    arm: str | None = None
    overlong: bool = False
    fallback_reason: str | None = None
    request_id: str | None = None
    decision_id: str | None = None
    # TIP_PROMPT_VERSION=bandit:…: how the version was chosen and with which probability
    # (for off-policy evaluation of the version decision); absent otherwise
    prompt_choice: Literal["request", "rotation", "default", "bandit"] | None = None
    prompt_propensity: float | None = None


class LeaderboardRequest(_Model):
    experiment: str = Field(min_length=1, max_length=100)
    job_id: str | None = Field(default=None, max_length=MAX_ID_LEN)
    judge: Literal["auto", "llm", "human"] = "auto"
    chart: bool = False
    agreement: bool = False


class LeaderboardReply(_Reply):
    ok: Literal[True] = True
    experiment: str
    job_id: str | None = None
    rubric: str | None = None
    judge: str | None = None
    rows: list[dict[str, Any]] = Field(default_factory=list)
    comparison: dict[str, Any] | None = None
    n_runs: int = 0


class ExperimentsRequest(_Model):
    limit: int = Field(default=100, ge=1, le=1000)


class ExperimentSummary(_Reply):
    name: str
    experiment_id: str
    n_runs: int
    n_jobs: int
    created_ms: int | None = None
    last_update_ms: int | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class ExperimentsReply(_Reply):
    ok: Literal[True] = True
    experiments: list[ExperimentSummary] = Field(default_factory=list)


class RunsRequest(_Model):
    experiment: str = Field(min_length=1, max_length=100)
    job_id: str | None = Field(default=None, max_length=MAX_ID_LEN)
    kind: Literal["cell", "leaderboard", "agreement", "all"] = "cell"
    limit: int = Field(default=200, ge=1, le=5000)


class RunSummary(_Reply):
    run_id: str
    run_name: str | None = None
    status: str
    kind: str | None = None
    job_id: str | None = None
    model: str | None = None
    prompt: str | None = None
    scenario: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class RunsReply(_Reply):
    ok: Literal[True] = True
    experiment: str
    runs: list[RunSummary] = Field(default_factory=list)
    truncated: bool = False


class StatsRequest(_Model):
    user_id: str = Id
    policy: str | None = Field(default=None, max_length=64)


class ResetRequest(StatsRequest):
    pass


class GenerateRequest(_ProfileCarrier):
    user_id: str = Id
    arm: str | None = Field(default=None, max_length=MAX_ARM_LEN)
    context: Context | None = None
    prompt_version: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, max_length=MAX_ID_LEN)
    decision_id: str | None = Field(default=None, max_length=MAX_ID_LEN)


class Signal(_Model):
    user_id: str = Id
    kind: str = Field(default="", max_length=64)
    ts: float | str | None = None
    payload: dict[str, Any] | None = None


class Feedback(_Model):
    event_id: str = Id
    decision_id: str = Id
    user_id: str = Id
    reaction: Literal["completed", "accepted", "dismissed", "ignored"] | None = None
    dwell_ms: float | None = Field(default=None, ge=0, le=7 * 86400 * 1000)
    reward: float | None = Field(default=None, ge=0.0, le=1.0)
    ts: float | str | None = None
    prompt_version: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _reaction_or_reward(self):
        if self.reaction is None and self.reward is None:
            raise ValueError("feedback needs a reaction or an explicit reward")
        return self


class DecisionLogEntry(_Reply):
    """One entry of the ``DECISIONS`` stream (``decisions.<policy>``), served and shadow
    decisions alike; header ``Nats-Msg-Id: <decision_id>:<policy>``."""

    decision_id: str
    user_id: str
    policy: str
    policy_version: str
    served: bool
    live_policy: str
    arm: str
    propensity: float
    explored: bool
    arms: list[str]
    scores: dict[str, float]
    features: list[float]
    feature_version: str
    hour_of_day: int
    day_of_week: int
    served_arm: str
    ts: float
    request_id: str | None = None
    fallback: bool = False


class BenchStatusEvent(_Reply):
    """Progress of a bench job on ``bench.status.<job_id>`` (stream ``BENCH_STATUS``)."""

    job_id: str
    event: Literal["accepted", "cell_started", "cell_done", "cell_failed", "error", "done"]
    ts: float
    worker: str
    experiment: str | None = None
    done: int | None = None
    failed: int | None = None
    total: int | None = None
    eta_s: float | None = None
    error: ErrorBody | None = None
    retrying: bool | None = None
    leaderboard: dict[str, Any] | None = None


def parse(model: type[BaseModel], data: bytes):
    """Validate a raw NATS payload into ``model`` or raise ContractError(invalid_request)."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ContractError(ErrorCode.invalid_request,
                            f"payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    if not data:
        raise ContractError(ErrorCode.invalid_request, "empty payload; expected a JSON object")
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        raise ContractError(ErrorCode.invalid_request, describe_validation_error(e)) from None
    except ValueError as e:  # model_post_init and friends
        raise ContractError(ErrorCode.invalid_request, str(e)[:300]) from None


def loads_object(data: bytes) -> dict:
    """A raw payload as a JSON object, within the declared limits, or ContractError."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ContractError(ErrorCode.invalid_request,
                            f"payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        obj = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        raise ContractError(ErrorCode.invalid_request, "payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ContractError(ErrorCode.invalid_request, "payload must be a JSON object")
    return obj

"""The wire contract (DESIGN.md): request/reply models, error codes, limits.

Field names are fixed by the contract; fields may be added, never renamed.
Every reply carries ``ok``; failures are ``{"ok": false, "error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class Task(_Model):
    id: str | int | None = None
    title: str = Field(default="", max_length=MAX_TITLE_LEN)
    due: str | None = Field(default=None, max_length=64)
    priority: int | None = Field(default=None, ge=0, le=4)
    overdue: bool | None = None


class Context(_Model):
    hour_of_day: int | None = Field(default=None, ge=0, le=23)
    day_of_week: int | None = Field(default=None, ge=0, le=6)
    tasks: list[Task] | None = Field(default=None, max_length=MAX_TASKS)


ProfileValue = float | int | bool | str | None


def _check_profile(v: dict | None) -> dict | None:
    if v is None:
        return None
    if len(v) > MAX_PROFILE_FEATURES:
        raise ValueError(f"at most {MAX_PROFILE_FEATURES} profile features")
    for k, x in v.items():
        if len(k) > 64:
            raise ValueError("profile feature names are at most 64 characters")
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"profile feature {k!r} must be finite")
        if isinstance(x, str) and len(x) > 256:
            raise ValueError(f"profile feature {k!r} is too long")
    return v


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


class ScoreRequest(_Model):
    user_id: str = Id
    policy: str | None = Field(default=None, max_length=64)
    arms: list[str] | None = Field(default=None, max_length=MAX_ARMS)
    context: Context | None = None
    profile_features: dict[str, ProfileValue] | None = None
    request_id: str | None = Field(default=None, max_length=MAX_ID_LEN)

    _pf = field_validator("profile_features")(lambda cls, v: _check_profile(v))
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


class StatsRequest(_Model):
    user_id: str = Id
    policy: str | None = Field(default=None, max_length=64)


class ResetRequest(StatsRequest):
    pass


class GenerateRequest(_Model):
    user_id: str = Id
    arm: str | None = Field(default=None, max_length=MAX_ARM_LEN)
    context: Context | None = None
    profile_features: dict[str, ProfileValue] | None = None
    prompt_version: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, max_length=MAX_ID_LEN)
    decision_id: str | None = Field(default=None, max_length=MAX_ID_LEN)

    _pf = field_validator("profile_features")(lambda cls, v: _check_profile(v))


class Signal(_Model):
    user_id: str = Id
    kind: str = Field(default="", max_length=64)
    ts: float | str | None = None
    payload: dict[str, Any] | None = None


REACTIONS = ("completed", "accepted", "dismissed", "ignored")


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

"""LLM client over LiteLLM, fallback tips and output post-processing.

Model strings are LiteLLM's: ``ollama_chat/<model>`` against an Ollama server
(``api_base`` default ``http://localhost:11434``; ``keep_alive`` is passed through), or
``openai/<alias>`` + ``api_base`` for any OpenAI-compatible server (the embedded
llama-cpp server of :mod:`tipsdev.llmserver`: ``LLM_MODEL=openai/smollm2-135m``,
``LLM_API_BASE=http://127.0.0.1:<port>/v1``).

:meth:`LLMClient.complete` has one overall deadline (``timeout``) across a bounded
number of attempts; only transient failures (connection, timeout, 429/5xx) are retried.
A small circuit breaker answers at once with :class:`LLMError` while the server is known
to be down, so callers fall back without waiting. LiteLLM's own retries are disabled so
the bound here is the only one.

Nothing here touches NATS or Redis: the generator, the bench and the judge share it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from . import fallbacks as _FB
from .messaging.breaker import CircuitBreaker

# never fetch the model price map from the internet at import time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_litellm = None


def litellm_module():
    """Import LiteLLM once (it takes ~2 s; workers call this at start-up)."""
    global _litellm
    if _litellm is None:
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.drop_params = True  # a param a provider lacks is dropped, not an error
        _litellm = litellm
    return _litellm


class LLMError(Exception):
    """``kind``: timeout | unavailable | bad_request | bad_response | circuit_open."""

    def __init__(self, kind: str, message: str, attempts: int = 0):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.attempts = attempts


@dataclass
class LLMResult:
    text: str
    model: str
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    attempts: int = 1

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / (self.latency_ms / 1000.0) if self.latency_ms > 0 else 0.0


def _classify(e: BaseException) -> tuple[str, bool]:
    """(kind, retryable) for an exception raised by LiteLLM / httpx / the event loop."""
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "timeout", True
    name = type(e).__name__
    status = getattr(e, "status_code", None)
    if "Timeout" in name:
        return "timeout", True
    if name in ("APIConnectionError", "ServiceUnavailableError", "InternalServerError",
                "RateLimitError", "ConnectError", "ConnectionError", "BadGatewayError"):
        return "unavailable", True
    if isinstance(status, int):
        if status == 429 or status >= 500:
            return "unavailable", True
        return "bad_request", False
    if name in ("BadRequestError", "NotFoundError", "AuthenticationError",
                "PermissionDeniedError", "UnprocessableEntityError", "ContextWindowExceededError"):
        return "bad_request", False
    if isinstance(e, OSError):
        return "unavailable", True
    return "unavailable", True


@dataclass
class LLMClient:
    """One configured model endpoint; per call ``model`` may name another."""

    model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout: float = 10.0
    retries: int = 1           # extra attempts after the first, within the deadline
    retry_backoff_s: float = 0.2
    keep_alive: str | int | None = None  # Ollama only, e.g. "10m"; 0 unloads after the call
    breaker_failures: int = 3  # consecutive "unavailable" failures that open the breaker
    breaker_s: float = 5.0     # how long it stays open
    breaker: CircuitBreaker = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.breaker = CircuitBreaker(self.breaker_failures, self.breaker_s)

    @classmethod
    def from_settings(cls, s, **kw) -> LLMClient:
        args = {"model": s.llm_model, "api_base": getattr(s, "llm_api_base", None),
                "api_key": getattr(s, "llm_api_key", None),
                "timeout": getattr(s, "llm_timeout_s", 10.0),
                "retries": getattr(s, "llm_retries", 1),
                "keep_alive": getattr(s, "llm_keep_alive", None)}
        args.update(kw)
        return cls(**args)

    @property
    def circuit_open(self) -> bool:
        return self.breaker.is_open

    def _kwargs(self, model: str, keep_alive, api_base: str | None = None) -> dict:
        kw: dict[str, Any] = {"num_retries": 0, "max_retries": 0}
        base = api_base or (self.api_base if _provider(model) == _provider(self.model) else None)
        if base:
            kw["api_base"] = base
        if _provider(model) == "openai":
            kw["api_key"] = self.api_key or os.environ.get("OPENAI_API_KEY") or "sk-local"
        elif self.api_key:
            kw["api_key"] = self.api_key
        if _provider(model).startswith("ollama"):
            ka = self.keep_alive if keep_alive is None else keep_alive
            if ka is not None:
                kw["keep_alive"] = ka
        return kw

    async def complete(self, messages: list[dict], *, model: str | None = None,
                       temperature: float = 0.7, max_tokens: int = 96,
                       timeout: float | None = None, keep_alive: str | int | None = None,
                       response_format: dict | None = None, seed: int | None = None,
                       stop: list[str] | None = None, top_p: float | None = None,
                       api_base: str | None = None) -> LLMResult:
        """One chat completion within ``timeout`` seconds overall (retries included).

        ``response_format={"type": "json_object"}`` asks for JSON mode (OpenAI-compatible
        servers and Ollama support it); see :meth:`complete_json`. ``api_base`` overrides
        the client's endpoint for this call (the client's own is used for models of the
        same provider as the configured one).
        Raises :class:`LLMError` (never a provider exception).
        """
        model = model or self.model
        if self.circuit_open:
            raise LLMError("circuit_open", f"{model}: breaker open after repeated failures")
        litellm = litellm_module()
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        kw = self._kwargs(model, keep_alive, api_base)
        kw.update(temperature=temperature, max_tokens=max_tokens)
        if response_format is not None:
            kw["response_format"] = response_format
        if seed is not None:
            kw["seed"] = seed
        if stop:
            kw["stop"] = stop
        if top_p is not None:
            kw["top_p"] = top_p
        attempt = 0
        last: LLMError | None = None
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0.01:
                break
            t0 = time.perf_counter()
            try:
                resp = await asyncio.wait_for(
                    litellm.acompletion(model=model, messages=messages, timeout=left, **kw),
                    timeout=left)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - classified below
                kind, retry = _classify(e)
                last = LLMError(kind, f"{model}: {type(e).__name__}: {str(e)[:200]}", attempt)
                # the provider's error can sit in a reference cycle of the provider's own
                # (an HTTP client's exceptions often do): its traceback must not keep this
                # frame, and the request's objects with it, until the collector runs
                e.__traceback__ = None
                if kind == "unavailable":  # refused / 5xx: down. A timeout may be a
                    self.breaker.failure()  # short deadline on a busy server, not an outage
                if not retry or attempt > self.retries or self.circuit_open:
                    break
                await asyncio.sleep(min(self.retry_backoff_s * attempt,
                                        max(0.0, deadline - time.monotonic())))
                continue
            latency_ms = (time.perf_counter() - t0) * 1000.0
            self.breaker.success()
            try:
                choice = resp.choices[0]
                text = choice.message.content or ""
                usage = getattr(resp, "usage", None)
                return LLMResult(
                    text=text, model=model, latency_ms=latency_ms,
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                    finish_reason=getattr(choice, "finish_reason", None), attempts=attempt)
            except (AttributeError, IndexError, TypeError, ValueError) as e:
                raise LLMError("bad_response", f"{model}: {e}", attempt) from None
        if last is None:
            last = LLMError("timeout", f"{model}: no time left for an attempt", attempt - 1)
        try:
            raise last
        finally:
            # the frame must not keep the error it raises: its traceback holds this frame,
            # a reference cycle that kept the request's objects (and the frames of its
            # callers) alive until the garbage collector's next sweep (issue 12)
            del last

    async def complete_json(self, messages: list[dict], **kw) -> tuple[dict, LLMResult]:
        """JSON mode plus a tolerant parse (first ``{...}`` object in the text)."""
        kw.setdefault("response_format", {"type": "json_object"})
        res = await self.complete(messages, **kw)
        obj = extract_json(res.text)
        if obj is None:
            raise LLMError("bad_response", f"{res.model}: no JSON object in the reply",
                           res.attempts)
        return obj, res


def _provider(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else ""


def extract_json(text: str) -> dict | None:
    text = (text or "").strip()
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except ValueError:
        pass
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start:i + 1])
                        if isinstance(obj, dict):
                            return obj
                    except ValueError:
                        break
                    break
        start = text.find("{", start + 1)
    return None


# ---------------------------------------------------------------- post-processing

MAX_TIP_CHARS = 240
MIN_TIP_CHARS = 12
STOP_SEQUENCES = ["\n\n", "<tasks>", "</tasks>"]  # a tip is one paragraph

_PREAMBLE = re.compile(
    r"^(?:(?:sure|okay|ok|certainly|absolutely|of course)[!,.]?\s*)?"
    r"(?:here(?:'s| is)\s+(?:a|an|one|your)\s+[^:\n]{0,40}:\s*|"
    r"(?:(?:one|a|your|productivity)\s+)?tip(?:\s*\d+)?\s*[:\-–—]\s*)",
    re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.)])\s+")
_MARKUP = re.compile(r"(\*\*|__|`|#+\s)")
_SENT_END = re.compile(r"(?<=[.!?])\s+")
_BAD_MARKERS = ("<tasks>", "</tasks>", "<|im_start|>", "<|im_end|>", "<|endoftext|>")
# lines in which a small model echoes the prompt's context block instead of writing a tip
_ECHO = re.compile(r"^(?:tip kind\b|time:|open tasks:|user habits:|recent activity:|"
                   r"write (?:the|a|one) tip|[a-z]+_[a-z_]+\s*[—:-]|</?tasks>|-\s*\")",
                   re.IGNORECASE)
# a tip that repeats an injected instruction or talks about the model is not a tip
_UNSAFE = re.compile(r"ignore (?:all |any )?(?:the )?(?:previous|prior|above|earlier) "
                     r"instructions|system prompt|\bas an ai\b|\byou(?:'re| are) an ai\b",
                     re.IGNORECASE)


@dataclass(frozen=True)
class Tip:
    text: str
    overlong: bool       # the raw output was too long (cut here, or cut by max_tokens)
    ok: bool             # usable (non-empty, long enough, no prompt markup)
    reason: str = ""


def _first_tip_lines(s: str) -> str:
    keep: list[str] = []
    for line in s.split("\n"):
        line = line.strip()
        if not keep:
            line = _PREAMBLE.sub("", _BULLET.sub("", line), count=1).strip()
        if not line or _ECHO.match(line):
            if keep:
                break  # the tip paragraph ended
            continue
        if keep and _BULLET.match(line):
            break  # a list: the first item is the tip
        keep.append(line)
    return " ".join(keep)


def postprocess(raw: str, max_chars: int = MAX_TIP_CHARS, truncated: bool = False) -> Tip:
    """One tip from a raw completion: first non-echo paragraph, no preamble / bullets /
    markup / quotes, cut at a sentence end within ``max_chars``. ``truncated`` (the model
    hit max_tokens) drops the unfinished last sentence. Either cut flags ``overlong``."""
    s = (raw or "").replace("\r", "")
    for m in _BAD_MARKERS:
        s = s.replace(m, "\n")
    s = _first_tip_lines(s)
    s = _BULLET.sub("", s)
    s = _PREAMBLE.sub("", s, count=1)
    s = _MARKUP.sub("", s)
    s = re.sub(r"\s+", " ", s).strip().strip("\"'“”‘’ ").strip()
    overlong = len(s) > max_chars or truncated
    if overlong:
        sents = [p for p in _SENT_END.split(s) if p]
        if truncated and sents and not sents[-1].endswith((".", "!", "?")) and len(sents) > 1:
            sents = sents[:-1]  # the sentence max_tokens cut off
        cut = ""
        for sent in sents:
            if len(cut) + len(sent) + (1 if cut else 0) > max_chars:
                break
            cut = f"{cut} {sent}" if cut else sent
        if not cut:
            cut = s[: max_chars - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"
        s = cut
    if len(s) < MIN_TIP_CHARS:
        return Tip(s, overlong, False, "too_short" if s else "empty")
    if _UNSAFE.search(s):
        return Tip(s, overlong, False, "unsafe")
    return Tip(s, overlong, True)


# ---------------------------------------------------------------- fallback tips
# The library itself lives in :mod:`tipsml.fallbacks` (several per arm, some naming the
# user's task); these are its context-free ("plain") tips, kept here for callers that
# have no context.

FALLBACK_TIPS: dict[str, tuple[str, ...]] = {
    arm: t["plain"] for arm, t in _FB.LIBRARY.items()}
GENERIC_FALLBACK = _FB.GENERAL["plain"]


def fallback_tip(arm: str, key: str = "") -> str:
    """A fixed, safe tip for ``arm``; the same (arm, key) always gives the same text."""
    return _FB.plain(arm, key)

"""The LLM judge for rubric tip-v1 (through LiteLLM, via :class:`tipsml.llm.LLMClient`).

* Blind: the judge prompt holds the rubric, the scenario's neutral description and the
  tip — never the model or prompt version that produced it.
* Structured output: the rubric's JSON schema is sent as the response format (Ollama:
  ``json_schema`` → its ``format``; llama.cpp / OpenAI-compatible local servers:
  ``json_object`` + ``schema``, grammar-constrained) and the reply is validated
  with :class:`tipsml.rubric.JudgeScores`.
* Bounded retries: an answer that is not valid JSON or not integers 1–5 is retried
  (``max_retries`` times, the error shown to the judge). After that the score is
  recorded deterministically as *judge-failed*: the deterministic flags stay, no
  relevance/actionability/tone and no composite are invented.
* Transport failures (server down, timeout) are not "bad answers": they raise
  :class:`tipsml.llm.LLMError` so the cell is retried later as a whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from tipsml import rubric as R
from tipsml.llm import LLMClient, LLMError, extract_json

TRANSIENT = ("timeout", "unavailable", "circuit_open")

SYSTEM = (
    "You are a strict, fair evaluator of short productivity tips shown in a to-do app.\n"
    + R.describe(compact=True)
    + "\nJudge only the tip against the user's situation. Reply with only a JSON object "
      "with integer relevance, actionability and tone (1 to 5), no other text."
)


def judge_messages(situation: str, tip: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Situation: {situation}\n\nTip to judge:\n<tip>\n"
                                        f"{tip}\n</tip>\n\nYour JSON scores:"}]


def response_format_for(model: str, mode: str = "auto", api_base: str | None = None) -> dict | None:
    """The structured-output request for ``model`` (``mode``: auto | json_schema |
    json_object_schema | json_object | none)."""
    if mode == "auto":
        provider = model.split("/", 1)[0] if "/" in model else ""
        if provider.startswith("ollama"):
            mode = "json_schema"
        elif provider in ("openai", "") and api_base:
            mode = "json_object_schema"  # local OpenAI-compatible server (llama.cpp)
        else:
            mode = "json_schema"
    if mode == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": "tip_v1_scores", "schema": R.JSON_SCHEMA, "strict": True}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": R.JSON_SCHEMA}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def parse_scores(text: str) -> tuple[R.JudgeScores | None, str | None]:
    """(scores, None) or (None, why the answer is unusable)."""
    obj = extract_json(text)
    if obj is None:
        return None, "no JSON object in the answer"
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for k, v in list(lowered.items()):
        if isinstance(v, float) and v.is_integer():
            lowered[k] = int(v)
        if isinstance(v, bool):
            return None, f"{k} must be an integer 1-5"
    try:
        return R.JudgeScores.model_validate(lowered), None
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:3])
        return None, errs


@dataclass
class JudgeResult:
    score: R.Score
    attempts: list[dict] = field(default_factory=list)  # raw answers and why they failed
    latency_ms: float = 0.0


@dataclass
class LLMJudge:
    client: LLMClient
    model: str
    max_retries: int = 2
    max_tokens: int = 48
    timeout_s: float = 60.0
    response_mode: str = "auto"
    keep_alive: int | str | None = 0

    @property
    def name(self) -> str:
        return f"llm:{self.model}"

    async def judge(self, situation: str, tip: str) -> JudgeResult:
        text = R.clean(tip)
        if not text:
            return JudgeResult(R.Score.of(text, self.name, None, "empty candidate: not judged"))
        msgs = judge_messages(situation, text)
        rf = response_format_for(self.model, self.response_mode, self.client.api_base)
        attempts: list[dict] = []
        t0 = time.perf_counter()
        err = None
        for attempt in range(1 + self.max_retries):
            try:
                res = await self.client.complete(
                    msgs, model=self.model, temperature=0.0, max_tokens=self.max_tokens,
                    timeout=self.timeout_s, keep_alive=self.keep_alive, response_format=rf,
                    seed=attempt)
            except LLMError as e:
                if e.kind in TRANSIENT:
                    raise
                # the server refused the request shape (e.g. an unsupported response
                # format): retry without it, counting the attempt
                attempts.append({"attempt": attempt, "raw": None, "error": str(e)[:300]})
                err = str(e)[:300]
                rf = None
                continue
            scores, err = parse_scores(res.text)
            attempts.append({"attempt": attempt, "raw": res.text[:2000], "error": err,
                             "latency_ms": round(res.latency_ms, 1)})
            if scores is not None:
                return JudgeResult(R.Score.of(text, self.name, scores), attempts,
                                   (time.perf_counter() - t0) * 1000.0)
            msgs = msgs[:2] + [
                {"role": "assistant", "content": res.text[:500]},
                {"role": "user", "content": f"That answer is not usable ({err}). Reply with "
                                            "only the JSON object with integer relevance, "
                                            "actionability and tone from 1 to 5."}]
        return JudgeResult(
            R.Score.of(text, self.name, None,
                       f"judge failed after {len(attempts)} attempts: {err}"),
            attempts, (time.perf_counter() - t0) * 1000.0)


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1)

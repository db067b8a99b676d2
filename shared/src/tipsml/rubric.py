"""Rubric ``tip-v1``: how a generated tip is judged.

Relevance, actionability and tone are judged on 1–5 (by the LLM judge or a human);
``format_ok`` and ``overlong`` are computed here, deterministically, from the text.

    composite = relevance + actionability + tone + 2 × format_ok − overlong   (2 … 17)

The rubric is self-describing (:data:`RUBRIC` carries its version, scales and
rules) and is stored with every bench run, so judges in different sessions use the
same criteria. A score whose judge failed keeps its flags but has no composite:
numbers are never invented.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

VERSION = "tip-v1"
CRITERIA = ("relevance", "actionability", "tone")
SCALE = (1, 5)
MAX_WORDS = 40
MAX_CHARS = 280
MIN_WORDS = 4

RUBRIC: dict = {
    "version": VERSION,
    "criteria": {
        "relevance": {
            "scale": [1, 5],
            "question": "Does the tip fit this user's situation: the time of day, their open "
                        "and overdue tasks, their habits and the requested tip kind?",
            "anchors": {"1": "generic or contradicts the situation",
                        "3": "fits the tip kind but ignores the tasks or the time",
                        "5": "clearly built on this user's tasks, time and tip kind"},
        },
        "actionability": {
            "scale": [1, 5],
            "question": "Can the user act on it in the next few minutes?",
            "anchors": {"1": "vague advice, no action",
                        "3": "an action, but unspecific or large",
                        "5": "one concrete, small, immediate step"},
        },
        "tone": {
            "scale": [1, 5],
            "question": "Is it calm, respectful and encouraging, without scolding, hype or "
                        "filler?",
            "anchors": {"1": "scolding, preachy, or off-putting",
                        "3": "neutral but stiff or wordy",
                        "5": "warm, calm and direct"},
        },
    },
    "flags": {
        "format_ok": f"deterministic: one plain-text tip of {MIN_WORDS}+ words on one line, "
                     "no list or markdown, no preamble such as 'Sure' or 'Here is', not "
                     "wrapped in quotes, ends with . ! or ?",
        "overlong": f"deterministic: more than {MAX_WORDS} words or {MAX_CHARS} characters",
    },
    "composite": "relevance + actionability + tone + 2*format_ok - overlong (range 2..17)",
}
RUBRIC_HASH = hashlib.sha256(json.dumps(RUBRIC, sort_keys=True).encode()).hexdigest()[:12]
COMPOSITE_RANGE = (3 * SCALE[0] - 1, 3 * SCALE[1] + 2)

_PREAMBLE = re.compile(r"^(sure|certainly|of course|here('s| is| are)|as an ai|tip\s*:|"
                       r"okay|ok,)\b", re.IGNORECASE)
_MARKDOWN = re.compile(r"(^\s*([-*•#>]|\d+[.)])\s)|\*\*|__|`", re.MULTILINE)
_QUOTES = "\"'“”‘’«»"


def words(text: str) -> int:
    return len(text.split())


def clean(text: str | None) -> str:
    """What a candidate is judged on: the model's text, whitespace-trimmed (nothing else)."""
    return (text or "").strip()


def format_ok(text: str | None) -> bool:
    t = clean(text)
    if words(t) < MIN_WORDS:
        return False
    if "\n" in t or _MARKDOWN.search(t) or _PREAMBLE.search(t):
        return False
    if t[0] in _QUOTES and t[-1] in _QUOTES:
        return False
    return t[-1] in ".!?"


def overlong(text: str | None) -> bool:
    t = clean(text)
    return words(t) > MAX_WORDS or len(t) > MAX_CHARS


def composite(relevance: int, actionability: int, tone: int, fmt_ok: bool, over: bool) -> int:
    return int(relevance) + int(actionability) + int(tone) + 2 * int(bool(fmt_ok)) - int(bool(over))


class JudgeScores(BaseModel):
    """What a judge (LLM or human) must provide: integers on the 1–5 scale."""

    model_config = ConfigDict(extra="ignore", strict=False)

    relevance: int = Field(ge=SCALE[0], le=SCALE[1])
    actionability: int = Field(ge=SCALE[0], le=SCALE[1])
    tone: int = Field(ge=SCALE[0], le=SCALE[1])


JSON_SCHEMA: dict = {
    "type": "object",
    "properties": {c: {"type": "integer", "enum": list(range(SCALE[0], SCALE[1] + 1))}
                   for c in CRITERIA},
    "required": list(CRITERIA),
    "additionalProperties": False,
}


class Score(BaseModel):
    """One candidate's score under tip-v1. ``composite`` is None when the judge failed."""

    rubric: Literal["tip-v1"] = VERSION
    judge: str  # "llm:<model>" | "human:<name>" | "none"
    format_ok: bool
    overlong: bool
    relevance: int | None = None
    actionability: int | None = None
    tone: int | None = None
    composite: int | None = None
    judge_failed: bool = False
    judge_error: str | None = None

    @classmethod
    def of(cls, text: str, judge: str, scores: JudgeScores | None,
           error: str | None = None) -> Score:
        fo, ov = format_ok(text), overlong(text)
        if scores is None:
            return cls(judge=judge, format_ok=fo, overlong=ov, judge_failed=True,
                       judge_error=(error or "no score")[:300])
        return cls(judge=judge, format_ok=fo, overlong=ov, relevance=scores.relevance,
                   actionability=scores.actionability, tone=scores.tone,
                   composite=composite(scores.relevance, scores.actionability, scores.tone,
                                       fo, ov))


def describe(compact: bool = False) -> str:
    """The rubric as text, for judge prompts (``compact``: questions and the 1/5 anchors
    only, fewer tokens for small local judges) and export files."""
    lines = [f"Rubric {VERSION}. Score each criterion with an integer from 1 to 5."]
    for name, c in RUBRIC["criteria"].items():
        a = c["anchors"]
        anchors = (f"1 = {a['1']}, 5 = {a['5']}" if compact
                   else "; ".join(f"{k} = {v}" for k, v in a.items()))
        lines.append(f"- {name}: {c['question']} ({anchors})")
    return "\n".join(lines)

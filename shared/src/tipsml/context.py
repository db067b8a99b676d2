"""Context assembler: request context + profile features + recent signals → PromptContext.

Uses the declared tables of :mod:`tipsml.features` (``CONTEXT_FEATURES`` for the JIT
fields with their fallbacks, ``PROFILE_SCHEMA`` for the batched profile features), so
the generator reads the same inputs as the scorer.

Task titles come from users. They are *data*: :func:`sanitize_title` strips control
characters, angle brackets, back-ticks and quotes (so a title cannot close the
``<tasks>`` block or open a fake one), collapses whitespace and caps the length;
:meth:`PromptContext.render` puts them one per line between ``<tasks>`` and
``</tasks>``, quoted. The system message of every prompt version says that block is
data, never instructions.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .contract import Context, Signal
from .features import CONTEXT_FEATURES, resolve_profile, resolve_time

MAX_PROMPT_TASKS = 5
MAX_PROMPT_TITLE_CHARS = 80
MAX_SIGNALS = 10
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_DELIMS = re.compile(r"[<>`\"{}\[\]\\|]")
_WS = re.compile(r"\s+")
_TAGLIKE = re.compile(r"/?\s*(tasks|system|assistant|user|im_start|im_end)\b", re.IGNORECASE)
_SIGNAL_KIND = re.compile(r"[^a-z0-9_.-]")
_WORDS = re.compile(r"\w+")


def sanitize_title(title: Any, max_len: int = MAX_PROMPT_TITLE_CHARS) -> str:
    """A user-typed title as inert prompt data: printable, undelimited, one line, capped."""
    s = "" if title is None else str(title)
    s = unicodedata.normalize("NFKC", s)
    s = "".join(ch if unicodedata.category(ch)[0] not in ("C",) else " " for ch in s)
    s = _DELIMS.sub(" ", s)
    s = _TAGLIKE.sub(lambda m: m.group(0).replace("/", " "), s)
    s = _WS.sub(" ", s).strip()
    if len(s) > max_len:
        s = s[: max_len - 1].rstrip() + "…"
    return s


def part_of_day(hour: int) -> str:
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 22:
        return "evening"
    return "night"


@dataclass(frozen=True)
class TaskView:
    title: str
    priority: int | None
    overdue: bool
    due: str | None

    def render(self) -> str:
        bits = []
        if self.priority is not None:
            bits.append(f"priority {self.priority}/4")
        if self.overdue:
            bits.append("overdue")
        elif self.due:
            bits.append(f"due {self.due}")
        tail = f" ({', '.join(bits)})" if bits else ""
        return f'- "{self.title}"{tail}'


@dataclass(frozen=True)
class PromptContext:
    hour_of_day: int
    day_of_week: int
    tasks: tuple[TaskView, ...] = ()
    n_tasks: int = 0
    n_overdue: int = 0
    profile: dict[str, Any] = field(default_factory=dict)
    recent_signals: tuple[str, ...] = ()

    @property
    def day_name(self) -> str:
        return DAY_NAMES[self.day_of_week]

    @property
    def part_of_day(self) -> str:
        return part_of_day(self.hour_of_day)

    def render(self, habits: bool = True) -> str:
        """The context block of the user message (titles delimited as data); ``habits``:
        include the profile line (completion rate, preferred hour)."""
        lines = [f"Time: {self.day_name} {self.hour_of_day:02d}:00 ({self.part_of_day})."]
        if self.n_tasks:
            more = self.n_tasks - len(self.tasks)
            lines.append(f"Open tasks: {self.n_tasks}, overdue: {self.n_overdue}"
                         + (f" (top {len(self.tasks)} shown, {more} more)." if more > 0 else "."))
        else:
            lines.append("Open tasks: none listed.")
        p = self.profile
        hab: list[str] = []
        if p.get("completion_rate") is not None:
            hab.append(f"completes {round(100 * p['completion_rate'])}% of suggested tips")
        if p.get("preferred_hour") is not None:
            hab.append(f"works best around {int(p['preferred_hour']):02d}:00")
        if hab and habits:
            lines.append("User habits: " + "; ".join(hab) + ".")
        if self.recent_signals:
            lines.append("Recent activity: " + ", ".join(self.recent_signals) + ".")
        lines.append("<tasks>")
        lines.extend(t.render() for t in self.tasks)
        lines.append("</tasks>")
        return "\n".join(lines)

    def echoes_tasks(self, text: str, n: int = 6) -> bool:
        """True when ``text`` repeats ``n`` consecutive words of a task title: the model
        parroting user data (e.g. an injected instruction) instead of writing a tip."""
        words = _WORDS.findall(text.lower())
        grams = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
        if not grams:
            return False
        for t in self.tasks:
            tw = _WORDS.findall(t.title.lower())
            if any(tuple(tw[i:i + n]) in grams for i in range(len(tw) - n + 1)):
                return True
        return False

    def to_dict(self) -> dict:
        return {"hour_of_day": self.hour_of_day, "day_of_week": self.day_of_week,
                "n_tasks": self.n_tasks, "n_overdue": self.n_overdue,
                "tasks": [t.__dict__ for t in self.tasks], "profile": dict(self.profile),
                "recent_signals": list(self.recent_signals)}


def _as_context(context: Any) -> Context | None:
    if context is None or isinstance(context, Context):
        return context
    if isinstance(context, dict):
        return Context.model_validate(context)
    return context  # duck-typed (hour_of_day / day_of_week / tasks attributes)


def _signal_kind(s: Any) -> str | None:
    if isinstance(s, Signal):
        kind = s.kind
    elif isinstance(s, dict):
        kind = s.get("kind")
    else:
        kind = getattr(s, "kind", None)
    if not kind:
        return None
    k = _SIGNAL_KIND.sub("", str(kind).lower())[:40]
    return k or None


def summarize_signals(signals: list | None) -> tuple[str, ...]:
    """Recent signal kinds, most recent first, counted: ``task.completed x2``."""
    counts: dict[str, int] = {}
    for s in (signals or [])[:MAX_SIGNALS * 5]:
        k = _signal_kind(s)
        if k:
            counts[k] = counts.get(k, 0) + 1
    return tuple((k if n == 1 else f"{k} x{n}") for k, n in list(counts.items())[:MAX_SIGNALS])


def assemble(context: Any, profile_features: dict | None, signals: list | None = None,
             now: _dt.datetime | None = None) -> PromptContext:
    """Build the typed prompt context; missing fields use the declared fallbacks."""
    ctx = _as_context(context)
    hour, dow = resolve_time(ctx, now)
    raw_tasks = list(getattr(ctx, "tasks", None) or []) if ctx is not None else []
    if not raw_tasks:
        raw_tasks = list(CONTEXT_FEATURES["tasks"].fallback)
    views = []
    for t in raw_tasks:
        title = sanitize_title(getattr(t, "title", ""))
        if not title:
            continue
        prio = getattr(t, "priority", None)
        views.append(TaskView(title=title, priority=prio if isinstance(prio, int) else None,
                              overdue=bool(getattr(t, "overdue", False)),
                              due=sanitize_title(getattr(t, "due", None), 20) or None))
    n_overdue = sum(1 for t in raw_tasks if getattr(t, "overdue", False))
    # most relevant first: overdue, then higher priority; stable for equal keys
    ranked = sorted(views, key=lambda v: (not v.overdue, -(v.priority or 0)))
    return PromptContext(hour_of_day=hour, day_of_week=dow, tasks=tuple(ranked[:MAX_PROMPT_TASKS]),
                         n_tasks=len(raw_tasks), n_overdue=n_overdue,
                         profile=resolve_profile(profile_features),
                         recent_signals=summarize_signals(signals))

"""The tip guard: declared rules every generated candidate must pass before it is cached
or served, and the deterministic ranker that picks the best of several candidates.

The model is small (SmolLM2-135M is the only instruct model shipped embedded), so its
output is never trusted. A candidate is the post-processed tip (``text``) plus the raw
completion it came from (``raw``, for headings and lists the clean-up flattened). The
rules are data: :data:`RULES` is the declared list, each rule with the ``reason`` id a
rejection is counted under (``generator_rejected_total{reason,prompt_version}``), a
description for people, and the check it runs; pattern rules carry their regexes in the
declaration. Every rule is evaluated (a verdict lists all the reasons; the first one in
declaration order is the *primary* reason that metrics count).

:data:`GUARD_ID` is a content hash of the declaration and the limits: cached candidates
carry it, and a candidate written under other rules is not served.

The ranker (:func:`score`) is built from rubric ``tip-v1``: its deterministic
``format_ok`` and ``overlong`` flags (weighted as in the composite), plus proxies for
relevance (names one of the user's tasks, the most urgent one best) and for the tip
kind (intent words of the arm), and a small preference for a concrete action.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import rubric as R

if TYPE_CHECKING:  # pragma: no cover
    from .context import PromptContext
    from .prompts import PromptVersion

GUARD_REVISION = 1  # bump when a check's code changes meaning (the hash covers the data)
MIN_WORDS = 6
MAX_WORDS = R.MAX_WORDS  # 40, as rubric tip-v1's overlong flag
MAX_CHARS = 240
MAX_SENTENCES = 2
ECHO_NGRAM = 6

# ------------------------------------------------------------------ vocabularies (data)

# What each tip kind (arm) is about: a candidate that names none of the user's tasks must
# use at least one of these (matched on word stems, see :func:`stem`).
ARM_INTENT: dict[str, tuple[str, ...]] = {
    "focus_block": ("focus", "focused", "block", "uninterrupted", "distraction", "distract",
                    "notification", "interruption", "concentrate", "concentration", "deep work",
                    "silence", "mute", "timer", "pomodoro", "one task", "single task",
                    "undivided", "close", "tab", "phone", "do not disturb", "minutes"),
    "break_reminder": ("break", "pause", "stretch", "walk", "water", "breathe", "breath",
                       "rest", "step away", "stand up", "eyes", "recharge", "snack", "fresh air",
                       "relax", "screen", "window", "move", "tea", "coffee"),
    "task_breakdown": ("step", "first step", "smaller", "small", "split", "chunk", "piece",
                       "part", "break", "subtask", "outline", "list",
                       "start with", "next action", "tiny", "easiest"),
    "prioritize": ("priority", "prioritize", "important", "most", "first", "matter",
                   "urgent", "top", "overdue", "rank", "order", "later", "wait", "defer",
                   "postpone", "one thing", "set aside", "choose", "pick", "deadline"),
    "plan_tomorrow": ("tomorrow", "plan", "next day", "morning", "tonight", "evening",
                      "list", "schedule", "before you stop", "log off", "calendar",
                      "first thing", "wind down", "end of the day", "end your day"),
}
GENERAL_INTENT: tuple[str, ...] = tuple(sorted({w for ws in ARM_INTENT.values() for w in ws}))

# Words of a task title that do not identify the task ("finish", "write" ...): naming a
# task means using one of its other words.
GENERIC_TITLE_WORDS = frozenset([
    "a", "an", "the", "and", "or", "of", "to", "for", "in", "on", "at", "by", "with", "about",
    "from", "into", "up", "out", "my", "your", "our", "their", "this", "that", "these", "those",
    "it", "its", "is", "are", "be", "do", "does", "did", "done", "make", "made", "get", "got",
    "go", "going", "start", "finish", "finishing", "write", "writing", "send", "give", "take",
    "book", "answer", "review", "prepare", "approve", "fix", "read", "check", "call", "email",
    "new", "old", "next", "last", "first", "two", "three", "four", "one", "all", "some", "any",
    "more", "task", "tasks", "todo", "item", "items", "thing", "things", "work", "job", "stuff",
    "quick", "small", "big", "draft", "revise", "update",
])

# English function words: a real English sentence of 6+ words uses some of them.
FUNCTION_WORDS = frozenset([
    "a", "an", "the", "to", "of", "and", "or", "for", "in", "on", "at", "by", "with", "from",
    "your", "you", "it", "is", "are", "be", "this", "that", "now", "before", "after", "then",
    "so", "as", "if", "when", "while", "into", "out", "up", "one", "just", "can", "will",
])

NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "dozen": 12,
}
# a number right before one of these (optionally hyphenated: "10-minute") is the length
# of the suggested action, not a claim about the user: allowed up to the given value
DURATION_UNITS = {"second": 120, "seconds": 120, "sec": 120, "secs": 120, "minute": 90,
                  "minutes": 90, "min": 90, "mins": 90, "hour": 3, "hours": 3, "hr": 3,
                  "hrs": 3}
# a small count of these is part of the suggested action ("three small steps")
COUNT_NOUNS = frozenset([
    "step", "steps", "breath", "breaths", "thing", "things", "item", "items", "action",
    "actions", "sentence", "sentences", "line", "lines", "subtask", "subtasks", "part", "parts",
    "piece", "pieces", "chunk", "chunks", "point", "points", "question", "questions", "idea",
    "ideas", "stretch", "stretches", "sip", "sips", "glass", "glasses", "priorities", "tab",
    "tabs", "task", "tasks", "bullet", "bullets", "word", "words", "page", "pages", "minute",
    "minutes", "heading", "headings", "section", "sections", "paragraph", "paragraphs", "note",
    "notes",
])
MAX_ACTION_COUNT = 5
MONTHS = ("january|february|march|april|may|june|july|august|september|october|november|"
          "december|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec")

# ------------------------------------------------------------------ the rules (data)


@dataclass(frozen=True)
class Rule:
    """One declared rule: ``reason`` (counted), ``description`` (for people), ``check``
    (the name of the check in :data:`CHECKS`) and, for pattern checks, ``patterns``
    (case-insensitive regexes; ``case_patterns`` are case-sensitive)."""

    reason: str
    description: str
    check: str
    patterns: tuple[str, ...] = ()
    case_patterns: tuple[str, ...] = ()


RULES: tuple[Rule, ...] = (
    Rule("empty", "nothing usable left after clean-up", "empty"),
    Rule("echo",
         "repeats the prompt instead of writing a tip: <tasks> markers or chat tokens, "
         f"{ECHO_NGRAM} words in a row of the system text or the context block, context "
         "labels, a task title copied word for word, the tasks of a few-shot example, or an "
         "injected instruction",
         "echo",
         patterns=(r"</?\s*tasks\s*>?", r"<\|", r"\|>", r"\[/?inst\]", r"</?s>",
                   r"\btip kind\b", r"\bopen tasks\s*:", r"\buser habits\b",
                   r"\brecent activity\s*:", r"\bwrite the tip\b", r"\b\d\s*/\s*4\b",
                   r"\btime\s*:\s*\w+day\b", r"\boverdue\s*:\s*\d",
                   r"\bignore (?:all |any )?(?:the )?(?:previous|prior|above|earlier)\b")),
    Rule("meta",
         "talks about itself, its role or the conversation: assistant, AI, language model, "
         "prompt, instructions, 'as an AI', role text such as \"You're a ... assistant\", "
         "the user, first-person speaker",
         "patterns",
         patterns=(r"\bassistants?\b", r"\bas an? (?:ai|language model|assistant|chatbot)\b",
                   r"\blanguage models?\b", r"\bchat ?bots?\b", r"\bprompt(?:s|ed|ing)?\b",
                   r"\binstructions?\b", r"\bsystem (?:message|prompt|text)\b",
                   (r"\byou(?:'re|’re| are) (?:a|an) (?:[\w-]+ ){0,3}(?:assistant|writer|bot|"
                   r"model|coach|mentor|expert|helper|persona|ai|agent|character)\b"),
                   r"\busers?\b", r"\brole ?play\b",
                   r"\b(?:no|without) (?:rules|restrictions|limits|filters)\b",
                   r"\bin this (?:moment|conversation|chat|exercise|scenario)\b",
                   (r"\b(?:here(?:'s| is)|write|writing|generate|generating|create) "
                   r"(?:a |an |one |the |your |some )?(?:\w+ )?(?:tip|story|poem|essay)s?\b"),
                   r"\b(?:this|my|the following|the above) (?:tip|response|answer|reply)\b",
                   (r"\b(?:a|the|this|that|one|each|every|these|some|productivity|next|daily|"
                    r"my)(?: \w+)? tips?\b"),
                   r"\blet me\b", r"\bhappy to help\b", r"\bhope this helps\b",
                   r"\bsure[,!]", r"\bcertainly[,!]", r"\bof course[,!]"),
         case_patterns=(r"\bAI\b", (r"\bI(?:'m|’m| am| will|'ll| can| would|'d| think| "
                        r"suggest| recommend| hope)\b"), r"^I\b", r"[.!?] I\b")),
    Rule("markup",
         "a heading, markdown, a list, a label before a colon, emoji, or several paragraphs",
         "markup",
         patterns=(r"(?:^|\s)#{1,6}\s", r"\*\*|__|`|~~", r"(?:^|\n)\s*(?:[-*•·>+]|\d+[.)])\s",
                   r"\bstep \d+\s*[:.)]", r"\|\s*\w+\s*\|"),
         case_patterns=(r"^\s*(?:[A-Z][\w'-]*\s){0,3}[A-Z][\w'-]*\s*:\s", r":\s+[\"“]?[A-Z]")),
    Rule("length", f"fewer than {MIN_WORDS} words, more than {MAX_WORDS} words, more than "
                   f"{MAX_CHARS} characters or more than {MAX_SENTENCES} sentences", "length"),
    Rule("unfinished", "not a finished sentence: starts in lower case or ends without "
                       ". ! or ?", "unfinished"),
    Rule("invented_number",
         "a number, date, time, age or percentage the context does not contain (the length "
         "of the suggested action, such as '10 minutes' or 'three small steps', is allowed)",
         "numbers"),
    Rule("not_english", "not plain English: non-Latin letters, no English function words, "
                        "run-together or repeated words", "english"),
    Rule("ungrounded", "names none of the user's tasks and uses none of the tip kind's "
                       "intent words", "grounding"),
)
REASONS: tuple[str, ...] = tuple(r.reason for r in RULES)

GUARD_ID: str = hashlib.sha256(json.dumps({
    "revision": GUARD_REVISION,
    "rules": [[r.reason, r.description, r.check, list(r.patterns), list(r.case_patterns)]
              for r in RULES],
    "limits": [MIN_WORDS, MAX_WORDS, MAX_CHARS, MAX_SENTENCES, ECHO_NGRAM, MAX_ACTION_COUNT],
    "intent": ARM_INTENT, "durations": DURATION_UNITS, "counts": sorted(COUNT_NOUNS),
    "generic": sorted(GENERIC_TITLE_WORDS),
}, sort_keys=True).encode()).hexdigest()[:12]

# ------------------------------------------------------------------ text helpers

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_TOKEN = re.compile(r"\S+")
_NUM = re.compile(r"(?<![\w.])(\d+(?:[.,:]\d+)*)(\s*(?:%|percent\b|per cent\b|am\b|pm\b|a\.m\.|"
                  r"p\.m\.|st\b|nd\b|rd\b|th\b|k\b|x\b|/\d+))?", re.IGNORECASE)
_NUMWORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b(?:[- ](?:" +
                      "|".join(NUMBER_WORDS) + r"))?", re.IGNORECASE)
_SPAN = r"(?:\d+|a few|several|a couple of|" + "|".join(NUMBER_WORDS) + r")"
_DATEWORD = re.compile(rf"\b(?:(?:{MONTHS})\.?\s+\d|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?"
                       rf"(?:{MONTHS})\b|(?:19|20)\d\d\b|{_SPAN}\s+(?:days?|weeks?|months?|"
                       rf"years?)\b|\byesterday\b|\blast (?:week|month|year)\b|\bago\b)",
                       re.IGNORECASE)
_PERCENT_WORDS = re.compile(r"\b(?:" + "|".join(NUMBER_WORDS) + r")[- ]?(?:percent|per cent)\b",
                            re.IGNORECASE)


def stem(word: str) -> str:
    """A crude English stem (enough to match 'reports' / 'report', 'planning' / 'plan',
    'closed' / 'close')."""
    w = word.lower().replace("’", "'")
    w = w.removesuffix("'s")
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("es") and len(w) > 4 and (w[-3] in "sxz" or w[-4:-2] in ("ch", "sh")):
        w = w[:-2]
    elif w.endswith("s") and len(w) > 3 and w[-2] not in "sui":
        w = w[:-1]
    elif w.endswith("ing") and len(w) > 5:
        w = w[:-3]
    elif w.endswith("ed") and len(w) > 4:
        w = w[:-2]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]  # planning -> plann -> plan
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]  # close / closed -> clos
    return w


def words_of(text: str) -> list[str]:
    return _WORD.findall(text or "")


def _stems(text: str) -> list[str]:
    return [stem(w) for w in words_of(text)]


def _phrase_in(phrase: str, stems: list[str], joined: str) -> bool:
    ps = _stems(phrase)
    if len(ps) == 1:
        return ps[0] in stems
    return f" {' '.join(ps)} " in joined


def intent_hits(text: str, arm: str) -> int:
    """How many of ``arm``'s intent words / phrases the text uses."""
    st = _stems(text)
    joined = f" {' '.join(st)} "
    vocab = ARM_INTENT.get(arm, GENERAL_INTENT)
    return sum(1 for p in vocab if _phrase_in(p, st, joined))


def _numbers_in(text: str) -> set[float]:
    out: set[float] = set()
    for m in re.finditer(r"\d+(?:\.\d+)?", text or ""):
        try:
            out.add(float(m.group(0)))
        except ValueError:
            continue
    for m in _NUMWORD.finditer(text or ""):
        out.add(float(NUMBER_WORDS[m.group(1).lower()]))
    return out


# ------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        """The primary reason (first violated rule in declaration order)."""
        return self.reasons[0] if self.reasons else None


@dataclass
class Bound:
    """The guard bound to one (context, arm, prompt version): what the checks compare with."""

    arm: str
    task_titles: tuple[str, ...]
    task_stems: tuple[frozenset[str], ...]
    numbers: Numbers
    typed: str  # the task titles and due dates, lower case (what the user wrote)
    echo_grams: frozenset[tuple[str, ...]]
    foreign_stems: frozenset[str]
    template_phrases: tuple[str, ...]  # the fixed words of the user message template
    title_words: frozenset[str]
    n_tasks: int
    ctx: PromptContext | None = None

    # -------------------------------------------------- checks (name -> method)
    def c_empty(self, rule: Rule, text: str, raw: str) -> str | None:
        return "empty" if not re.search(r"\w", text) else None

    def c_patterns(self, rule: Rule, text: str, raw: str) -> str | None:
        for pats, flags in ((rule.patterns, re.IGNORECASE), (rule.case_patterns, 0)):
            for p in pats:
                for m in re.finditer(p, text, flags):
                    hit = m.group(0).strip()
                    # a single word the user typed in a task title ("Hire an assistant")
                    if hit.lower() in self.title_words and " " not in hit:
                        continue
                    return hit or p
        return None

    def c_echo(self, rule: Rule, text: str, raw: str) -> str | None:
        for src in (text, raw):
            for p in rule.patterns:
                m = re.search(p, src, re.IGNORECASE)
                if m:
                    return m.group(0)
        ws = [w.lower() for w in words_of(text)]
        for i in range(len(ws) - ECHO_NGRAM + 1):
            g = tuple(ws[i:i + ECHO_NGRAM])
            if g in self.echo_grams:
                return " ".join(g)
        if self.ctx is not None and self.ctx.echoes_tasks(text):
            return "task title copied"
        norm = " ".join(w.lower() for w in words_of(text))
        for phrase in self.template_phrases:
            if f" {phrase} " in f" {norm} ":
                return phrase
        foreign = self.foreign_stems.intersection(_stems(text))
        if foreign:
            return f"example task: {min(foreign)}"
        return None

    def c_markup(self, rule: Rule, text: str, raw: str) -> str | None:
        for pats, flags in ((rule.patterns, re.IGNORECASE), (rule.case_patterns, 0)):
            for p in pats:
                m = re.search(p, text, flags | re.MULTILINE)
                if m and not _is_time(m.group(0)):
                    return m.group(0).strip() or "list"
        r = (raw or "").strip()
        for p in RAW_MARKUP:
            m = re.search(p, r, re.MULTILINE)
            if m:
                return m.group(0).strip() or "list"
        if any(unicodedata.category(ch) in ("So", "Sk", "Cs") for ch in text):
            return "emoji or symbol"
        lines = [ln.strip() for ln in r.split("\n") if ln.strip()]
        if len(lines) > 1:
            first = lines[0].strip("*#_ ")
            if (first and len(first.split()) <= 8 and first[-1] not in ".!?,;"
                    and text.startswith(first)):
                return f"heading: {first[:40]}"
        # a Title-Case heading flattened into the text: "Task Breakdown In a world ..."
        ws = text.split()
        run = 0
        for w in ws[:6]:
            core = w.strip("\"'“”‘’(),:;")
            if core[:1].isupper() and core.lower() not in self.title_words and core != "I":
                run += 1
            else:
                break
        if run >= 3:
            return "heading: " + " ".join(ws[:run])
        return None

    def c_length(self, rule: Rule, text: str, raw: str) -> str | None:
        n = len(text.split())
        if n < MIN_WORDS:
            return f"{n} words"
        if n > MAX_WORDS:
            return f"{n} words"
        if len(text) > MAX_CHARS:
            return f"{len(text)} characters"
        sents = [x for x in re.split(r"(?<=[.!?])[\"'”’)]?\s+", text) if x.strip()]
        if len(sents) > MAX_SENTENCES:
            return f"{len(sents)} sentences"
        return None

    def c_unfinished(self, rule: Rule, text: str, raw: str) -> str | None:
        t = text.strip().rstrip("\"'”’)")
        if not t:
            return None
        if t[-1] not in ".!?":
            return f"ends with {t[-1]!r}"
        first = next((ch for ch in text if ch.isalnum()), "")
        if first and first.islower():
            return "starts in lower case"
        return None

    def c_numbers(self, rule: Rule, text: str, raw: str) -> str | None:
        n = self.numbers
        for m in _DATEWORD.finditer(text):
            # a date or a span of days the user typed (a title, a due date) may be named
            if m.group(0).lower() not in self.typed:
                return m.group(0)
        m = _PERCENT_WORDS.search(text)
        if m:
            return m.group(0)
        low = text.lower()
        for m in _NUM.finditer(text):
            raw_num, suffix = m.group(1), (m.group(2) or "").strip().lower()
            before = low[max(0, m.start() - 12):m.start()]
            if suffix in ("st", "nd", "rd", "th"):
                if _numbers_in(raw_num) <= n.counts and raw_num in " ".join(self.task_titles):
                    continue
                return m.group(0)  # a date ("the 15th")
            try:
                v = float(raw_num.replace(",", "")) if ":" not in raw_num else \
                    float(raw_num.split(":")[0])
            except ValueError:
                return m.group(0)
            if ":" in raw_num or suffix in ("am", "pm", "a.m.", "p.m."):
                if v in n.clock and (":" not in raw_num or raw_num.endswith(":00")):
                    continue  # the context holds whole hours only
                return m.group(0)  # a clock time that is not the user's
            if suffix.startswith("/") or before.rstrip().endswith("priority"):
                if v in n.priorities:
                    continue
                return m.group(0)
            if suffix in ("%", "percent", "per cent"):
                if v in n.percents:
                    continue
                return m.group(0)
            if suffix in ("k", "x"):
                return m.group(0)
            # digits only measure the action ("25 minutes"); a count is a word ("three
            # small steps"), a digit count ("top 3 tasks") reads as a statistic
            # a number the user typed ("chapter 4") as typed; the task counts of the
            # context ("your 3 open tasks") only about tasks
            if re.search(rf"(?<![\w.]){re.escape(raw_num)}(?![\w.])", self.typed):
                continue
            if v in n.counts and re.match(r"\s*(?:open |overdue |more )?(?:tasks?|overdue)\b",
                                          low[m.end():m.end() + 20]):
                continue
            if _is_action_amount(low, m.end(), v, counts=False):
                continue
            return m.group(0)
        for m in _NUMWORD.finditer(text):
            v = float(NUMBER_WORDS[m.group(1).lower()])
            if m.group(0).lower() in self.typed or _is_action_amount(low, m.end(), v):
                continue
            if v in n.counts and re.match(r"\s*(?:open |overdue |more )?(?:tasks?|overdue)\b",
                                          low[m.end():m.end() + 20]):
                continue
            return m.group(0)
        return None

    def c_english(self, rule: Rule, text: str, raw: str) -> str | None:
        letters = [ch for ch in text if ch.isalpha()]
        if not letters:
            return "no letters"
        foreign = [ch for ch in letters if ord(ch) > 0x24F]  # beyond Latin Extended-B
        if foreign:
            return f"non-Latin letters: {''.join(foreign[:5])}"
        accented = sum(1 for ch in letters if ord(ch) > 127)
        if accented > max(2, len(letters) // 20):
            return "accented letters"
        toks = [t.lower().strip(".,!?;:\"'()“”‘’") for t in _TOKEN.findall(text)]
        toks = [t for t in toks if t]
        fw = sum(1 for t in toks if t in FUNCTION_WORDS)
        if (len(toks) >= MIN_WORDS and fw < 1) or (len(toks) >= 12 and fw < 2):
            return "no English function words"
        for t in toks:
            if len(t) > 24 and "-" not in t and "/" not in t:
                return f"run-together word: {t[:30]}"
            if re.search(r"(.)\1\1\1", t):
                return f"repeated letters: {t[:30]}"
            if len(t) > 5 and t.isalpha() and not re.search(r"[aeiouy]", t):
                return f"no vowels: {t}"
        for i in range(len(toks) - 1):
            if toks[i] == toks[i + 1] and toks[i].isalpha():
                return f"repeated word: {toks[i]}"
        grams = [tuple(toks[i:i + 3]) for i in range(len(toks) - 2)]
        if len(grams) != len(set(grams)):
            return "repeated phrase"
        alpha_toks = sum(1 for t in toks if re.search(r"[a-z]", t))
        if toks and alpha_toks / len(toks) < 0.7:
            return "few words"
        return None

    def c_grounding(self, rule: Rule, text: str, raw: str) -> str | None:
        if self.names_task(text) is not None:
            return None
        if intent_hits(text, self.arm):
            return None
        return "no task named, no intent word"

    # -------------------------------------------------- public
    def names_task(self, text: str) -> int | None:
        """Index of the first (most urgent) task the text names, or None."""
        st = set(_stems(text))
        for i, ts in enumerate(self.task_stems):
            if ts and ts & st:
                return i
        return None

    def check(self, text: str, raw: str | None = None) -> Verdict:
        text = (text or "").strip()
        raw = raw if raw is not None else text
        reasons: list[str] = []
        details: dict[str, str] = {}
        for rule in RULES:
            hit = CHECKS[rule.check](self, rule, text, raw)
            if hit:
                reasons.append(rule.reason)
                details[rule.reason] = str(hit)[:80]
                if rule.reason == "empty":
                    break
        return Verdict(not reasons, tuple(reasons), details)

    def score(self, text: str) -> float:
        """Rank of a passing candidate (higher is better); deterministic."""
        t = R.clean(text)
        s = 2.0 * R.format_ok(t) - 1.0 * R.overlong(t)            # tip-v1 flags
        k = self.names_task(t)
        if k is not None:                                          # relevance: the tasks
            s += 2.0 if k == 0 else 1.5
        elif not self.n_tasks:                                     # (none to name)
            s += 2.0
        s += min(2.0, 0.75 * intent_hits(t, self.arm))             # fits the tip kind
        n = len(t.split())
        s += 1.0 if 10 <= n <= 30 else 0.0                         # short, not terse
        if imperative(t):                                          # actionable: an order
            s += 1.5
        elif re.search(r"\byou(?:r|'ll|'re)?\b", t, re.IGNORECASE):  # at least spoken to
            s += 0.5
        if _is_time_boxed(t):                                      # a small, concrete step
            s += 0.5
        if t.endswith("?"):                                        # a question, no action
            s -= 1.5
        return round(s, 3)


CHECKS = {
    "empty": Bound.c_empty, "patterns": Bound.c_patterns, "echo": Bound.c_echo,
    "markup": Bound.c_markup, "length": Bound.c_length, "unfinished": Bound.c_unfinished,
    "numbers": Bound.c_numbers, "english": Bound.c_english, "grounding": Bound.c_grounding,
}
assert all(r.check in CHECKS for r in RULES)

ACTION_VERBS = frozenset([
    "add", "answer", "approve", "ask", "begin", "block", "book", "break", "breathe", "call",
    "check", "choose", "clear", "close", "cross", "decide", "defer", "delay", "do", "draft",
    "drink", "drop", "email", "finish", "fix", "focus", "get", "give", "go", "grab", "jot",
    "keep", "leave", "let", "limit", "list", "look", "make", "mark", "move", "mute", "note",
    "open", "outline", "pause", "pick", "plan", "postpone", "prepare", "prioritize", "protect",
    "put", "rank", "read", "reply", "rest", "review", "revise", "schedule", "send", "set",
    "silence", "sit", "sketch", "sort", "spend", "split", "stand", "start", "step", "stop",
    "stretch", "tackle", "take", "tell", "tidy", "try", "turn", "use", "walk", "wrap", "write",
])


# markup in the raw completion that the clean-up removed: a list or markdown means the
# model wrote a document, not a tip, even when the first item reads well on its own
RAW_MARKUP = (r"^\s*(?:[-*•·+]|\d+[.)])\s+\S", r"^\s*#{1,6}\s", r"\*\*|__|`")


_LEAD = re.compile(r"^(?:(?:today|now|tonight|first|next|then|right now|this \w+|"
                   r"(?:before|after|once|when|while|if|as soon as) [^,.;:]{1,50}),\s+)?"
                   r"(?P<neg>(?:don't|do not|never)\s+)?(?P<verb>[a-z]+)", re.IGNORECASE)


def imperative(text: str) -> bool:
    """The tip tells the user to do something: an action verb first, possibly after a
    short lead-in ("Today, ...", "Before you log off, ...") or "Don't"."""
    m = _LEAD.match(text.strip().lstrip("\"'“‘(").replace("’", "'"))
    return bool(m) and (bool(m.group("neg")) or m.group("verb").lower() in ACTION_VERBS)


def _is_time(s: str) -> bool:
    return bool(re.fullmatch(r"\s*\d{1,2}:\d\d\s*", s))


def _is_time_boxed(text: str) -> bool:
    return bool(re.search(r"\b(?:\d+|" + "|".join(NUMBER_WORDS) + r"|a few|five|ten)[- ]"
                          r"(?:minutes?|mins?|seconds?)\b", text, re.IGNORECASE))


def _is_action_amount(low: str, end: int, value: float, counts: bool = True) -> bool:
    """True when the number ending at ``end`` in ``low`` measures the suggested action
    (a duration; with ``counts``, also a small count of steps, items ...)."""
    rest = low[end:end + 40].replace(",", " ")  # "three small, concrete steps"
    m = re.match(r"\s*-?\s*([a-z]+)(?:\s+([a-z]+))?(?:\s+([a-z]+))?", rest)
    if not m:
        return False
    w1, w2, w3 = m.group(1), m.group(2), m.group(3)
    if w1 in DURATION_UNITS:
        return value <= DURATION_UNITS[w1]
    if not counts or value > MAX_ACTION_COUNT:
        return False
    if w1 in COUNT_NOUNS or (w2 in COUNT_NOUNS and w1 not in ("days", "weeks")):
        return True
    if w3 in COUNT_NOUNS and w1 in ("small", "short", "quick", "deep", "concrete", "tiny",
                                    "more", "big", "main", "key"):
        return True
    if w2 in DURATION_UNITS and w1 in ("more", "short", "quick", "full", "focused"):
        return value <= DURATION_UNITS[w2]
    return False


@dataclass(frozen=True)
class Numbers:
    """Numbers the context holds, by how a tip may use them: ``counts`` bare (task counts
    and numbers inside titles or due dates), ``clock`` as a time of day, ``percents``
    with a % sign, ``priorities`` as "priority N" or "N/4"."""

    counts: frozenset[float] = frozenset()
    clock: frozenset[float] = frozenset()
    percents: frozenset[float] = frozenset()
    priorities: frozenset[float] = frozenset()


def _context_numbers(ctx: PromptContext | None) -> Numbers:
    if ctx is None:
        return Numbers()
    counts: set[float] = {float(ctx.n_tasks), float(ctx.n_overdue)}
    for t in ctx.tasks:
        counts |= _numbers_in(t.title)
        if t.due:
            counts |= _numbers_in(t.due)
    clock = {float(ctx.hour_of_day), float(ctx.hour_of_day % 12 or 12)}
    p = ctx.profile or {}
    if p.get("preferred_hour") is not None:
        ph = int(p["preferred_hour"])
        clock |= {float(ph), float(ph % 12 or 12)}
    pct = {float(round(100 * p["completion_rate"]))} if p.get("completion_rate") is not None \
        else set()
    prios = {float(t.priority) for t in ctx.tasks if t.priority is not None}
    return Numbers(frozenset(counts), frozenset(clock), frozenset(pct), frozenset(prios))


def _echo_sources(ctx: PromptContext | None, pv: PromptVersion | None) -> list[str]:
    """Prompt text a tip must not repeat: the system message, the example requests and
    the context block, without the task lines (naming a task is what a tip should do) and
    the tip-kind lines (a tip may well say what its kind asks for)."""
    out: list[str] = []
    if pv is not None:
        out.append(pv.system)
        for u, _a in pv.examples:
            out.extend(ln for ln in u.split("\n") if not ln.lstrip().startswith(('- "',
                                                                                "Tip kind")))
    if ctx is not None:
        out.extend(ln for ln in ctx.render().split("\n") if not ln.lstrip().startswith('- "'))
    return out


def _example_task_stems(pv: PromptVersion | None) -> set[str]:
    """Content words of the tasks in a version's few-shot examples."""
    out: set[str] = set()
    for u, _a in (pv.examples if pv is not None else ()):
        for ln in u.split("\n"):
            m = re.match(r'\s*- "([^"]*)"', ln)
            if m:
                out |= {stem(w) for w in words_of(m.group(1))
                        if w.lower() not in GENERIC_TITLE_WORDS and len(w) > 2}
    return out


def _template_phrases(pv: PromptVersion | None) -> tuple[str, ...]:
    """The fixed parts of a version's user message ("One sentence for this person"), as
    lower-case words, when they have 3 words or more."""
    if pv is None:
        return ()
    out = []
    for piece in re.split(r"\{\w+\}", pv.user_template):
        for part in re.split(r"[\n.:—]", piece):
            ws = [w.lower() for w in words_of(part)]
            if len(ws) >= 3:
                out.append(" ".join(ws))
    return tuple(out)


def _grams(texts: list[str], n: int) -> set[tuple[str, ...]]:
    g: set[tuple[str, ...]] = set()
    for t in texts:
        ws = [w.lower() for w in words_of(t)]
        g.update(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
    return g


def bind(ctx: PromptContext | None, arm: str, pv: PromptVersion | None = None) -> Bound:
    """The guard for candidates written for ``arm`` in ``ctx`` with prompt ``pv``."""
    titles = tuple(t.title for t in ctx.tasks) if ctx is not None else ()
    task_stems = tuple(frozenset(stem(w) for w in words_of(t)
                                 if w.lower() not in GENERIC_TITLE_WORDS and len(w) > 2)
                       for t in titles)
    title_words = frozenset(w.lower() for t in titles for w in words_of(t))
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    mine = set().union(*task_stems) if task_stems else set()
    typed = " | ".join([*titles, *(t.due for t in ctx.tasks if t.due)]
                       if ctx is not None else []).lower()
    return Bound(arm=arm, task_titles=titles, task_stems=task_stems,
                 numbers=_context_numbers(ctx), typed=typed,
                 echo_grams=frozenset(_grams(_echo_sources(ctx, pv), ECHO_NGRAM)),
                 foreign_stems=frozenset(_example_task_stems(pv) - mine),
                 template_phrases=_template_phrases(pv),
                 title_words=title_words | frozenset(days), n_tasks=len(titles), ctx=ctx)


def describe() -> list[dict]:
    """The declared rules as plain data (for reports and the README)."""
    return [{"reason": r.reason, "description": r.description} for r in RULES]


@dataclass(frozen=True)
class Ranked:
    text: str
    overlong: bool
    score: float
    raw: str = ""


def rank(bound: Bound, candidates: list[tuple[str, bool, str]]) -> list[Ranked]:
    """Passing candidates best first; ``candidates`` are (text, overlong, raw) that already
    passed :meth:`Bound.check`. Duplicates are dropped; ties keep the shorter, then the
    alphabetically first text (deterministic)."""
    seen: set[str] = set()
    out: list[Ranked] = []
    for text, over, raw in candidates:
        key = " ".join(text.lower().split())
        if key in seen:
            continue
        seen.add(key)
        out.append(Ranked(text, over, bound.score(text) - (1.0 if over else 0.0), raw))
    out.sort(key=lambda c: (-c.score, len(c.text), c.text))
    return out

"""A held-out check of served tips, independent of the guard (:mod:`tipsml.guard`).

The guard decides what is served; this module only *measures* what was served, with
rules the guard does not use (written separately, with their own vocabularies), so a
served-pass rate is not the guard grading itself. Used by ``bench/guard_report.py``;
nothing on the serving path imports it.

Each rule returns the offending fragment or None; :func:`check` runs them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tipsml import rubric as R

_DAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
_MONTHS = {"january", "february", "march", "april", "june", "july", "august", "september",
           "october", "november", "december"}
_TIME_UNITS = r"(?:seconds?|secs?|minutes?|mins?|hours?|hrs?)"
_IMPERATIVES = {
    "add", "ask", "avoid", "begin", "block", "book", "break", "breathe", "call", "cancel",
    "check", "choose", "clean", "clear", "close", "commit", "create", "cross", "decide",
    "delete", "do", "draft", "drink", "eat", "email", "end", "finish", "fix", "focus", "get",
    "give", "go", "grab", "group", "jot", "keep", "leave", "let", "list", "look", "make",
    "mark", "move", "mute", "note", "open", "outline", "pause", "pick", "plan", "prepare",
    "put", "read", "rest", "review", "reply", "revise", "schedule", "send", "set", "shut",
    "silence", "sit", "sketch", "skip", "sort", "spend", "split", "stand", "start", "step",
    "stop", "stretch", "take", "tell", "tidy", "try", "turn", "walk", "wrap", "write", "use",
    "work",
}


@dataclass(frozen=True)
class HeldoutRule:
    name: str
    description: str


RULES: tuple[HeldoutRule, ...] = (
    HeldoutRule("rubric_format", "rubric tip-v1 flags: format_ok and not overlong"),
    HeldoutRule("addresses_user", "speaks to the user: 'you'/'your', or an imperative verb "
                                  "first (after a short lead-in such as 'Today,'), or "
                                  "'Don't ...'"),
    HeldoutRule("no_speaker", "no first-person speaker: I, me, my, we, our, us"),
    HeldoutRule("no_question", "an action, not a question"),
    HeldoutRule("no_past_claims", "no claims about what the user did: 'you completed', "
                                  "'ago', 'yesterday', 'so far'"),
    HeldoutRule("numerals", "no digits except durations and numbers in task titles; no "
                            "percentages; no spans of days, weeks, months or years"),
    HeldoutRule("meta_words", "no talk of tips, advice, apps, models, examples or output"),
    HeldoutRule("cliche", "no stock filler ('work smarter', 'in a world', 'boost "
                          "productivity', 'journey' ...)"),
    HeldoutRule("invented_names", "no capitalised name that is not in the tasks (people, "
                                  "places, products)"),
)

_PAST = re.compile(r"\byou(?:'ve| have| had)? (?:already |just )?(?:completed|finished|done|"
                   r"missed|failed|skipped|spent|achieved)\b|\bago\b|\byesterday\b|"
                   r"\blast (?:week|month|time|year|night)\b|\bso far\b|\bin the past\b",
                   re.IGNORECASE)
_META = re.compile(r"\b(?:tips?|advice|suggestions?|recommendations?|output|generated?|"
                   r"models?|chatbots?|bots?|apps?|examples?|scenarios?|contexts?)\b",
                   re.IGNORECASE)
_CLICHE = re.compile(r"work smarter|in a world|in today'?s|fast[- ]paced|game[- ]changer|"
                     r"life ?hacks?|boost (?:your )?productivity|achieve your goals?|unlock|"
                     r"journey|embrace|level up|crush it|hustle|of your life|the key to|"
                     r"next level|synerg|mindset|wellness", re.IGNORECASE)
_SPEAKER_CI = re.compile(r"\b(?:me|my|mine|myself|we|we're|we've|our|ours|us)\b", re.IGNORECASE)
_SPEAKER_I = re.compile(r"\bI(?:'m|'ve|'ll|'d)?\b")


def _title_words(titles: list[str]) -> set[str]:
    return {w.lower() for t in titles for w in re.findall(r"[A-Za-z]+", t)}


def _title_digits(titles: list[str]) -> set[str]:
    return {d for t in titles for d in re.findall(r"\d+", t)}


def r_rubric_format(text: str, titles: list[str]) -> str | None:
    if not R.format_ok(text):
        return "format_ok false"
    if R.overlong(text):
        return "overlong"
    return None


def r_addresses_user(text: str, titles: list[str]) -> str | None:
    if re.search(r"\byou(?:r|rs|rself|'re|'ll|'ve)?\b", text, re.IGNORECASE):
        return None
    body = text.replace("’", "'")
    head, sep, tail = body.partition(",")
    starts = [body]
    if sep and len(head.split()) <= 6:  # "Today, choose ...": a short lead-in first
        starts.append(tail)
    for b in starts:
        if re.match(r"\s*(?:don't|do not|never)\b", b, re.IGNORECASE):
            return None
        first = re.findall(r"[A-Za-z]+", b)[:1]
        if first and first[0].lower() in _IMPERATIVES:
            return None
    return "no 'you' and no imperative"


def r_no_speaker(text: str, titles: list[str]) -> str | None:
    m = _SPEAKER_I.search(text) or _SPEAKER_CI.search(text)
    if m and m.group(0).lower() not in _title_words(titles):
        return m.group(0)
    return None


def r_no_question(text: str, titles: list[str]) -> str | None:
    return "question" if text.rstrip().endswith("?") else None


def r_no_past_claims(text: str, titles: list[str]) -> str | None:
    m = _PAST.search(text)
    return m.group(0) if m else None


def r_numerals(text: str, titles: list[str]) -> str | None:
    if re.search(r"%|\bper ?cent\b", text, re.IGNORECASE):
        return "percentage"
    m = re.search(r"\b(?:\d+|a few|several|two|three|four|five|six|seven|ten|twenty)\s+"
                  r"(?:days?|weeks?|months?|years?)\b", text, re.IGNORECASE)
    if m:
        return m.group(0)
    ok_digits = _title_digits(titles)
    for m in re.finditer(r"\d+(?:[.:,]\d+)?", text):
        d = m.group(0)
        after = text[m.end():m.end() + 12]
        if re.match(r"\s*-?\s*" + _TIME_UNITS + r"\b", after, re.IGNORECASE):
            continue
        if d in ok_digits:
            continue
        return d
    return None


def r_meta_words(text: str, titles: list[str]) -> str | None:
    tw = _title_words(titles)
    for m in _META.finditer(text):
        if m.group(0).lower() not in tw:
            return m.group(0)
    return None


def r_cliche(text: str, titles: list[str]) -> str | None:
    m = _CLICHE.search(text)
    return m.group(0) if m else None


def r_invented_names(text: str, titles: list[str]) -> str | None:
    tw = _title_words(titles)
    toks = re.findall(r"[\"“'(]?[A-Za-z][\w'’-]*[.!?:;,\"”)]*", text)
    start = True
    for tok in toks:
        core = re.sub(r"[^\w'’-]", "", tok)
        opens = tok[:1] in "\"“'("
        if (core[:1].isupper() and not start and not opens and core != "I"
                and core.lower() not in tw and core.lower() not in _DAYS
                and core.lower() not in _MONTHS):
            return core
        start = tok.rstrip("\"”)").endswith((".", "!", "?", ":"))
    return None


CHECKS = {
    "rubric_format": r_rubric_format, "addresses_user": r_addresses_user,
    "no_speaker": r_no_speaker, "no_question": r_no_question,
    "no_past_claims": r_no_past_claims, "numerals": r_numerals, "meta_words": r_meta_words,
    "cliche": r_cliche, "invented_names": r_invented_names,
}
assert set(CHECKS) == {r.name for r in RULES}


def check(text: str, titles: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Failed held-out rules of ``text`` → the offending fragment ({} = passes)."""
    t = R.clean(text)
    out: dict[str, str] = {}
    for rule in RULES:
        hit = CHECKS[rule.name](t, list(titles))
        if hit:
            out[rule.name] = str(hit)[:60]
    return out

"""The curated fallback library: what is served when no generated candidate passes the
guard, or the LLM is down, slow or out of budget.

Several tips per arm. ``task`` templates name the user's most urgent task (``{task}``,
the sanitised title, quoted); ``plain`` ones need nothing from the context. Every
filled text still goes through the guard (:mod:`tipsml.guard`): a title that makes a
template fail (too long, copies the title word for word ...) gives a ``plain`` tip
instead, so the fallback is never unguarded either. The choice is deterministic per
(arm, key, task): the same user sees the same fallback for the same situation.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from . import guard as G

if TYPE_CHECKING:  # pragma: no cover
    from .context import PromptContext

MAX_TITLE_CHARS = 60

LIBRARY: dict[str, dict[str, tuple[str, ...]]] = {
    "focus_block": {
        "task": (
            ('Give "{task}" the next 25 minutes: notifications off, one tab open, nothing '
            "else."),
            ('Silence your phone and close your inbox, then work only on "{task}" until the '
            "timer rings."),
            ('Block the next half hour for "{task}" and let everything else wait until it '
            "ends."),
        ),
        "plain": (
            ("Pick your most important task and give it 25 minutes of undivided attention: "
            "notifications off, one tab open."),
            ("Block the next half hour for one task only and close everything that is not "
            "it."),
            ("Put your phone in another room and work on a single task until a 25-minute "
            "timer rings."),
        ),
    },
    "break_reminder": {
        "task": (
            'Before you go on with "{task}", stand up, stretch and drink a glass of water.',
            ('Step away from "{task}" for five minutes: walk around and rest your eyes, then '
            "come back fresh."),
            'Pause "{task}" for a short break: a few deep breaths and a walk to the window.',
        ),
        "plain": (
            ("Step away for five minutes: stand up, stretch and drink some water before the "
            "next task."),
            ("Take a short break now: a few minutes away from the screen makes the next hour "
            "sharper."),
            ("Stand up, roll your shoulders and look out of a window for a minute before you "
            "carry on."),
        ),
    },
    "task_breakdown": {
        "task": (
            ('Write down the very first step of "{task}" that takes under ten minutes, then '
            "do just that."),
            'Split "{task}" into three small steps and start with the easiest one now.',
            ('Ask yourself what the smallest next action on "{task}" is, and do it before '
            "anything else."),
        ),
        "plain": (
            ("Take your biggest task and write down the very first step that takes under ten "
            "minutes, then do just that."),
            ("Split one vague task into three small, concrete steps and start with the "
            "easiest."),
            ("Pick the task you keep avoiding and name one tiny first step you can finish in "
            "five minutes."),
        ),
    },
    "prioritize": {
        "task": (
            'Make "{task}" your one priority right now and let the rest of the list wait.',
            'Move "{task}" to the top of your list and do it first, before anything new.',
            ('Choose "{task}" as the task that matters most today and set the others aside '
            "for now."),
        ),
        "plain": (
            ("Choose the one task that would make today a success, move it to the top and "
            "let the rest wait."),
            ("Look at your list and mark the single most important task; everything else "
            "comes after it."),
            ("Ask which task matters most if you only finish one today, and start that one "
            "first."),
        ),
    },
    "plan_tomorrow": {
        "task": (
            ('Before you stop today, write down "{task}" as the first thing to do tomorrow '
            "morning."),
            ('Plan tomorrow now: put "{task}" first on the list so the day starts with a '
            "clear step."),
            ('Decide tonight when tomorrow you will work on "{task}" and put it in your '
            "calendar."),
        ),
        "plain": (
            ("Before you stop today, write down the first task for tomorrow so you can start "
            "without deciding."),
            ("Spend two minutes now picking tomorrow's top three tasks and put the hardest "
            "first."),
            ("Close the day by writing tomorrow's plan in one line: the first task and when "
            "you will start it."),
        ),
    },
}
GENERAL = {
    "task": (
        'Pick one small piece of "{task}" you can finish in ten minutes and do it now.',
        'Start "{task}" with a single concrete step and keep going for ten focused minutes.',
    ),
    "plain": (
        "Pick one small task you can finish in the next ten minutes and do it now.",
        ("Choose the most important task on your list and spend the next 25 minutes only on "
        "it."),
    ),
}


def templates(arm: str) -> dict[str, tuple[str, ...]]:
    return LIBRARY.get(arm, GENERAL)


def _index(arm: str, key: str, salt: str, n: int) -> int:
    h = hashlib.sha256(f"{arm}\x00{key}\x00{salt}".encode()).digest()
    return int.from_bytes(h[:4], "big") % n


def plain(arm: str, key: str = "") -> str:
    """A context-free fallback for ``arm``; the same (arm, key) always gives the same."""
    tips = templates(arm)["plain"]
    return tips[_index(arm, key, "", len(tips))] if key else tips[0]


def pick(arm: str, ctx: PromptContext | None, key: str = "",
         bound: G.Bound | None = None) -> str:
    """The fallback tip for ``arm`` in ``ctx``: one naming the most urgent task when the
    context has one and the filled text passes the guard, else a ``plain`` one."""
    tasks = getattr(ctx, "tasks", ()) if ctx is not None else ()
    if tasks:
        title = tasks[0].title.strip().rstrip(".!?;:,")
        if 0 < len(title) <= MAX_TITLE_CHARS:
            tips = templates(arm)["task"]
            b = bound or G.bind(ctx, arm)
            start = _index(arm, key, title, len(tips))
            for j in range(len(tips)):
                text = tips[(start + j) % len(tips)].format(task=title)
                if b.check(text).ok:
                    return text
    return plain(arm, key)

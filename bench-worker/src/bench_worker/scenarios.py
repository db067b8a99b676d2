"""Fixed, seeded bench scenarios: personas × time slots (as in the seeds' tip-bench).

Every cell of a bench job sees exactly the same inputs for a given ``(seed, index)``,
so quality differences between models and prompts are attributable. The order is a
seeded permutation of the catalogue, and ``build(n, seed)`` is a prefix of
``build(12, seed)``: a job with more scenarios extends, never reshuffles, a smaller one.

Each scenario is a wire-contract :class:`~tipsml.contract.Context` (hour, weekday,
tasks), profile features (``tipsml.features.PROFILE_SCHEMA`` names) and a tip kind
(arm), plus a neutral description for judges.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tipsml.contract import Context

PERSONAS: dict[str, dict] = {
    "student": {
        "about": "a university student in exam season",
        "profile": {"completion_rate": 0.55, "dismiss_rate": 0.2, "mean_dwell_ms": 9000,
                    "preferred_hour": 10, "tip_volume": 40},
        "tasks": [
            {"id": 1, "title": "Revise linear algebra chapter 4", "priority": 4, "overdue": False,
             "due": "tomorrow"},
            {"id": 2, "title": "Finish lab report draft", "priority": 3, "overdue": True},
            {"id": 3, "title": "Email tutor about extension", "priority": 2, "overdue": False},
        ],
    },
    "engineer": {
        "about": "a software engineer with too many parallel tasks",
        "profile": {"completion_rate": 0.25, "dismiss_rate": 0.5, "mean_dwell_ms": 4000,
                    "preferred_hour": 14, "tip_volume": 300},
        "tasks": [
            {"id": 1, "title": "Fix flaky integration test", "priority": 4, "overdue": True},
            {"id": 2, "title": "Review two pull requests", "priority": 3, "overdue": False},
            {"id": 3, "title": "Write design doc for caching", "priority": 3, "overdue": False,
             "due": "friday"},
            {"id": 4, "title": "Answer on-call handover questions", "priority": 2,
             "overdue": False},
        ],
    },
    "parent": {
        "about": "a freelance designer and parent with a fragmented day",
        "profile": {"completion_rate": 0.4, "dismiss_rate": 0.3, "mean_dwell_ms": 12000,
                    "preferred_hour": 21, "tip_volume": 120},
        "tasks": [
            {"id": 1, "title": "Send invoice to client", "priority": 4, "overdue": True},
            {"id": 2, "title": "Logo sketches for bakery", "priority": 3, "overdue": False,
             "due": "thursday"},
            {"id": 3, "title": "Book pediatrician appointment", "priority": 2, "overdue": False},
        ],
    },
    "manager": {
        "about": "a team manager whose day is full of meetings",
        "profile": {"completion_rate": 0.7, "dismiss_rate": 0.1, "mean_dwell_ms": 20000,
                    "preferred_hour": 8, "tip_volume": 15},
        "tasks": [
            {"id": 1, "title": "Prepare quarterly planning slides", "priority": 4,
             "overdue": False, "due": "tomorrow"},
            {"id": 2, "title": "Give feedback to new hire", "priority": 3, "overdue": False},
            {"id": 3, "title": "Approve budget request", "priority": 2, "overdue": True},
        ],
    },
}

SLOTS: dict[str, int] = {"morning": 9, "afternoon": 15, "evening": 20}
ARMS = ("focus_block", "break_reminder", "task_breakdown", "prioritize", "plan_tomorrow")
SLOT_ARMS = {"morning": ("focus_block", "prioritize", "task_breakdown"),
             "afternoon": ("break_reminder", "task_breakdown", "prioritize"),
             "evening": ("plan_tomorrow", "break_reminder", "prioritize")}
MAX_SCENARIOS = len(PERSONAS) * len(SLOTS)


@dataclass(frozen=True)
class Scenario:
    id: str
    persona: str
    slot: str
    arm: str
    context: Context
    profile_features: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        """What a judge is told about the user (no model, no prompt)."""
        c = self.context
        day = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
               "Sunday")[c.day_of_week]
        tasks = "; ".join(
            f"{t.title} (priority {t.priority}/4{', overdue' if t.overdue else ''})"
            for t in (c.tasks or []))
        return (f"The user is {PERSONAS[self.persona]['about']}. It is {day} "
                f"{c.hour_of_day:02d}:00 ({self.slot}). Open tasks: {tasks}. "
                f"Requested tip kind: {self.arm.replace('_', ' ')}.")

    def to_dict(self) -> dict:
        return {"id": self.id, "persona": self.persona, "slot": self.slot, "arm": self.arm,
                "context": self.context.model_dump(exclude_none=True),
                "profile_features": dict(self.profile_features),
                "description": self.description}


def build(n: int, seed: int = 0) -> list[Scenario]:
    """The first ``n`` scenarios of the seeded order (1 ≤ n ≤ MAX_SCENARIOS)."""
    if not 1 <= n <= MAX_SCENARIOS:
        raise ValueError(f"n_scenarios must be in 1..{MAX_SCENARIOS}")
    rng = random.Random(f"tip-bench-scenarios:{seed}")
    # interleave so every prefix of 4 covers the four personas and mixes slots
    names = list(PERSONAS)
    slots = list(SLOTS)
    pairs = [(names[i % 4], slots[(i + i // 4) % 3]) for i in range(MAX_SCENARIOS)]
    head, tail = pairs[:4], pairs[4:]
    rng.shuffle(head)
    rng.shuffle(tail)
    out = []
    for persona, slot in (head + tail)[:n]:
        p = PERSONAS[persona]
        arm = rng.choice(SLOT_ARMS[slot])
        dow = rng.randrange(0, 5)
        ctx = Context(hour_of_day=SLOTS[slot], day_of_week=dow, tasks=p["tasks"])
        out.append(Scenario(id=f"{persona}@{slot}", persona=persona, slot=slot, arm=arm,
                            context=ctx, profile_features=dict(p["profile"])))
    return out


def by_id(scenario_id: str, n: int, seed: int = 0) -> Scenario:
    for s in build(n, seed):
        if s.id == scenario_id:
            return s
    raise KeyError(scenario_id)

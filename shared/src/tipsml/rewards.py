"""Reaction → reward: the declared table (one place, used by the consumer and the simulator)."""

from __future__ import annotations

REWARD_TABLE: dict[str, float] = {
    "completed": 1.0,   # the user did what the tip suggested
    "accepted": 0.5,    # opened / acknowledged the tip
    "dismissed": 0.0,   # actively rejected
    "ignored": 0.0,     # no reaction within the window
}


def reward_of(reaction: str | None, explicit: float | None) -> float:
    """An explicit reward in [0, 1] wins; otherwise the table's value for the reaction."""
    if explicit is not None:
        return float(explicit)
    if reaction is None:
        raise ValueError("neither reaction nor reward")
    return REWARD_TABLE[reaction]

"""One circuit breaker for every dependency a worker calls (Redis, the LLM server, a
JetStream handler's store).

``failures`` failures in a row open it for ``open_s`` seconds; while open, callers fail
fast (:attr:`CircuitBreaker.is_open`) instead of waiting on a dependency known to be down.
The first call after the window is the probe: a success closes the breaker (the count
starts again from zero), a failure counts toward the next opening.
"""

from __future__ import annotations

import time


class CircuitBreaker:
    __slots__ = ("_failures", "_open_until", "failures", "open_s", "openings")

    def __init__(self, failures: int = 3, open_s: float = 1.0):
        self.failures = max(1, int(failures))
        self.open_s = float(open_s)
        self._failures = 0       # consecutive failures since the last success / opening
        self._open_until = 0.0   # time.monotonic() until which calls fail fast
        self.openings = 0        # observable: how often it opened (tests, metrics)

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def remaining_s(self) -> float:
        """Seconds left until the breaker lets a probe through (0 when closed)."""
        return max(0.0, self._open_until - time.monotonic())

    def success(self) -> None:
        self._failures = 0

    def failure(self) -> bool:
        """Count one failure; True when this one opened the breaker."""
        self._failures += 1
        if self._failures >= self.failures:
            self._open_until = time.monotonic() + self.open_s
            self._failures = 0
            self.openings += 1
            return True
        return False

    def reset(self) -> None:
        self._failures = 0
        self._open_until = 0.0

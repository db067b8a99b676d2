"""Prometheus helpers: one registry per worker, served over HTTP.

Metric names follow ``<service>_<what>_<unit>``.
"""

from __future__ import annotations

import logging
from bisect import bisect_left

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)

# buckets for request latency in seconds: dense under 10 ms where the scorer lives
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> int | None:
    """Serve ``registry`` on ``port`` (0 = a free port, <0 = disabled); returns the port."""
    if port is None or port < 0:
        return None
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server.server_port


class Children:
    """Labelled children of one metric, looked up once per label tuple.

    ``metric.labels(...)`` validates and locks on every call; on the scorer's hot path
    (five label lookups per decision) a dict lookup is several times cheaper. A counter's
    or histogram's child comes back as a :class:`FastCount` / :class:`FastHistogram` when
    the client library keeps its values as it does today (checked per child): ``inc`` and
    ``observe`` then skip the library's checks and lock (issue 12; meant for the one
    thread that increments them, the event loop's — a scrape from the HTTP thread reads
    a float, before or after an increment)."""

    __slots__ = ("metric", "_cache")

    def __init__(self, metric):
        self.metric = metric
        self._cache: dict[tuple, object] = {}

    def __call__(self, *labels):
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = _fast(self.metric.labels(*labels))
        return child


def _plain_value(v) -> bool:
    """Whether ``v`` is prometheus_client's in-process value (a float under a lock)."""
    return type(v).__name__ == "MutexValue" and type(getattr(v, "_value", None)) is float


class FastCount:
    """A counter child's ``inc``, without the library's checks and lock."""

    __slots__ = ("_v", "child")

    def __init__(self, child):
        self.child = child
        self._v = child._value

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self._v._value += amount


class FastHistogram:
    """A histogram child's ``observe``: the bucket by bisection, no locks."""

    __slots__ = ("_bounds", "_buckets", "_sum", "child")

    def __init__(self, child):
        self.child = child
        self._bounds = list(child._upper_bounds)
        self._buckets = list(child._buckets)
        self._sum = child._sum

    def observe(self, amount: float) -> None:
        # the first bucket whose upper bound is >= amount (what the library's loop finds)
        self._buckets[bisect_left(self._bounds, amount)]._value += 1.0
        self._sum._value += amount


def _fast(child):
    try:
        kind = child._type
        if kind == "counter" and _plain_value(child._value):
            return FastCount(child)
        if kind == "histogram" and _plain_value(child._sum) and all(
                _plain_value(b) for b in child._buckets) and \
                len(child._buckets) == len(child._upper_bounds) and \
                child._upper_bounds[-1] == float("inf"):
            return FastHistogram(child)
    except AttributeError:  # another client version: its own inc / observe
        pass
    return child

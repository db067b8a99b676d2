"""Prometheus helpers: one registry per worker, served over HTTP.

Metric names follow ``<service>_<what>_<unit>``.
"""

from __future__ import annotations

import logging

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
    (five label lookups per decision) a dict lookup is several times cheaper."""

    __slots__ = ("metric", "_cache")

    def __init__(self, metric):
        self.metric = metric
        self._cache: dict[tuple, object] = {}

    def __call__(self, *labels):
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self.metric.labels(*labels)
        return child

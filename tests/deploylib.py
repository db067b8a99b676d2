"""Helpers of the deploy tests (tests/ is on sys.path, see tests/conftest.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

from tests.chaoslib import metric


def scrape(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` whose labels include ``labels``, read from a
    worker's real /metrics endpoint."""
    return metric(port, name, timeout=3.0, **labels)


def client_tls(tls_dir) -> ssl.SSLContext:
    """A client TLS context that trusts the CA made by deploy/certs/make-certs.sh in tls_dir."""
    return ssl.create_default_context(cafile=str(Path(tls_dir) / "ca.pem"))

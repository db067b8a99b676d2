"""Helpers of the deploy tests (tests/ is on sys.path, see tests/conftest.py)."""

from __future__ import annotations

import ssl
from pathlib import Path


def scrape(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` whose labels include ``labels``, read from a
    worker's real /metrics endpoint."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total



def client_tls(tls_dir) -> ssl.SSLContext:
    """A client TLS context that trusts the CA made by deploy/certs/make-certs.sh in tls_dir."""
    return ssl.create_default_context(cafile=str(Path(tls_dir) / "ca.pem"))

"""tipsml.metrics.Children: the hot path's counter and histogram children count what the
client library's own inc / observe would (pure logic, no servers)."""

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tipsml.metrics import LATENCY_BUCKETS, Children, FastCount, FastHistogram


def _pair():
    regs = [CollectorRegistry(), CollectorRegistry()]
    cs = [Counter("c_total", "", ["a"], registry=r) for r in regs]
    hs = [Histogram("h_seconds", "", ["s"], buckets=LATENCY_BUCKETS, registry=r) for r in regs]
    return regs, cs, hs


def _samples(reg):
    return sorted((m.name, tuple(sorted(m.labels.items())), m.value)
                  for fam in reg.collect() for m in fam.samples if not m.name.endswith("_created"))


def test_fast_children_count_what_the_library_counts():
    (r_lib, r_fast), (c_lib, c_fast), (h_lib, h_fast) = _pair()
    fc, fh = Children(c_fast), Children(h_fast)
    assert isinstance(fc("x"), FastCount) and isinstance(fh("x"), FastHistogram)
    rng = np.random.default_rng(0)
    # every bucket bound exactly, just above and below it, and beyond the last
    values = [b for b in LATENCY_BUCKETS] + [b * (1 + 1e-9) for b in LATENCY_BUCKETS] + \
        [b * (1 - 1e-9) for b in LATENCY_BUCKETS] + [0.0, 1e6] + \
        list(rng.exponential(0.01, size=2000))
    for i, v in enumerate(values):
        lab = "xyz"[i % 3]
        c_lib.labels(lab).inc(i % 2 + 1)
        fc(lab).inc(i % 2 + 1)
        h_lib.labels(lab).observe(v)
        fh(lab).observe(v)
    assert _samples(r_fast) == _samples(r_lib)


def test_other_metrics_come_back_as_they_are():
    g = Gauge("g", "", ["a"], registry=CollectorRegistry())
    child = Children(g)("1")
    child.set(3.0)
    assert child is g.labels("1")
    try:
        Children(Counter("d_total", "", ["a"], registry=CollectorRegistry()))("1").inc(-1)
    except ValueError:
        pass
    else:
        raise AssertionError("a counter went down")

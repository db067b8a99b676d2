"""bench/chaos_report.py writes what the run measured, nothing else (pure logic)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("chaos_report", ROOT / "bench" /
                                                  "chaos_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SOAK = {"config": {"rate": 250.0, "duration": 60.0, "feedback_fraction": 0.1,
                   "target_p99_ms": 50.0},
        "machine": {"loadavg_start": [1, 1, 1], "loadavg_end": [2, 2, 2], "loadavg_max_1m": 2.5},
        "sent": 15000, "answered": 14990, "p99_under_target": True,
        "overall": {"p50_ms": 1.11, "p99_ms": 12.34, "p999_ms": 40.5, "max_ms": 90.0,
                    "worst_window_p99_ms": 20.2, "errors": 10, "fallbacks": 7,
                    "codes": {"ok": 14983, "fallback": 7}},
        "feedback": {"published": 1500, "outcomes": {"applied": 1498, "expired": 2}, "lost": 2},
        "rss_mb": {"start": {"scorer": 70.0}, "after_warmup": {"scorer": 72.0},
                   "end": {"scorer": 75.5}, "drift_after_warmup": {"scorer": 3.5}}}


def test_every_figure_comes_from_the_records():
    cr = _module()
    rows = [{"scenario": "kill -9 scorer", "requests": 500, "requests_failed": 9,
             "failure_codes": ["unavailable"], "recovered_s": 1.7, "rewards_lost": 3,
             "rewards_doubled": 0, "ts": 1.8e9},
            {"scenario": "fuzz tips.score", "cases": 40, "crashes": 2, "outcomes": {}}]
    md = cr.render(rows, SOAK, 1, True)
    assert "rewards lost 3, double-applied 0; 9 request(s) failed (codes: unavailable)" in md
    assert "**Rewards lost or doubled in**: kill -9 scorer." in md
    assert "40 case(s) over 1 subject(s), 2 crash(es): tips.score 2" in md
    assert "p99 12.34 ms" in md and "14990 of 15000 answered" in md
    assert '"expired": 2' in md and "scorer 3.5 MiB" in md
    # nothing from an earlier run's prose
    for stale in ("Findings", "3.22", "89,864", "d793256", "0.98 ms"):
        assert stale not in md, stale


def test_a_clean_run_says_so_and_an_empty_run_does_not_invent_figures():
    cr = _module()
    clean = [{"scenario": "Redis kill", "requests_failed": 0, "rewards_lost": 0,
              "rewards_doubled": 0, "recovered_s": 0.3}]
    md = cr.render(clean, None, 0, False)
    assert "rewards lost 0, double-applied 0" in md and "Rewards lost or doubled in" not in md
    assert "## Soak" not in md
    empty = cr.render([], None, None, False)
    assert "Faults: no records in this run." in empty and "Soak `" not in empty

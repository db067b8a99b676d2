"""Run the fault + fuzz suites and render their figures.

    .venv/bin/python bench/chaos_report.py            # full: tests/faults + tests/fuzz
    .venv/bin/python bench/chaos_report.py --short    # CI form (`make chaos`): smaller
                                                      # bursts, fewer examples, no LLM
    .venv/bin/python bench/chaos_report.py --no-run   # re-render from the last results

Each fault test records its measurements (``chaoslib.record``) into a JSON-lines file;
this script collects them with the soak results (bench/results/soak.json, written by
bench/soak.py) into ``chaos.json`` and the table ``CHAOS.md`` under ``--out-dir``
(default bench/results; the short form defaults to bench/results/short). The exit code
is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FINDINGS = """## Findings (issue 7)

Fixed (each found by a test here, fixed in its own commit, workers' suites rerun):

1. `StateStore.from_url` used redis-py's default pool, which *raises* `MaxConnectionsError`
   past 100 concurrent calls. The feedback consumer handles a 256-message batch at once:
   ~60 % of a burst was nak'ed for nothing (154 events/s instead of ~3,000; with the real
   backoff those events could reach the dead-letter subject). Now a blocking pool of 64.
2. `tips.score` / `tips.generate` answered `internal` (OverflowError) for a profile feature
   given as an integer beyond float range; it now uses the feature's fallback.
3. `tips.stats` / `tips.reset` answered `internal` when Redis was down; now `unavailable`.

Found here, fixed by their owners (the tests were strict xfails until then):

4. **Rewards lost to a race**: the scorer writes the decision record *after* replying;
   feedback reaching the consumer first was claimed `expired` for good — 27 % of 1,500
   immediate reactions at load average 5, 77 of 89,293 (quiet) and 1,925 of 57,314
   (loaded) in the soaks below, which ran before the fix. Fixed in d793256 (an unknown
   decision is retried for `FEEDBACK_MISSING_GRACE_S`, 10 s, before it counts as expired);
   `test_fault_race.py` now passes with 0 lost.
5. `bench.leaderboard`: deeply nested JSON → `internal`, and no `MAX_PAYLOAD_BYTES` check.
   Fixed in 39acc56.

Raised by these runs and fixed afterwards:

6. Scorer breaker: one Redis read over 25 ms opened a 1 s breaker for every request (36 %
   fallbacks on a loaded machine with a healthy Redis). It now opens after 3 consecutive
   failures, for 0.5 s (`REDIS_BREAKER_FAILURES`, `REDIS_BREAKER_S`).
7. `tips.stats` / `tips.reset` during a Redis freeze waited out the 2 s socket timeout;
   they are now bounded by `ADMIN_REDIS_TIMEOUT_S` (1 s) and answer `unavailable`.
8. The generator's Redis client had the same 100-connection pool problem as finding 1:
   now a blocking pool of 64.
9. A user id `*global*` named the key of global-model policies; global models now live
   under their own prefix (`tips:stg:<policy>`).

Soak (`soak.json`, 10 minutes at 500 req/s, 30 % of decisions get feedback 0–2 s later),
rerun after all the fixes above: 300,000 requests, p50 0.98 ms, p99 3.22 ms,
p99.9 6.97 ms, worst 10 s window p99 6.87 ms, 0 errors, 0 fallbacks; 89,864 rewards
published, 89,864 applied, 0 lost; RSS drift after warm-up scorer 0.7 MiB, consumer
0.7 MiB (load average ≤ 1.45).
Earlier runs, before the fixes (kept for comparison): quiet machine p99 9.0 ms with 77 of
89,293 rewards lost to finding 4; loaded machine (load average 4.5–6.7, `soak_loaded.json`)
p99 58.3 ms, 36 % fallbacks (finding 6), 1,925 rewards lost (finding 4).
Worker RSS is flat (scorer +3–4 MiB, consumer +1–2 MiB after warm-up); Redis and
nats-server grow with the data kept (decision records for the 24 h reward window —
~440 MiB after 300k decisions — and the DECISIONS stream for 30 days; see the capacity
notes in deploy/README.md).
"""


def run_suites(results: Path, short: bool, extra: list[str]) -> int:
    env = dict(os.environ, CHAOS_RESULTS=str(results))
    marker = "slow"
    if short:
        env["CHAOS_SHORT"] = "1"
        env.setdefault("FUZZ_EXAMPLES", "25")
        marker = "slow and not llm"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
           "tests/faults", "tests/fuzz", *extra]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def _fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}{unit}"
    return f"{v}{unit}"


def render(rows: list[dict], soak: dict | None, rc: int | None, short: bool) -> str:
    last: dict[str, dict] = {}
    for r in rows:  # a scenario measured twice (re-run): the last measurement
        last[r["scenario"]] = r
    rows = list(last.values())
    faults = [r for r in rows if not r["scenario"].startswith("fuzz ")]
    fuzz = [r for r in rows if r["scenario"].startswith("fuzz ")]
    out = ["# Chaos, fuzz and soak figures", "",
           (f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
           f"`bench/chaos_report.py{' --short' if short else ''}` (pytest exit code {rc}); "
           "every figure is measured against real nats-server (JetStream, file storage) and "
           "redis-server (AOF) with the workers as separate processes. Machine: "
           f"{os.cpu_count()} cores, shared with other engineers' jobs."), "",
           "## Faults", "",
           ("| fault injected | requests | failed | failure codes | max failed latency | "
           "recovered | rewards lost | rewards double-applied | notes |"),
           "|---|---|---|---|---|---|---|---|---|"]
    for r in faults:
        notes = []
        for k in ("fallback_replies", "p99_during_outage_ms", "stats_during_outage",
                  "publish_retries", "unique_events", "dead_lettered", "sources",
                  "consumer_rss_start_mb", "consumer_rss_peak_mb", "events_per_s",
                  "spurious_retries", "served_decisions_not_recorded", "generate_during_outage",
                  "generate_after_restart", "outcomes"):
            if k in r and r[k] not in (None, 0, {}, []) or k in ("dead_lettered",) and k in r:
                notes.append(f"{k}={r[k]}")
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["scenario"], _fmt(r.get("requests")), _fmt(r.get("requests_failed")),
            ", ".join(r.get("failure_codes") or []) or "–",
            _fmt(r.get("max_failed_latency_ms"), " ms"), _fmt(r.get("recovered_s"), " s"),
            _fmt(r.get("rewards_lost")), _fmt(r.get("rewards_doubled")),
            "; ".join(notes).replace("|", "/")))
    out += ["", ("*recovered*: from the server/worker coming back (or the restart of the "
            "consumer) until the first success / until every event was applied."), "",
            "## Fuzz", "", "| subject | cases tried | crashes | outcomes |", "|---|---|---|---|"]
    for r in fuzz:
        out.append(f"| {r['scenario'][5:]} | {r.get('cases')} | {r.get('crashes')} | "
                   f"{json.dumps(r.get('outcomes'))} |")
    out += ["", ("A crash is: no reply in time, a reply that is not strict JSON with `ok`, an "
            "`internal` error, a rejected message that changed Redis, or a worker restart "
            "(pids are checked after every case).")]
    if soak:
        o, rss = soak["overall"], soak["rss_mb"]
        c, m = soak["config"], soak["machine"]
        out += ["", "## Soak", "",
                (f"`bench/soak.py`: tips.score open loop at {c['rate']:.0f} req/s for "
                f"{c['duration']:.0f} s, feedback on {c['feedback_fraction']:.0%} of decisions."),
                "", "| figure | value |", "|---|---|",
                f"| requests sent / answered | {soak['sent']} / {soak['answered']} |",
                (f"| p50 / p99 / p99.9 / max | {o['p50_ms']} / {o['p99_ms']} / {o['p999_ms']} / "
                f"{o['max_ms']} ms |"),
                f"| worst 10 s window p99 | {o['worst_window_p99_ms']} ms |",
                f"| p99 under {c['target_p99_ms']:.0f} ms | {soak['p99_under_target']} |",
                f"| errors / fallbacks | {o['errors']} / {o['fallbacks']} |",
                f"| reply codes | {json.dumps(o['codes'])} |",
                (f"| feedback published / outcomes | {soak['feedback']['published']} / "
                f"{json.dumps(soak['feedback']['outcomes'])} |"),
                (f"| load average start → end (max 1 min) | {m['loadavg_start']} → "
                f"{m['loadavg_end']} ({m['loadavg_max_1m']}) |")]
        for k in rss["end"]:
            out.append(f"| RSS {k}: start / after warm-up / end (drift) | "
                       f"{rss['start'].get(k)} / {(rss['after_warmup'] or {}).get(k)} / "
                       f"{rss['end'].get(k)} MiB ({rss['drift_after_warmup'].get(k)}) |")
    out += ["", FINDINGS]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--out-dir")
    ap.add_argument("--soak", default=str(ROOT / "bench" / "results" / "soak.json"))
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir or (ROOT / "bench" / "results" / ("short" if args.short else "")))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "chaos.jsonl"
    rc = None
    if args.no_run and (out_dir / "chaos.json").exists():  # keep the last run's exit code
        rc = json.loads((out_dir / "chaos.json").read_text()).get("pytest_exit_code")
    if not args.no_run:
        results.unlink(missing_ok=True)
        rc = run_suites(results, args.short, args.pytest_args)
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()] \
        if results.exists() else []
    soak_path = Path(args.soak)
    soak = json.loads(soak_path.read_text()) if soak_path.exists() else None
    if soak:
        soak = {k: v for k, v in soak.items() if k not in ("samples",)}
    (out_dir / "chaos.json").write_text(json.dumps(
        {"pytest_exit_code": rc, "short": args.short, "faults_and_fuzz": rows,
         "soak": soak}, indent=1))
    (out_dir / "CHAOS.md").write_text(render(rows, soak, rc, args.short))
    print(f"written {out_dir / 'chaos.json'} and {out_dir / 'CHAOS.md'}")
    return rc or 0


if __name__ == "__main__":
    raise SystemExit(main())

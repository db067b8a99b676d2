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

HISTORY_NOTE = ("The bugs these suites found and the fixes are in the git history "
                "(`git log -- tests/faults tests/fuzz bench/results/CHAOS.md`); this file only "
                "holds what the run above measured.")


def summary(faults: list[dict], fuzz: list[dict], soaks: list[tuple[str, dict]]) -> list[str]:
    """The findings of *this* run, every figure taken from its records (nothing fixed)."""
    out = ["## Summary of this run", ""]
    if faults:
        lost = sum(int(r.get("rewards_lost") or 0) for r in faults)
        doubled = sum(int(r.get("rewards_doubled") or 0) for r in faults)
        failed = sum(int(r.get("requests_failed") or 0) for r in faults)
        codes = sorted({c for r in faults for c in (r.get("failure_codes") or [])})
        rec = [(r["recovered_s"], r["scenario"]) for r in faults
               if isinstance(r.get("recovered_s"), (int, float))]
        line = (f"- Faults: {len(faults)} scenario(s); rewards lost {lost}, double-applied "
                f"{doubled}; {failed} request(s) failed"
                + (f" (codes: {', '.join(codes)})" if codes else ""))
        if rec:
            worst = max(rec)
            line += f"; slowest recovery {worst[0]:g} s ({worst[1]})"
        out.append(line + ".")
        bad = [r["scenario"] for r in faults
               if (r.get("rewards_lost") or 0) or (r.get("rewards_doubled") or 0)]
        if bad:
            out.append(f"- **Rewards lost or doubled in**: {'; '.join(bad)}.")
    else:
        out.append("- Faults: no records in this run.")
    if fuzz:
        cases = sum(int(r.get("cases") or 0) for r in fuzz)
        crashes = sum(int(r.get("crashes") or 0) for r in fuzz)
        out.append(f"- Fuzz: {cases} case(s) over {len(fuzz)} subject(s), {crashes} crash(es)"
                   + (": " + "; ".join(f"{r['scenario'][5:]} {r['crashes']}" for r in fuzz
                                       if r.get("crashes")) if crashes else "") + ".")
    for label, soak in soaks:
        o, c, fb = soak.get("overall") or {}, soak.get("config") or {}, soak.get("feedback") or {}
        drift = (soak.get("rss_mb") or {}).get("drift_after_warmup") or {}
        m = soak.get("machine") or {}
        rate = c.get("rate")
        what = (f"{rate:.0f} req/s" if isinstance(rate, (int, float)) else "load") + (
            f" for {c['duration']:.0f} s" if isinstance(c.get("duration"), (int, float)) else "")
        out.append(
            f"- Soak `{label}` ({what}): {soak.get('answered')} of {soak.get('sent')} answered, "
            f"p50 {o.get('p50_ms')} ms, p99 {o.get('p99_ms')} ms, p99.9 {o.get('p999_ms')} ms, "
            f"worst 10 s window p99 {o.get('worst_window_p99_ms')} ms, {o.get('errors')} errors, "
            f"{o.get('fallbacks')} fallbacks; feedback published {fb.get('published')}, outcomes "
            f"{json.dumps(fb.get('outcomes'))}, lost {fb.get('lost')}; RSS drift after "
            "warm-up " + (", ".join(f"{k} {v} MiB" for k, v in drift.items() if v is not None)
                          or "n/a")
            + f" (max 1-min load average {m.get('loadavg_max_1m')}).")
    out += ["", HISTORY_NOTE]
    return out


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


def _measured(rows: list[dict]) -> str:
    ts = [r["ts"] for r in rows if isinstance(r.get("ts"), (int, float))]
    if not ts:
        return ""
    f = "%Y-%m-%d %H:%M UTC"
    return (f" Fault/fuzz records measured {time.strftime(f, time.gmtime(min(ts)))} – "
            f"{time.strftime(f, time.gmtime(max(ts)))}.")


def render(rows: list[dict], soak: dict | None, rc: int | None, short: bool,
           soaks: list[tuple[str, dict]] | None = None) -> str:
    """CHAOS.md from the run's records. ``soak`` gets the detailed table; ``soaks`` (label,
    data) are summarised (``soak`` among them when it is given)."""
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
           f"{os.cpu_count()} cores, shared with other engineers' jobs."
           + _measured(rows)), "",
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
    if soaks is None:
        soaks = [("soak.json", soak)] if soak else []
    out += [""] + summary(faults, fuzz, soaks)
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--out-dir")
    ap.add_argument("--soak", default=str(ROOT / "bench" / "results" / "soak.json"),
                    help="soak results shown in full")
    ap.add_argument("--also-soak", nargs="*", default=[
        str(ROOT / "bench" / "results" / "soak_loaded.json"),
        str(ROOT / "bench" / "results" / "soak_bursty.json")],
        help="other soak results, summarised when the file exists")
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
    soaks = [(soak_path.name, soak)] if soak else []
    for extra in args.also_soak:
        pth = Path(extra)
        if pth.exists() and pth.resolve() != soak_path.resolve():
            try:
                data = json.loads(pth.read_text())
            except ValueError:
                continue
            if isinstance(data, dict) and "overall" in data and "config" in data:
                soaks.append((pth.name, {k: v for k, v in data.items() if k != "samples"}))
    (out_dir / "chaos.json").write_text(json.dumps(
        {"pytest_exit_code": rc, "short": args.short, "faults_and_fuzz": rows,
         "soak": soak}, indent=1))
    (out_dir / "CHAOS.md").write_text(render(rows, soak, rc, args.short, soaks))
    print(f"written {out_dir / 'chaos.json'} and {out_dir / 'CHAOS.md'}")
    return rc or 0


if __name__ == "__main__":
    raise SystemExit(main())

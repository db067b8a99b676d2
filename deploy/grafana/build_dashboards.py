"""Writes the provisioned Grafana dashboards (deploy/grafana/dashboards/*.json).

The JSON files are generated so the five dashboards share one layout and one data
source, and so every query sits in one readable place. Edit this file, then run

    .venv/bin/python deploy/grafana/build_dashboards.py

tests/deploy checks that the JSON files are up to date with this script and that
every PromQL expression below returns data from the real workers.

Metric names come from the workers (``<service>_<what>_<unit>``):
scorer/src/scorer/main.py, generator/src/generator/main.py,
feedback-consumer/src/feedback_consumer/main.py, bench-worker/src/bench_worker/main.py.
Counters are summed over replicas (``docker compose up --scale``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "prometheus"}  # deploy/grafana/provisioning/datasources
RI = "$__rate_interval"
WORKER_JOBS = "scorer|generator|feedback-consumer|bench-worker"


def q(expr: str, legend: str = "", instant: bool = False) -> dict:
    t = {"expr": expr, "legendFormat": legend or "__auto", "datasource": DS}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def p50_p99(metric: str, by: str, where: str = "") -> list[dict]:
    sel = f"{metric}_bucket{{{where}}}" if where else f"{metric}_bucket"
    by_le = f"{by}, le" if by else "le"
    lg = f"{{{{{by}}}}}" if by else ""
    return [q(f"histogram_quantile({qq}, sum by ({by_le}) (rate({sel}[{RI}])))",
              f"p{int(qq * 100)} {lg}".strip()) for qq in (0.5, 0.99)]


class Board:
    def __init__(self, uid: str, title: str, description: str):
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
            self.x = self.row_h = 0
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, kind: str, title: str, targets: list[dict], *, w: int = 12, h: int = 8,
            unit: str = "short", description: str = "", decimals: int | None = None,
            min_: float | None = None, max_: float | None = None, thresholds=None,
            options: dict | None = None) -> None:
        if self.x + w > 24:
            self.y += self.row_h
            self.x = self.row_h = 0
        defaults: dict = {"unit": unit}
        if decimals is not None:
            defaults["decimals"] = decimals
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        if thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": [
                {"color": c, "value": v} for v, c in thresholds]}
        if kind == "timeseries":
            defaults["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
            opts = {"legend": {"displayMode": "table", "placement": "bottom",
                               "showLegend": True, "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind in ("stat", "gauge", "bargauge"):
            opts = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "orientation": "horizontal"}
        else:  # table
            opts = {"showHeader": True}
        opts.update(options or {})
        for i, t in enumerate(targets):
            t["refId"] = chr(ord("A") + i)
        self.panels.append({
            "type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": targets, "options": opts,
            "fieldConfig": {"defaults": defaults, "overrides": []},
        })
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self) -> dict:
        for i, p in enumerate(self.panels, start=1):
            p["id"] = i
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["tips-ml"], "timezone": "browser", "editable": False,
            "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "10s",
            "time": {"from": "now-1h", "to": "now"},
            "templating": {"list": []}, "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["tips-ml"], "asDropdown": True,
                       "title": "Tips ML", "includeVars": False, "keepTime": True}],
            "panels": self.panels,
        }


def serving() -> Board:
    b = Board("tips-serving", "Tips ML / Serving",
              "Request-reply traffic of the scorer (tips.score, tips.stats, tips.reset) and the "
              "generator (tips.generate): throughput, latency, errors, replicas.")
    b.row("Throughput and errors")
    b.add("stat", "tips.score p99 (5m) — budget 50 ms", [
        q('histogram_quantile(0.99, sum by (le) '
          '(rate(scorer_request_latency_seconds_bucket{subject="tips.score"}[5m])))')],
        w=6, h=5, unit="s", decimals=4, thresholds=[(None, "green"), (0.025, "orange"),
                                                    (0.05, "red")])
    b.add("stat", "Error ratio (5m)", [
        q('(sum(rate(scorer_requests_total{code!="ok"}[5m])) or vector(0))'
          ' / sum(rate(scorer_requests_total[5m]))', "scorer"),
        q('(sum(rate(generator_requests_total{code!="ok"}[5m])) or vector(0))'
          ' / sum(rate(generator_requests_total[5m]))', "generator")],
        w=6, h=5, unit="percentunit", decimals=2,
        thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")])
    b.add("stat", "Replicas up", [
        q(f'sum by (job) (up{{job=~"{WORKER_JOBS}"}})', "{{job}}")], w=12, h=5,
        thresholds=[(None, "red"), (1, "green")])
    b.add("timeseries", "Requests/s per subject", [
        q(f"sum by (subject) (rate(scorer_requests_total[{RI}]))", "{{subject}}"),
        q(f"sum by (subject) (rate(generator_requests_total[{RI}]))", "{{subject}}")],
        unit="reqps")
    b.add("timeseries", "Errors/s by subject and code", [
        q(f'sum by (subject, code) (rate(scorer_requests_total{{code!="ok"}}[{RI}]))',
          "{{subject}} {{code}}"),
        q(f'sum by (subject, code) (rate(generator_requests_total{{code!="ok"}}[{RI}]))',
          "{{subject}} {{code}}")],
        unit="reqps", description="Every failed request gets a typed error reply "
                                  "(invalid_request, unknown_policy, ..., internal).")
    b.row("Latency")
    b.add("timeseries", "Scorer latency p50 / p99 per subject",
          p50_p99("scorer_request_latency_seconds", "subject"), unit="s")
    b.add("timeseries", "Generator latency p50 / p99 by tip source",
          p50_p99("generator_request_latency_seconds", "source"), unit="s",
          description="cache: pre-generated candidate; llm: generated on the request path; "
                      "fallback: the LLM missed its deadline.")
    b.add("timeseries", "Tips served/s by source", [
        q(f"sum by (source) (rate(generator_tips_served_total[{RI}]))", "{{source}}")],
        unit="reqps")
    b.add("timeseries", "Candidate cache lookups/s", [
        q(f"sum by (result) (rate(generator_cache_requests_total[{RI}]))", "{{result}}")],
        unit="reqps")
    return b


def learning() -> Board:
    b = Board("tips-learning", "Tips ML / Learning",
              "What the bandits learn: rewards per policy and arm (from the feedback "
              "consumer), exploration, and how often the shadow policies agree with the live one.")
    b.row("Rewards")
    b.add("timeseries", "Mean reward per policy and arm", [
        q(f"sum by (policy, arm) (rate(feedback_reward_sum_total[{RI}]))"
          f" / sum by (policy, arm) (rate(feedback_rewards_applied_total[{RI}]))",
          "{{policy}} / {{arm}}")],
        unit="short", min_=0, max_=1, decimals=3,
        description="Sum of applied rewards / number of applied rewards in the window.")
    b.add("timeseries", "Rewards applied/s per policy and arm", [
        q(f"sum by (policy, arm) (rate(feedback_rewards_applied_total[{RI}]))",
          "{{policy}} / {{arm}}")], unit="ops")
    b.add("bargauge", "Mean reward per policy (time range)", [
        q("sum by (policy) (increase(feedback_reward_sum_total[$__range]))"
          " / sum by (policy) (increase(feedback_rewards_applied_total[$__range]))",
          "{{policy}}")],
        unit="short", min_=0, max_=1, decimals=3)
    b.add("timeseries", "Feedback events/s by outcome", [
        q(f"sum by (outcome) (rate(feedback_events_total[{RI}]))", "{{outcome}}")], unit="ops")
    b.row("Decisions and exploration")
    b.add("timeseries", "Live decisions/s per arm", [
        q(f'sum by (policy, arm) (rate(scorer_decisions_total{{role="live"}}[{RI}]))',
          "{{policy}} / {{arm}}")], unit="ops")
    b.add("timeseries", "Exploration rate (live)", [
        q(f"sum by (policy) (rate(scorer_explored_total[{RI}]))"
          f' / sum by (policy) (rate(scorer_decisions_total{{role="live"}}[{RI}]))',
          "{{policy}}")], unit="percentunit", min_=0,
        description="Share of live decisions that explored (egreedy: about EPSILON).")
    b.add("timeseries", "Shadow vs live agreement", [
        q(f'sum by (policy) (rate(scorer_shadow_agreement_total{{agree="true"}}[{RI}]))'
          f" / sum by (policy) (rate(scorer_shadow_agreement_total[{RI}]))", "{{policy}}")],
        unit="percentunit", min_=0, max_=1,
        description="Share of requests where the shadow policy picked the arm the live "
                    "policy served.")
    b.add("timeseries", "Shadow decisions/s per arm", [
        q(f'sum by (policy, arm) (rate(scorer_decisions_total{{role="shadow"}}[{RI}]))',
          "{{policy}} / {{arm}}")], unit="ops")
    b.add("timeseries", "Feedback processing latency p50 / p99",
          p50_p99("feedback_processing_latency_seconds", ""), unit="s")
    return b


def prompts() -> Board:
    b = Board("tips-prompts", "Tips ML / Prompts",
              "Reward analytics per prompt version: tips served by the generator, and how "
              "users reacted (completed, accepted, dismissed, ignored) per version.")
    served = "sum by (prompt_version) ({f}(generator_prompt_served_total[{w}]))"
    react = ('sum by (prompt_version) ({f}(feedback_reactions_total{{reaction="{r}"}}[{w}]))')
    b.row("Per prompt version")
    b.add("timeseries", "Tips served/s per prompt version", [
        q(served.format(f="rate", w=RI), "{{prompt_version}}")], unit="ops")
    b.add("timeseries", "Reactions/s per prompt version", [
        q(f"sum by (prompt_version, reaction) (rate(feedback_reactions_total[{RI}]))",
          "{{prompt_version}} {{reaction}}")], unit="ops")
    b.add("timeseries", "Completed per served tip", [
        q(react.format(f="rate", r="completed", w=RI) + " / "
          + served.format(f="rate", w=RI), "{{prompt_version}}")],
        unit="percentunit", min_=0)
    b.add("timeseries", "Dismissed per served tip", [
        q(react.format(f="rate", r="dismissed", w=RI) + " / "
          + served.format(f="rate", w=RI), "{{prompt_version}}")],
        unit="percentunit", min_=0)
    b.row("Time range totals")
    b.add("table", "Served, completed, dismissed per version (time range)", [
        q(served.format(f="increase", w="$__range"), "served", instant=True),
        q(react.format(f="increase", r="completed", w="$__range"), "completed", instant=True),
        q(react.format(f="increase", r="dismissed", w="$__range"), "dismissed", instant=True)],
        w=24, h=8, decimals=0,
        options={"showHeader": True},
    )
    b.panels[-1]["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True},
                                       "renameByName": {"Value #A": "served",
                                                        "Value #B": "completed",
                                                        "Value #C": "dismissed"}}}]
    b.add("bargauge", "Completion rate per version (time range)", [
        q(react.format(f="increase", r="completed", w="$__range") + " / "
          + served.format(f="increase", w="$__range"), "{{prompt_version}}")],
        unit="percentunit", min_=0, max_=1)
    b.add("bargauge", "Dismiss rate per version (time range)", [
        q(react.format(f="increase", r="dismissed", w="$__range") + " / "
          + served.format(f="increase", w="$__range"), "{{prompt_version}}")],
        unit="percentunit", min_=0, max_=1)
    return b


def bench() -> Board:
    b = Board("tips-bench", "Tips ML / Bench",
              "Offline experiments (bench.run → cells → MLflow): job and cell progress of the "
              "bench workers. Leaderboards themselves live in MLflow and bench.leaderboard.")
    b.row("Jobs and cells")
    b.add("stat", "Cells in progress", [q("sum(bench_cells_in_progress)")], w=6, h=5)
    b.add("stat", "Cells done (time range)", [
        q('sum(increase(bench_cells_total{outcome=~"done|recovered"}[$__range])) or vector(0)')],
        w=6, h=5, decimals=0)
    b.add("bargauge", "Jobs by outcome (time range)", [
        q("sum by (outcome) (increase(bench_jobs_total[$__range]))", "{{outcome}}")],
        w=12, h=5, decimals=0)
    b.add("timeseries", "Cells/s by outcome", [
        q(f"sum by (outcome) (rate(bench_cells_total[{RI}]))", "{{outcome}}")], unit="ops")
    b.add("timeseries", "Handler latency p50 / p99 per subject",
          p50_p99("bench_handler_latency_seconds", "subject"), unit="s")
    b.add("timeseries", "Cell duration p50 / p99 (generate + judge + log)",
          p50_p99("bench_cell_duration_seconds", ""), unit="s",
          description="Only finished cells are timed.")
    b.add("stat", "Bench workers up", [q('sum(up{job="bench-worker"})')], w=6, h=8,
          thresholds=[(None, "red"), (1, "green")])
    return b


def reliability() -> Board:
    b = Board("tips-reliability", "Tips ML / Reliability",
              "Exactly-once and fault handling: duplicate and expired rewards, retries and dead "
              "letters, fallbacks of the scorer (state store) and the generator (LLM).")
    b.row("Feedback")
    b.add("timeseries", "Duplicates / already rewarded /s", [
        q(f'sum by (outcome) (rate(feedback_events_total{{outcome=~"duplicate|already_rewarded"}}'
          f"[{RI}]))", "{{outcome}}")], unit="ops",
          description="Redelivered or re-sent events recognised by event_id; state untouched.")
    b.add("timeseries", "Expired / unknown / mismatched rewards /s", [
        q(f'sum by (outcome) (rate(feedback_events_total{{outcome=~"expired|mismatch"}}'
          f"[{RI}]))", "{{outcome}}")], unit="ops",
          description="Rewards for a decision that is unknown, past REWARD_WINDOW_S, or of "
                      "another user: counted and dropped.")
    b.add("timeseries", "Dead letters and retries /s", [
        q(f'sum by (outcome) (rate(feedback_events_total{{outcome=~"invalid|dead_lettered|retry"}}'
          f"[{RI}]))", "feedback {{outcome}}"),
        q(f'sum by (outcome) (rate(generator_signals_total{{outcome=~"poison|exhausted|retry"}}'
          f"[{RI}]))", "signals {{outcome}}")], unit="ops",
          description="invalid/poison: dead-lettered at once; dead_lettered/exhausted: after "
                      "max_deliver; retry: nak'ed with a delay (Redis or LLM unavailable).")
    b.add("stat", "Dead letters (time range)", [
        q('sum(increase(feedback_events_total{outcome=~"invalid|dead_lettered"}[$__range]))',
          "feedback"),
        q('sum(increase(generator_signals_total{outcome=~"poison|exhausted"}[$__range]))',
          "signals")], w=12, h=8, decimals=0,
        thresholds=[(None, "green"), (1, "orange")])
    b.row("Fallbacks")
    b.add("timeseries", "LLM fallbacks/s by reason (generator)", [
        q(f"sum by (reason) (rate(generator_fallback_total[{RI}]))", "{{reason}}")], unit="ops",
          description="Tips served from the static fallback set because the LLM missed its "
                      "deadline or failed.")
    b.add("timeseries", "Scorer uniform fallbacks/s by reason", [
        q(f"sum by (reason) (rate(scorer_fallback_total[{RI}]))", "{{reason}}")], unit="ops",
          description="Decisions made uniformly at random because the state store (Redis) "
                      "did not answer within SCORER_REDIS_TIMEOUT_S.")
    b.add("timeseries", "Decision log: queue, drops, write errors", [
        q("sum(scorer_decision_log_queue)", "queued"),
        q(f"sum(rate(scorer_decision_log_dropped_total[{RI}]))", "dropped/s"),
        # zero until the first failed write: the series appears only then
        q(f"sum by (sink) (rate(scorer_decision_log_errors_total[{RI}])) or vector(0)",
          "write errors/s {{sink}}")],
        unit="short")
    b.add("timeseries", "Feedback fetch errors/s", [
        q(f"sum(rate(feedback_fetch_errors_total[{RI}]))", "fetch errors")], unit="ops",
          description="Pull requests on FEEDBACK that failed (NATS down or reconnecting).")
    b.row("Targets")
    b.add("timeseries", "Scrape targets up", [
        q(f'sum by (job) (up{{job=~"{WORKER_JOBS}"}})', "{{job}}")], w=24, unit="short",
          description="Replicas answering Prometheus, per worker (compose --scale).")
    return b


BOARDS = {"serving": serving, "learning": learning, "prompts": prompts, "bench": bench,
          "reliability": reliability}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(fn().json(), indent=2) + "\n"
            for name, fn in BOARDS.items()}


def main(argv: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for fname, text in render().items():
        (OUT / fname).write_text(text)
        print(f"wrote {OUT / fname}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

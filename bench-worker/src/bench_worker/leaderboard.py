"""Leaderboard by (model, prompt) from the cell runs' metrics, with bootstrap CIs and a
paired comparison of the top two; a PNG chart with error bars.

Each cell run is one scenario (a cluster of ``n_tips`` candidates). A row's mean is
the pooled mean composite over every judged candidate; its 95% CI resamples cells
(scenarios). The paired comparison uses the scenarios both of the top two rows ran
(same job, same scenario id), per-scenario mean composite differences, bootstrapped.

Judge source per run (``judge``): ``llm``, ``human``, or ``auto`` (human scores where
a human judged the run, otherwise the LLM judge's).
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from bench_worker import stats
from tipsml import rubric as R

JUDGES = ("auto", "llm", "human")


def run_summary(run) -> dict:
    """The fields of an MLflow cell run the leaderboard needs (plain dict)."""
    t, m = run.data.tags, run.data.metrics
    return {"run_id": run.info.run_id, "job_id": t.get("job_id"), "cell_key": t.get("cell_key"),
            "model": t.get("model"), "prompt": t.get("prompt"), "scenario": t.get("scenario"),
            "judge_pending": t.get("judge_pending") == "true",
            "start_time": run.info.start_time, "metrics": dict(m)}


def _source(r: dict, judge: str) -> str | None:
    m = r["metrics"]
    has_h = m.get("human_n_judged", 0) > 0
    has_l = "n_judged" in m
    if judge == "human":
        return "human_" if has_h else None
    if judge == "llm":
        return "" if has_l else None
    return "human_" if has_h else ("" if has_l else None)


def compute(runs: list[dict], judge: str = "auto", b: int = stats.DEFAULT_B,
            seed: int = 0) -> dict:
    if judge not in JUDGES:
        raise ValueError(f"judge must be one of {JUDGES}")
    # one run per cell (the earliest finished one, should a duplicate ever exist)
    by_cell: dict[str, dict] = {}
    for r in sorted(runs, key=lambda r: r["start_time"]):
        by_cell.setdefault(r["cell_key"], r)
    groups: dict[tuple[str, str], list[tuple[dict, str | None]]] = defaultdict(list)
    for r in by_cell.values():
        groups[(r["model"], r["prompt"])].append((r, _source(r, judge)))
    rows = []
    for (model, prompt), items in groups.items():
        clusters, units = [], {}
        crit = {c: [0.0, 0] for c in R.CRITERIA}
        n_failed = pending = 0
        fmt, over, lat, ncand = 0.0, 0.0, 0.0, 0
        sources = set()
        for r, src in items:
            m = r["metrics"]
            nc = int(m.get("n_candidates", 0))
            ncand += nc
            fmt += m.get("format_ok_rate", 0.0) * nc
            over += m.get("overlong_rate", 0.0) * nc
            lat += m.get("latency_ms_mean", 0.0) * nc
            pending += int(r["judge_pending"])
            if src is None:
                continue
            sources.add("human" if src else "llm")
            n = int(m.get(f"{src}n_judged", 0))
            n_failed += int(m.get(f"{src}n_judge_failed", 0))
            if n == 0:
                continue
            s = m[f"{src}composite_sum"]
            clusters.append((s, n))
            units[(r["job_id"], r["scenario"])] = s / n
            for c in R.CRITERIA:
                crit[c][0] += m[f"{src}{c}_mean"] * n
                crit[c][1] += n
        mean, lo, hi = stats.cluster_bootstrap_ci(clusters, b=b, seed=seed)
        rows.append({
            "model": model, "prompt": prompt, "n": sum(n for _, n in clusters),
            "n_cells": len(items), "n_scenarios": len(units), "n_candidates": ncand,
            "n_judge_failed": n_failed, "n_pending": pending,
            "mean_composite": mean, "ci_low": lo, "ci_high": hi,
            **{f"{c}_mean": (v[0] / v[1] if v[1] else None) for c, v in crit.items()},
            "format_ok_rate": fmt / ncand if ncand else None,
            "overlong_rate": over / ncand if ncand else None,
            "latency_ms_mean": lat / ncand if ncand else None,
            "judge_source": "+".join(sorted(sources)) or None,
            "_units": units,
        })
    rows.sort(key=lambda r: (r["mean_composite"] is None, -(r["mean_composite"] or 0.0),
                             r["model"], r["prompt"]))
    comparison = None
    ranked = [r for r in rows if r["mean_composite"] is not None]
    if len(ranked) >= 2:
        a, bb = ranked[0], ranked[1]
        common = sorted(set(a["_units"]) & set(bb["_units"]))
        pb = stats.paired_bootstrap([a["_units"][k] for k in common],
                                    [bb["_units"][k] for k in common], b=b, seed=seed)
        comparison = {"a": {"model": a["model"], "prompt": a["prompt"]},
                      "b": {"model": bb["model"], "prompt": bb["prompt"]},
                      "n_scenarios": pb["n"], "diff": pb["diff"], "ci_low": pb["ci_low"],
                      "ci_high": pb["ci_high"], "p_le_0": pb["p_le_0"]}
    for r in rows:
        r.pop("_units")
    return {"rubric": R.VERSION, "judge": judge, "rows": rows, "comparison": comparison,
            "n_runs": len(by_cell), "bootstrap": {"b": b, "seed": seed, "level": 0.95,
                                                  "unit": "cell (scenario)"}}


def chart(board: dict, title: str = "tip-bench leaderboard"):
    """A matplotlib figure: mean composite per (model, prompt) with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in board["rows"] if r["mean_composite"] is not None][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * max(2, len(rows)) + 1.2), dpi=110)
    if rows:
        ys = range(len(rows))
        means = [r["mean_composite"] for r in rows]
        err = [[m - r["ci_low"] for m, r in zip(means, rows)],
               [r["ci_high"] - m for m, r in zip(means, rows)]]
        ax.barh(list(ys), means, xerr=err, capsize=4, color="#4c78a8", alpha=0.85)
        ax.set_yticks(list(ys))
        ax.set_yticklabels([f"{r['model']} × {r['prompt']} (n={r['n']})" for r in rows],
                           fontsize=8)
    ax.set_xlim(0, R.COMPOSITE_RANGE[1])
    ax.set_xlabel(f"mean composite ({R.VERSION}, range {R.COMPOSITE_RANGE[0]}–"
                  f"{R.COMPOSITE_RANGE[1]}), 95% bootstrap CI")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def chart_png(board: dict, title: str = "tip-bench leaderboard") -> bytes:
    import matplotlib.pyplot as plt

    fig = chart(board, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def format_table(board: dict) -> str:
    """The leaderboard as a fixed-width text table (CLI)."""
    def f(x, nd=2):
        return "-" if x is None else f"{x:.{nd}f}"
    lines = [(f"{'#':>2}  {'model':<28} {'prompt':<14} {'n':>4} {'mean':>6} {'95% CI':>15} "
              f"{'rel':>5} {'act':>5} {'tone':>5} {'fmt':>5} {'fail':>4}")]
    for i, r in enumerate(board["rows"], 1):
        ci = f"[{f(r['ci_low'])}, {f(r['ci_high'])}]"
        lines.append(f"{i:>2}  {r['model'][:28]:<28} {r['prompt'][:14]:<14} {r['n']:>4} "
                     f"{f(r['mean_composite']):>6} {ci:>15} {f(r['relevance_mean']):>5} "
                     f"{f(r['actionability_mean']):>5} {f(r['tone_mean']):>5} "
                     f"{f(r['format_ok_rate']):>5} {r['n_judge_failed']:>4}")
    c = board.get("comparison")
    if c:
        lines.append(
            f"top two: {c['a']['model']}×{c['a']['prompt']} − {c['b']['model']}×"
            f"{c['b']['prompt']} = {f(c['diff'])} on {c['n_scenarios']} paired scenarios, "
            f"95% CI [{f(c['ci_low'])}, {f(c['ci_high'])}], P(diff≤0)={f(c['p_le_0'])}")
    return "\n".join(lines)


def summary_metrics(board: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, r in enumerate(board["rows"], 1):
        out[f"rank{i}_mean_composite"] = r["mean_composite"]
    return out

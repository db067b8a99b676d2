"""One bench cell: generate ``n_tips`` candidates for (model, prompt, scenario), judge
them blind, and build the MLflow record. No NATS, no Redis here (the worker wires it)."""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench_worker import scenarios as SC
from bench_worker.job import BenchJob, Cell
from bench_worker.judge import LLMJudge
from tipsml import prompts as P
from tipsml import rubric as R
from tipsml.context import assemble
from tipsml.llm import LLMClient, postprocess


def candidate_id(cell_key: str, i: int) -> str:
    """Opaque id shown to judges (says nothing about model or prompt)."""
    return "c" + hashlib.sha256(f"tip-bench:{cell_key}:{i}".encode()).hexdigest()[:15]


@dataclass
class CellRecord:
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float]
    artifacts: dict[str, Any]
    table: dict[str, list]
    run_name: str
    candidates: list[dict] = field(default_factory=list)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def score_metrics(scores: list[dict], prefix: str = "") -> dict[str, float]:
    """Per-criterion means, rates, composite mean/sum and counts of a list of Score dicts."""
    judged = [s for s in scores if s.get("composite") is not None]
    m: dict[str, float] = {
        f"{prefix}n_judged": float(len(judged)),
        f"{prefix}n_judge_failed": float(sum(1 for s in scores if s.get("judge_failed"))),
    }
    if judged:
        for c in R.CRITERIA:
            m[f"{prefix}{c}_mean"] = statistics.fmean(s[c] for s in judged)
        m[f"{prefix}composite_mean"] = statistics.fmean(s["composite"] for s in judged)
        m[f"{prefix}composite_sum"] = float(sum(s["composite"] for s in judged))
    else:
        m[f"{prefix}composite_sum"] = 0.0
    return m


async def run_cell(job: BenchJob, cell: Cell, gen: LLMClient, judge: LLMJudge | None, *,
                   llm_timeout_s: float, keep_alive: int | str | None = 0,
                   judge_model: str | None = None, on_step=None) -> CellRecord:
    """Generate and (when the job's judge includes the LLM) judge one cell.

    Raises :class:`tipsml.llm.LLMError` on transport failures (the caller retries the
    whole cell); a judge that answers badly is recorded as judge-failed, not raised.
    """
    scen = SC.by_id(cell.scenario, job.n_scenarios, job.seed)
    pv = P.get(cell.prompt)
    ctx = assemble(scen.context, scen.profile_features)
    messages = pv.render(ctx, scen.arm)
    t0 = time.perf_counter()
    cands: list[dict] = []
    for i in range(job.n_tips):
        res = await gen.complete(messages, model=cell.model, temperature=job.temperature,
                                 max_tokens=job.max_tokens, timeout=llm_timeout_s,
                                 keep_alive=keep_alive, seed=job.seed * 1000 + i)
        text = R.clean(res.text)
        cands.append({
            "candidate_id": candidate_id(cell.key, i), "i": i, "text": text,
            "raw": res.text, "served_text": postprocess(res.text).text,
            "latency_ms": round(res.latency_ms, 1), "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens, "finish_reason": res.finish_reason,
            "format_ok": R.format_ok(text), "overlong": R.overlong(text),
        })
        if on_step:
            await on_step()
    gen_s = time.perf_counter() - t0
    judge_ms = []
    use_llm_judge = judge is not None and job.judge in ("llm", "both")
    for c in cands:
        if use_llm_judge:
            jr = await judge.judge(scen.description, c["text"])
            c["llm_score"] = jr.score.model_dump()
            c["llm_judge_attempts"] = jr.attempts
            judge_ms.append(jr.latency_ms)
            if on_step:
                await on_step()
        else:
            c["llm_score"] = None
    scores = [c["llm_score"] for c in cands if c["llm_score"]]
    metrics: dict[str, float] = {
        "n_candidates": float(len(cands)),
        "format_ok_rate": _mean([float(c["format_ok"]) for c in cands]),
        "overlong_rate": _mean([float(c["overlong"]) for c in cands]),
        "latency_ms_mean": _mean([c["latency_ms"] for c in cands]),
        "prompt_tokens_mean": _mean([c["prompt_tokens"] for c in cands]),
        "completion_tokens_mean": _mean([c["completion_tokens"] for c in cands]),
        "generate_s": gen_s,
    }
    if use_llm_judge:
        metrics.update(score_metrics(scores))
        metrics["judge_latency_ms_mean"] = _mean(judge_ms)
    pending = job.judge in ("human", "both")
    tags = {"job_id": cell.job_id, "cell_key": cell.key, "cell_n": str(cell.n),
            "phase": str(cell.phase), "model": cell.model, "prompt": cell.prompt,
            "prompt_hash": pv.hash, "scenario": cell.scenario, "rubric": R.VERSION,
            "judge": job.judge, "judge_pending": "true" if pending else "false",
            "llm_judged": "true" if use_llm_judge else "false"}
    params = {"model": cell.model, "prompt_version": cell.prompt, "prompt_hash": pv.hash,
              "scenario": cell.scenario, "persona": scen.persona, "slot": scen.slot,
              "arm": scen.arm, "temperature": job.temperature, "seed": job.seed,
              "n_tips": job.n_tips, "max_tokens": job.max_tokens, "n_scenarios": job.n_scenarios,
              "judge": job.judge, "judge_model": judge_model if use_llm_judge else "",
              "rubric_version": R.VERSION, "rubric_hash": R.RUBRIC_HASH, "job_id": cell.job_id,
              "keep_alive": keep_alive}
    table = {
        "candidate_id": [c["candidate_id"] for c in cands],
        "text": [c["text"] for c in cands],
        "format_ok": [c["format_ok"] for c in cands],
        "overlong": [c["overlong"] for c in cands],
        **{f"llm_{k}": [(c["llm_score"] or {}).get(k) for c in cands]
           for k in (*R.CRITERIA, "composite", "judge_failed")},
        "latency_ms": [c["latency_ms"] for c in cands],
    }
    artifacts = {
        "rubric.json": R.RUBRIC,
        "scenario.json": scen.to_dict(),
        "prompt_messages.json": {"prompt_version": pv.version, "prompt_hash": pv.hash,
                                 "messages": messages},
        "candidates.json": {"cell": cell.to_dict(), "candidates": cands},
    }
    return CellRecord(tags=tags, params=params, metrics=metrics, artifacts=artifacts,
                      table=table, run_name=f"{cell.model} | {cell.prompt} | {cell.scenario}",
                      candidates=cands)

"""Human / external judge (the seeds' Phase B): export pending candidates as JSON,
apply the scored JSON back to the MLflow runs, validated against rubric tip-v1.

Export file (blind: no model, no prompt, opaque ids, a hash order)::

    {"format": "tip-bench-judge-export/1", "experiment": ..., "rubric": {...},
     "instructions": ..., "items": [{"candidate_id", "situation", "tip",
     "format_ok", "overlong"}]}

Apply file::

    {"rubric": "tip-v1", "experiment": ..., "judge": "alice",
     "scores": [{"candidate_id", "relevance", "actionability", "tone", "note"?}]}

When the LLM judge also scored the candidates, :func:`agreement` reports weighted
kappa (quadratic) and Spearman per criterion and Spearman of the composites.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench_worker import stats
from bench_worker.runner import score_metrics
from tipsml import rubric as R
from tipsml.contract import ContractError, ErrorCode, describe_validation_error

EXPORT_FORMAT = "tip-bench-judge-export/1"


class HumanScore(R.JudgeScores):
    model_config = ConfigDict(extra="forbid", strict=True)

    candidate_id: str = Field(min_length=1, max_length=64)
    note: str | None = Field(default=None, max_length=2000)


class HumanScoreFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    rubric: Literal["tip-v1"]
    experiment: str = Field(min_length=1, max_length=100)
    judge: str = Field(default="human", min_length=1, max_length=64)
    scores: list[HumanScore] = Field(min_length=1, max_length=100_000)

    @field_validator("scores")
    @classmethod
    def _unique(cls, v: list[HumanScore]) -> list[HumanScore]:
        ids = [s.candidate_id for s in v]
        if len(set(ids)) != len(ids):
            raise ValueError("candidate_id values must be unique")
        return v


def parse_scores_file(data: dict) -> HumanScoreFile:
    try:
        return HumanScoreFile.model_validate(data)
    except ValidationError as e:
        raise ContractError(ErrorCode.invalid_request,
                            f"scores file does not match rubric {R.VERSION}: "
                            f"{describe_validation_error(e)}") from None


def _candidates(tracker, experiment: str, job_id: str | None):
    for run in tracker.cell_runs(experiment, job_id=job_id):
        doc = tracker.load_json(run.info.run_id, "candidates.json")
        scen = tracker.load_json(run.info.run_id, "scenario.json")
        yield run, doc, scen


def export(tracker, experiment: str, *, job_id: str | None = None,
           only_pending: bool = True) -> dict:
    items = []
    for run, doc, scen in _candidates(tracker, experiment, job_id):
        if only_pending and run.data.tags.get("judge_pending") != "true":
            continue
        human = _human_scores(tracker, run)
        for c in doc["candidates"]:
            if only_pending and c["candidate_id"] in human:
                continue
            items.append({"candidate_id": c["candidate_id"], "situation": scen["description"],
                          "tip": c["text"], "format_ok": c["format_ok"],
                          "overlong": c["overlong"]})
    items.sort(key=lambda x: x["candidate_id"])  # a hash order: blind to model and prompt
    return {"format": EXPORT_FORMAT, "experiment": experiment, "job_id": job_id,
            "rubric": R.RUBRIC, "instructions": (
                R.describe() + "\nFill a scores file: {\"rubric\": \"tip-v1\", \"experiment\": "
                f"\"{experiment}\", \"judge\": \"<your name>\", \"scores\": [{{\"candidate_id\": "
                "..., \"relevance\": 1-5, \"actionability\": 1-5, \"tone\": 1-5}]}. format_ok and "
                "overlong are computed; do not score them."),
            "items": items}


def _human_scores(tracker, run) -> dict[str, dict]:
    if run.data.tags.get("human_judged") != "true":
        return {}
    try:
        return tracker.load_json(run.info.run_id, "human_scores.json")["scores"]
    except Exception:  # noqa: BLE001 - no artifact yet
        return {}


def apply(tracker, data: dict) -> dict:
    """Validate and write human scores into their runs; returns a summary + agreement."""
    f = parse_scores_file(data)
    wanted = {s.candidate_id: s for s in f.scores}
    seen: set[str] = set()
    pairs: list[tuple[dict, dict]] = []
    updated = 0
    plan = []
    for run, doc, _scen in _candidates(tracker, f.experiment, None):
        mine = [c for c in doc["candidates"] if c["candidate_id"] in wanted]
        if mine:
            plan.append((run, doc, mine))
            seen.update(c["candidate_id"] for c in mine)
    unknown = sorted(set(wanted) - seen)
    if unknown:  # refuse the whole file: nothing half-applied
        raise ContractError(ErrorCode.not_found,
                            f"{len(unknown)} candidate_id(s) not in experiment "
                            f"{f.experiment!r}: {', '.join(unknown[:5])}")
    for run, doc, mine in plan:
        human = _human_scores(tracker, run)
        for c in mine:
            s = wanted[c["candidate_id"]]
            human[c["candidate_id"]] = R.Score.of(c["text"], f"human:{f.judge}", s).model_dump() \
                | ({"note": s.note} if s.note else {})
        all_ids = [c["candidate_id"] for c in doc["candidates"]]
        complete = all(cid in human for cid in all_ids)
        m = score_metrics([human[c] for c in all_ids if c in human], prefix="human_")
        tags = {"human_judged": "true", "human_judge": f.judge,
                "human_complete": "true" if complete else "false"}
        if complete:
            tags["judge_pending"] = "false"
        tracker.update_run(run.info.run_id, metrics=m, tags=tags,
                           artifacts={"human_scores.json": {"rubric": R.VERSION,
                                                            "scores": human}})
        updated += 1
        for c in doc["candidates"]:
            if c["candidate_id"] in human and (c.get("llm_score") or {}).get("composite") \
                    is not None:
                pairs.append((c["llm_score"], human[c["candidate_id"]]))
    return {"ok": True, "experiment": f.experiment, "applied": len(wanted),
            "runs_updated": updated, "agreement": agreement(pairs)}


def agreement(pairs: list[tuple[dict, dict]]) -> dict:
    """LLM vs human on the candidates both scored (judge-failed LLM scores excluded)."""
    out: dict = {"n": len(pairs)}
    for c in R.CRITERIA:
        a = [p[0][c] for p in pairs]
        b = [p[1][c] for p in pairs]
        out[c] = {"weighted_kappa": stats.weighted_kappa(a, b) if pairs else None,
                  "spearman": stats.spearman(a, b)}
    out["composite"] = {"spearman": stats.spearman([p[0]["composite"] for p in pairs],
                                                   [p[1]["composite"] for p in pairs])}
    return out


def experiment_agreement(tracker, experiment: str, job_id: str | None = None) -> dict:
    pairs = []
    for run, doc, _ in _candidates(tracker, experiment, job_id):
        human = _human_scores(tracker, run)
        for c in doc["candidates"]:
            h = human.get(c["candidate_id"])
            llm = c.get("llm_score") or {}
            if h and llm.get("composite") is not None:
                pairs.append((llm, h))
    return agreement(pairs)

"""Pure logic: rubric, statistics, job validation, scenarios, judge parsing, human files,
leaderboard arithmetic. No servers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench_worker import human, stats
from bench_worker import leaderboard as LB
from bench_worker import scenarios as SC
from bench_worker.job import BenchJob, model_size_b, parse_parameter_size, validate
from bench_worker.judge import LLMJudge, judge_messages, parse_scores, response_format_for
from tipsml import rubric as R
from tipsml.contract import ContractError, ErrorCode

# ------------------------------------------------------------------ rubric


@pytest.mark.parametrize("text,ok", [
    ("Block 25 minutes for the lab report and silence your phone.", True),
    ("Take a short walk before your next meeting!", True),
    ("Sure! Take a break now and drink water.", False),          # preamble
    ("Here is a tip: plan tomorrow tonight.", False),            # preamble
    ("- Take a break now and drink water.", False),              # list
    ("Take a **real** break now and drink water.", False),       # markdown
    ('"Take a real break now and drink water."', False),         # wrapped in quotes
    ("Take a break now\nand drink water.", False),               # two lines
    ("Take a break now and drink water", False),                 # no final punctuation
    ("Rest now.", False),                                        # too short
    ("", False),
])
def test_format_ok(text, ok):
    assert R.format_ok(text) is ok


def test_overlong_and_composite():
    assert not R.overlong("word " * 40)
    assert R.overlong("word " * 41)
    assert R.overlong("x" * 281)
    assert R.composite(5, 5, 5, True, False) == 17 == R.COMPOSITE_RANGE[1]
    assert R.composite(1, 1, 1, False, True) == 2 == R.COMPOSITE_RANGE[0]
    assert R.composite(3, 4, 2, True, True) == 3 + 4 + 2 + 2 - 1


def test_score_judge_failed_invents_nothing():
    s = R.Score.of("Take a break now and drink water.", "llm:x", None, "bad json")
    assert s.judge_failed and s.composite is None and s.relevance is None
    assert s.format_ok is True and s.overlong is False
    ok = R.Score.of("Take a break now and drink water.", "llm:x",
                    R.JudgeScores(relevance=4, actionability=3, tone=5))
    assert ok.composite == 4 + 3 + 5 + 2 and not ok.judge_failed


def test_rubric_is_self_describing():
    assert R.RUBRIC["version"] == "tip-v1"
    assert set(R.RUBRIC["criteria"]) == set(R.CRITERIA)
    assert "composite" in R.RUBRIC and len(R.RUBRIC_HASH) == 12
    assert all(c in R.describe() for c in R.CRITERIA)


# ------------------------------------------------------------------ judge parsing


@pytest.mark.parametrize("text,expect", [
    ('{"relevance": 4, "actionability": 3, "tone": 5}', (4, 3, 5)),
    ('Sure: {"Relevance": 2, "actionability": "3", "tone": 4.0} ok', (2, 3, 4)),
    ('{"relevance": 6, "actionability": 3, "tone": 5}', None),
    ('{"relevance": 0, "actionability": 3, "tone": 5}', None),
    ('{"relevance": 4, "actionability": 3}', None),
    ('{"relevance": true, "actionability": 3, "tone": 5}', None),
    ("I think it is a good tip.", None),
    ("", None),
])
def test_parse_scores(text, expect):
    s, err = parse_scores(text)
    if expect is None:
        assert s is None and err
    else:
        assert (s.relevance, s.actionability, s.tone) == expect and err is None


def test_judge_prompt_is_blind():
    msgs = judge_messages("The user is a student.", "Take a break.")
    blob = " ".join(m["content"] for m in msgs)
    for leak in ("smollm", "v2-mentor", "v3-few-shot", "qwen", "model", "prompt version"):
        assert leak not in blob.lower()
    assert "Take a break." in blob and "relevance" in blob


def test_response_formats():
    assert response_format_for("ollama_chat/qwen2.5:1.5b")["type"] == "json_schema"
    rf = response_format_for("openai/smollm2-135m", api_base="http://127.0.0.1:1/v1")
    assert rf["type"] == "json_object" and rf["schema"] == R.JSON_SCHEMA
    assert response_format_for("x", "none") is None


class _StubClient:
    """Answers from a script (the judge-retry logic, without a server)."""

    api_base = None

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    async def complete(self, messages, **kw):
        from tipsml.llm import LLMResult

        self.calls += 1
        return LLMResult(text=self.answers.pop(0), model=kw.get("model", "m"), latency_ms=1.0)


async def test_judge_retries_then_falls_back_deterministically():
    cli = _StubClient(["nonsense", '{"relevance": 9}', "{}"])
    j = LLMJudge(cli, "openai/m", max_retries=2)
    r = await j.judge("situation", "Take a short walk now and breathe.")
    assert cli.calls == 3
    assert r.score.judge_failed and r.score.composite is None
    assert r.score.format_ok and len(r.attempts) == 3
    cli = _StubClient(["nonsense", '{"relevance": 4, "actionability": 4, "tone": 4}'])
    r = await LLMJudge(cli, "openai/m", max_retries=2).judge("s", "Take a walk now please.")
    assert cli.calls == 2 and r.score.composite == 14


# ------------------------------------------------------------------ statistics


def test_bootstrap_ci_covers_mean_and_shrinks():
    rng = np.random.default_rng(1)
    small = rng.normal(10, 2, 20)
    big = rng.normal(10, 2, 400)
    lo1, hi1 = stats.bootstrap_ci(small)
    lo2, hi2 = stats.bootstrap_ci(big)
    assert lo1 < small.mean() < hi1 and lo2 < big.mean() < hi2
    assert (hi2 - lo2) < (hi1 - lo1)
    assert stats.bootstrap_ci([]) == (None, None)
    assert stats.bootstrap_ci([3.0]) == (3.0, 3.0)
    assert stats.bootstrap_ci(small, seed=5) == stats.bootstrap_ci(small, seed=5)


def test_cluster_bootstrap_pools_candidates():
    m, lo, hi = stats.cluster_bootstrap_ci([(20.0, 2), (30.0, 2), (0.0, 0)])
    assert m == pytest.approx(12.5) and 10 <= lo <= m <= hi <= 15
    assert stats.cluster_bootstrap_ci([(24.0, 2)]) == (12.0, 12.0, 12.0)
    assert stats.cluster_bootstrap_ci([]) == (None, None, None)


def test_paired_bootstrap():
    a = [12, 13, 11, 14, 12, 13]
    b = [10, 11, 10, 12, 11, 10]
    r = stats.paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert 0 < r["ci_low"] <= r["diff"] <= r["ci_high"] and r["p_le_0"] == 0.0
    assert stats.paired_bootstrap([], [])["diff"] is None


def test_weighted_kappa_known_values():
    assert stats.weighted_kappa([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert stats.weighted_kappa([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # on a 2-point scale weighted kappa is Cohen's kappa: po = 0.6, pe = 0.5 → κ = 0.2
    a = [1] * 5 + [2] * 5
    b = [1, 1, 1, 2, 2] + [2, 2, 2, 1, 1]
    k = stats.weighted_kappa(a, b, categories=(1, 2))
    assert k == pytest.approx((0.6 - 0.5) / (1 - 0.5))
    # one far disagreement (5 vs 1) costs quadratic weights more than linear ones
    x = [1, 2, 3, 4, 5, 3]
    y = [1, 2, 3, 4, 1, 3]
    assert stats.weighted_kappa(x, y) < stats.weighted_kappa(x, y, weights="linear")
    assert stats.weighted_kappa([], []) is None
    assert stats.weighted_kappa([3, 3], [3, 3]) == 1.0


def test_weighted_kappa_matches_reference_formula():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, 200)
    b = np.clip(a + rng.integers(-1, 2, 200), 1, 5)
    k = stats.weighted_kappa(list(a), list(b))
    # reference: κ_w = 1 - Σ w Obs / Σ w E (observed, expected), computed independently with counts
    Obs = np.zeros((5, 5))
    for i, j in zip(a, b):
        Obs[i - 1, j - 1] += 1
    E = np.outer(Obs.sum(1), Obs.sum(0)) / Obs.sum()
    W = np.array([[(i - j) ** 2 for j in range(5)] for i in range(5)])
    assert k == pytest.approx(1 - (W * Obs).sum() / (W * E).sum())
    assert 0.5 < k < 1.0


def test_spearman():
    from scipy.stats import spearmanr

    a = [1, 2, 2, 3, 5, 4, 4, 1]
    b = [2, 1, 3, 3, 5, 5, 4, 1]
    assert stats.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None
    assert stats.spearman([1], [1]) is None


# ------------------------------------------------------------------ jobs


@pytest.mark.parametrize("model,size", [
    ("ollama/qwen2.5:1.5b", 1.5), ("ollama_chat/qwen2.5:0.5b", 0.5), ("llama3.2:3b", 3.0),
    ("gemma3:1b", 1.0), ("llama3.2:3b-instruct-q4_K_M", 3.0), ("openai/smollm2-135m", 0.135),
    ("mixtral:8x7b", 56.0), ("ollama/llama3.1:8b", 8.0), ("hf/Qwen2.5-1.5B-Instruct", 1.5),
    ("gemma3:latest", None), ("openai/gpt-4o-mini", None), ("qwen2.5", None),
])
def test_model_size_from_tag(model, size):
    got = model_size_b(model)
    assert (got is None and size is None) or got == pytest.approx(size)


def test_parameter_size_from_server_info():
    assert parse_parameter_size("3.2B") == pytest.approx(3.2)
    assert parse_parameter_size("135M") == pytest.approx(0.135)
    assert parse_parameter_size(None) is None and parse_parameter_size("big") is None


def test_validation_refuses_before_work():
    known = ["v1", "v2-mentor", "v3-few-shot"]
    ok = BenchJob(models=["openai/smollm2-135m", "ollama/qwen2.5:1.5b"], prompts=["v1"])
    validate(ok, known, model_size_b)
    with pytest.raises(ContractError) as e:
        validate(BenchJob(models=["ollama/qwen2.5:1.5b"], prompts=["v1", "v9"]), known,
                 model_size_b)
    assert e.value.code == ErrorCode.unknown_prompt_version and "v9" in e.value.message
    with pytest.raises(ContractError) as e:
        validate(BenchJob(models=["ollama/llama3.1:8b", "ollama/qwen2.5:1.5b"]), known,
                 model_size_b)
    assert e.value.code == ErrorCode.invalid_request and "8B" in e.value.message
    with pytest.raises(ContractError) as e:
        validate(BenchJob(models=["ollama/llama3.2:3b"], max_model_b=2), known, model_size_b)
    assert "max_model_b 2B" in e.value.message
    with pytest.raises(ContractError) as e:
        validate(BenchJob(models=["gemma3:latest"]), known, model_size_b)
    assert "size unknown" in e.value.message


def test_job_schema_limits():
    from pydantic import ValidationError

    for bad in ({"models": []}, {"models": ["a", "a"]}, {"models": ["a"], "n_scenarios": 13},
                {"models": ["a"], "n_tips": 0}, {"models": ["a"], "temperature": 3},
                {"models": ["a"], "experiment": "a b"}, {"models": ["a"], "judge": "robot"},
                {"models": ["a"], "job_id": "x/y"}):
        with pytest.raises(ValidationError):
            BenchJob(**bad)


def test_job_id_is_deterministic_and_cells_are_phased():
    a = BenchJob(models=["m:1b", "n:2b"], prompts=["v1", "v2-mentor"], n_scenarios=3)
    b = BenchJob.model_validate_json(a.model_dump_json())
    assert a.id == b.id and a.id.startswith("j")
    assert BenchJob(models=["m:1b"], seed=1).id != BenchJob(models=["m:1b"], seed=2).id
    assert BenchJob(models=["m:1b"], job_id="mine").id == "mine"
    cells = a.cells()
    assert len(cells) == a.n_cells == 12 and [c.n for c in cells] == list(range(12))
    assert {c.phase for c in cells[:6]} == {0} and {c.phase for c in cells[6:]} == {1}
    assert all(c.model == "m:1b" for c in a.phase_cells(0))
    assert len({(c.model, c.prompt, c.scenario) for c in cells}) == 12
    assert cells[5].key == f"{a.id}:5"


def test_scenarios_fixed_seeded_prefix():
    full = SC.build(SC.MAX_SCENARIOS, seed=7)
    assert len({s.id for s in full}) == SC.MAX_SCENARIOS == 12
    assert [s.to_dict() for s in SC.build(4, 7)] == [s.to_dict() for s in full[:4]]
    assert [s.to_dict() for s in SC.build(4, 7)] == [s.to_dict() for s in SC.build(4, 7)]
    assert {s.persona for s in full[:4]} == set(SC.PERSONAS)
    assert [s.id for s in SC.build(12, 1)] != [s.id for s in SC.build(12, 2)]
    with pytest.raises(ValueError):
        SC.build(13)
    d = full[0].description
    assert "Requested tip kind" in d and full[0].context.hour_of_day in SC.SLOTS.values()


# ------------------------------------------------------------------ human judge files


def test_human_file_validated_against_rubric():
    good = {"rubric": "tip-v1", "experiment": "e", "judge": "ann",
            "scores": [{"candidate_id": "c1", "relevance": 4, "actionability": 5, "tone": 3}]}
    assert human.parse_scores_file(good).scores[0].tone == 3
    for bad in (
        {**good, "rubric": "tip-v0"},
        {**good, "scores": [{"candidate_id": "c1", "relevance": 6, "actionability": 5,
                             "tone": 3}]},
        {**good, "scores": [{"candidate_id": "c1", "relevance": "4", "actionability": 5,
                             "tone": 3}]},
        {**good, "scores": [{"candidate_id": "c1", "relevance": 4, "actionability": 5}]},
        {**good, "scores": [{"candidate_id": "c1", "relevance": 4, "actionability": 5,
                             "tone": 3, "format_ok": True}]},
        {**good, "scores": good["scores"] * 2},
        {**good, "scores": []},
    ):
        with pytest.raises(ContractError) as e:
            human.parse_scores_file(bad)
        assert e.value.code == ErrorCode.invalid_request


def test_agreement_stats():
    llm = [{"relevance": r, "actionability": a, "tone": t, "composite": r + a + t}
           for r, a, t in [(1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 5), (5, 5, 5)]]
    out = human.agreement(list(zip(llm, llm)))
    assert out["n"] == 5 and out["relevance"]["weighted_kappa"] == pytest.approx(1.0)
    assert out["composite"]["spearman"] == pytest.approx(1.0)
    assert human.agreement([])["relevance"]["weighted_kappa"] is None


# ------------------------------------------------------------------ leaderboard arithmetic


def _run(cell, model, prompt, scen, comps, failed=0, human_comps=None, job="j1"):
    m = {"n_candidates": float(len(comps) + failed), "format_ok_rate": 1.0,
         "overlong_rate": 0.0, "latency_ms_mean": 10.0, "n_judged": float(len(comps)),
         "n_judge_failed": float(failed), "composite_sum": float(sum(comps))}
    if comps:
        m.update({"composite_mean": float(np.mean(comps)), "relevance_mean": 3.0,
                  "actionability_mean": 3.0, "tone_mean": 3.0})
    if human_comps:
        m.update({"human_n_judged": float(len(human_comps)), "human_n_judge_failed": 0.0,
                  "human_composite_sum": float(sum(human_comps)), "human_relevance_mean": 4.0,
                  "human_actionability_mean": 4.0, "human_tone_mean": 4.0})
    return {"run_id": f"r{cell}", "job_id": job, "cell_key": f"{job}:{cell}", "model": model,
            "prompt": prompt, "scenario": scen, "judge_pending": False, "start_time": cell,
            "metrics": m}


def test_leaderboard_rows_ci_and_paired_comparison():
    runs = [_run(0, "m", "v1", "s1", [10, 12]), _run(1, "m", "v1", "s2", [14, 14]),
            _run(2, "m", "v2", "s1", [8, 9], failed=1), _run(3, "m", "v2", "s2", [9]),
            _run(0, "m", "v1", "s1", [1, 1])]  # duplicate of cell 0: the first one counts
    runs[-1]["start_time"] = 99
    board = LB.compute(runs, judge="llm")
    top, second = board["rows"]
    assert (top["prompt"], second["prompt"]) == ("v1", "v2")
    assert top["n"] == 4 and top["mean_composite"] == pytest.approx(12.5)
    assert second["n"] == 3 and second["mean_composite"] == pytest.approx(26 / 3)
    assert second["n_judge_failed"] == 1
    assert top["ci_low"] <= top["mean_composite"] <= top["ci_high"]
    c = board["comparison"]
    assert c["n_scenarios"] == 2
    assert c["diff"] == pytest.approx(((11 - 8.5) + (14 - 9)) / 2)
    assert board["n_runs"] == 4
    text = LB.format_table(board)
    assert "v1" in text and "top two" in text
    png = LB.chart_png(board)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaderboard_judge_sources():
    runs = [_run(0, "m", "v1", "s1", [10, 12], human_comps=[15, 15]),
            _run(1, "m", "v2", "s1", [11, 11])]
    auto = {r["prompt"]: r for r in LB.compute(runs)["rows"]}
    assert auto["v1"]["mean_composite"] == 15 and auto["v1"]["judge_source"] == "human"
    assert auto["v2"]["judge_source"] == "llm"
    llm = {r["prompt"]: r for r in LB.compute(runs, judge="llm")["rows"]}
    assert llm["v1"]["mean_composite"] == 11
    hum = {r["prompt"]: r for r in LB.compute(runs, judge="human")["rows"]}
    assert hum["v2"]["mean_composite"] is None and hum["v2"]["n"] == 0
    assert math.isclose(hum["v1"]["mean_composite"], 15)

"""System tests: real NATS (JetStream) + Redis from the root fixtures, the embedded real
LLM (SmolLM2-135M through llama-cpp's OpenAI-compatible server), a real MLflow sqlite store."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics

import pytest

from bench_worker import human
from bench_worker.cli import run_job
from bench_worker.job import BenchJob
from tipsdev.llmserver import MODEL_ALIAS
from tipsml import rubric as R
from tipsml import subjects as S
from tipsml.contract import ContractError
from tipsml.messaging.connection import request_json

MODEL = f"openai/{MODEL_ALIAS}"

pytestmark = [pytest.mark.system]

TOKEN = "s3cret-admin"


def _runs(tracker, experiment, job_id=None, status="FINISHED"):
    return tracker.cell_runs(experiment, job_id=job_id, status=status)


@pytest.mark.llm
async def test_end_to_end_job_leaderboard_matches_mlflow_then_human_judge(
        bench_worker, nc, tracker, uid):
    """2 prompts × 2 scenarios × the embedded model, judged by the same model (and left
    pending for a human: judge "both"); leaderboard rows equal what the MLflow runs hold;
    re-sending resumes; then the human export → apply → agreement round trip."""
    job = BenchJob(experiment=f"e2e-{uid}", models=[MODEL], prompts=["v1", "v2-mentor"],
                   n_scenarios=2, n_tips=1, max_tokens=24, temperature=0.7, seed=3,
                   judge="both")
    async with bench_worker(admin_token=TOKEN) as s:
        out = await run_job(job, s, nc=nc, timeout=240)
        final = out["final"]
        assert final["event"] == "done", out["events"][-3:]
        kinds = [e["event"] for e in out["events"]]
        assert kinds[0] == "accepted" and kinds.count("cell_done") == 4
        assert [e["done"] for e in out["events"] if e["event"] == "cell_done"] == [1, 2, 3, 4]
        assert all(e["total"] == 4 for e in out["events"])
        assert any(e.get("eta_s") is not None for e in out["events"] if e["event"] == "cell_done")
        assert final["done"] == 4 and final["failed"] == 0

        board = out["leaderboard"]
        assert board["ok"] and board["rubric"] == "tip-v1"
        runs = _runs(tracker, job.experiment, job.id)
        assert len(runs) == 4
        # recompute every row from the runs' candidate artifacts, not only their metrics
        expect: dict[tuple[str, str], list[int]] = {}
        llm: dict[str, dict] = {}
        for r in runs:
            t, p = r.data.tags, r.data.params
            assert t["judge_pending"] == "true" and t["rubric"] == R.VERSION  # human to come
            assert p["model"] == MODEL and p["prompt_version"] == t["prompt"]
            assert p["rubric_hash"] == R.RUBRIC_HASH and p["seed"] == "3"
            assert p["prompt_hash"] and p["scenario"] == t["scenario"]
            doc = tracker.load_json(r.info.run_id, "candidates.json")
            assert tracker.load_json(r.info.run_id, "rubric.json")["version"] == "tip-v1"
            msgs = tracker.load_json(r.info.run_id, "prompt_messages.json")["messages"]
            assert msgs[0]["role"] == "system"
            table = tracker.load_json(r.info.run_id, "candidates_table.json")
            assert len(table["data"]) == 1 and len(doc["candidates"]) == 1
            for c in doc["candidates"]:
                sc = c["llm_score"]
                llm[c["candidate_id"]] = sc
                assert c["llm_judge_attempts"]
                assert sc["format_ok"] == R.format_ok(c["text"])
                assert sc["overlong"] == R.overlong(c["text"])
                if sc["judge_failed"]:
                    assert sc["composite"] is None
                    continue
                assert sc["composite"] == R.composite(sc["relevance"], sc["actionability"],
                                                      sc["tone"], sc["format_ok"],
                                                      sc["overlong"])
                expect.setdefault((t["model"], t["prompt"]), []).append(sc["composite"])
            judged = [c["llm_score"]["composite"] for c in doc["candidates"]
                      if c["llm_score"]["composite"] is not None]
            assert r.data.metrics["n_judged"] == len(judged)
            if judged:
                assert r.data.metrics["composite_mean"] == pytest.approx(statistics.fmean(judged))
        rows = {(row["model"], row["prompt"]): row for row in board["rows"]}
        assert set(rows) == {(MODEL, "v1"), (MODEL, "v2-mentor")}
        for key, row in rows.items():
            comps = expect.get(key, [])
            assert row["n"] == len(comps) and row["n_cells"] == 2 and row["n_pending"] == 2
            if comps:
                assert row["mean_composite"] == pytest.approx(statistics.fmean(comps))
                assert row["ci_low"] <= row["mean_composite"] <= row["ci_high"]
        if board["comparison"]:
            assert board["comparison"]["n_scenarios"] in (1, 2)
        # the chart run of the job: a PNG with the leaderboard beside it
        arts = {a.path for a in tracker.client.list_artifacts(final["leaderboard_run_id"])}
        assert {"leaderboard.png", "leaderboard.json"} <= arts

        # re-sending the same job resumes: nothing is redone
        again = await run_job(job, s, nc=nc, timeout=60)
        assert [e["event"] for e in again["events"]] == ["accepted", "done"]
        assert again["events"][0]["resumed"] and again["events"][0]["done"] == 4
        assert len(_runs(tracker, job.experiment, job.id, status=None)) == 4
        assert again["leaderboard"]["rows"] == board["rows"]

        # ---- human judge: blind export, validated apply, agreement with the LLM judge
        exported = human.export(tracker, job.experiment)
        items = exported["items"]
        assert len(items) == 4 and exported["rubric"]["version"] == "tip-v1"
        blob = json.dumps(items)
        assert MODEL not in blob and "v2-mentor" not in blob  # blind
        scores = []
        for i, it in enumerate(items):  # agrees with the LLM judge except one tone score
            sc = llm[it["candidate_id"]]
            base = {k: sc[k] if sc[k] is not None else 3 for k in R.CRITERIA}
            if i == 0:
                base["tone"] = 1 if base["tone"] != 1 else 5
            scores.append({"candidate_id": it["candidate_id"], **base})
        bad = {"rubric": "tip-v1", "experiment": job.experiment, "judge": "ann",
               "scores": scores[:1] + [{**scores[1], "candidate_id": "c-unknown"}]}
        with pytest.raises(ContractError) as e:
            human.apply(tracker, bad)
        assert e.value.code.value == "not_found"
        assert {r.data.tags.get("human_judged") for r in _runs(tracker, job.experiment)} \
            == {None}  # nothing half-applied
        res = human.apply(tracker, {"rubric": "tip-v1", "experiment": job.experiment,
                                    "judge": "ann", "scores": scores})
        assert res["applied"] == 4 and res["runs_updated"] == 4
        assert res["agreement"]["n"] == sum(1 for v in llm.values() if v["composite"] is not None)
        runs = _runs(tracker, job.experiment)
        assert {r.data.tags["judge_pending"] for r in runs} == {"false"}
        assert all(r.data.metrics["human_n_judged"] == 1 for r in runs)
        assert human.export(tracker, job.experiment)["items"] == []  # nothing pending
        r = await request_json(nc, S.BENCH_LEADERBOARD,
                               {"experiment": job.experiment, "judge": "human",
                                "agreement": True, "chart": True}, timeout=30,
                               headers={"Tips-Admin-Token": TOKEN})
    assert r["ok"] and sum(row["n"] for row in r["rows"]) == 4
    assert {row["judge_source"] for row in r["rows"]} == {"human"}
    want = {}
    for x in scores:
        sc = llm[x["candidate_id"]]
        want[x["candidate_id"]] = R.composite(x["relevance"], x["actionability"], x["tone"],
                                              sc["format_ok"], sc["overlong"])
    assert sum(row["mean_composite"] * row["n"] for row in r["rows"]) == \
        pytest.approx(sum(want.values()))
    assert r["agreement"]["n"] == res["agreement"]["n"]
    assert "leaderboard.png" in {a.path for a in
                                 tracker.client.list_artifacts(r["leaderboard_run_id"])}


async def test_refused_jobs_publish_a_clear_error_before_any_work(bench_worker, nc, tracker,
                                                                  uid):
    js = nc.jetstream()
    dlq = await nc.subscribe(f"{S.DLQ_BENCH_JOB}.>")

    async def submit(job: BenchJob, token: str | None = TOKEN) -> dict:
        sub = await nc.subscribe(S.bench_status_subject(job.id))
        hdr = {"Nats-Msg-Id": f"t:{uid}:{job.id}:{token}", "Tips-Job-Id": job.id}
        if token:
            hdr["Tips-Admin-Token"] = token
        await js.publish(S.BENCH_RUN, job.model_dump_json().encode(), headers=hdr)
        msg = await sub.next_msg(timeout=30)
        await sub.unsubscribe()
        return json.loads(msg.data)

    exp = f"refused-{uid}"
    async with bench_worker(admin_token=TOKEN):
        ok_job = BenchJob(experiment=exp, models=[MODEL], prompts=["v1"], n_scenarios=1)
        ev = await submit(ok_job, token=None)
        assert ev["event"] == "error" and ev["error"]["code"] == "forbidden"
        ev = await submit(ok_job.model_copy(update={"seed": 1}), token="wrong")
        assert ev["error"]["code"] == "forbidden"
        ev = await submit(BenchJob(experiment=exp, models=[MODEL], prompts=["v1", "v9-nope"]))
        assert ev["error"]["code"] == "unknown_prompt_version" and "v9-nope" in \
            ev["error"]["message"]
        ev = await submit(BenchJob(experiment=exp, models=[MODEL, "ollama/llama3.1:8b"]))
        assert ev["error"]["code"] == "invalid_request"
        assert "8B parameters > max_model_b 4B" in ev["error"]["message"]
        ev = await submit(BenchJob(experiment=exp, models=["openai/smollm2-135m"],
                                   max_model_b=0.1))
        assert "0.135B" in ev["error"]["message"]
        # every refusal is dead-lettered; no cell was published, no run was written
        reasons = []
        for _ in range(5):
            m = await dlq.next_msg(timeout=5)
            reasons.append(m.headers["Tips-Dlq-Reason"].split(":")[0])
        assert sorted(reasons) == sorted(["forbidden", "forbidden", "unknown_prompt_version",
                                          "invalid_request", "invalid_request"])
        info = await js.stream_info("BENCH", subjects_filter="bench.cell.>")
        assert not any(exp in subj for subj in (info.state.subjects or {}))
        assert tracker.experiment_id(exp, create=False) is None
        # the leaderboard is admin only too; an unknown experiment is not_found
        r = await request_json(nc, S.BENCH_LEADERBOARD, {"experiment": exp}, timeout=10)
        assert r["error"]["code"] == "forbidden"
        r = await request_json(nc, S.BENCH_LEADERBOARD, {"experiment": exp}, timeout=10,
                               headers={"Tips-Admin-Token": TOKEN})
        assert r["error"]["code"] == "not_found"
        r = await request_json(nc, S.BENCH_LEADERBOARD, b"not json", timeout=10,
                               headers={"Tips-Admin-Token": TOKEN})
        assert r["error"]["code"] == "invalid_request"
    await dlq.unsubscribe()


@pytest.mark.llm
async def test_killed_worker_loses_nothing_and_each_cell_is_judged_once(
        bench_env, nc, redis_client, tracker, uid, tmp_path):
    from tipsdev.testing import spawn_worker

    job = BenchJob(experiment=f"kill-{uid}", models=[MODEL], prompts=["v1"], n_scenarios=2,
                   n_tips=1, max_tokens=48)
    events: list[dict] = []
    got = asyncio.Queue()

    async def cb(msg):
        ev = json.loads(msg.data)
        events.append(ev)
        await got.put(ev)

    sub = await nc.subscribe(S.bench_status_subject(job.id), cb=cb)
    log = str(tmp_path / "worker.log")
    w1 = spawn_worker("bench_worker.main", bench_env, log_path=log)
    w2 = None
    try:
        js = nc.jetstream()
        await js.publish(S.BENCH_RUN, job.model_dump_json().encode(),
                         headers={"Nats-Msg-Id": f"kill:{uid}", "Tips-Job-Id": job.id})
        # kill -9 the worker while it is in the middle of its second cell
        seen_done = False
        while True:
            ev = await asyncio.wait_for(got.get(), timeout=90)
            assert ev["event"] != "error", ev
            if ev["event"] == "cell_done":
                seen_done = True
            if seen_done and ev["event"] == "cell_started":
                await asyncio.sleep(0.3)
                w1.kill(signal.SIGKILL)
                killed_cell = ev["current"]["n"]
                break
        done_before = max(e.get("done", 0) for e in events)
        assert done_before < 2
        w2 = spawn_worker("bench_worker.main", bench_env, log_path=log)
        while True:
            ev = await asyncio.wait_for(got.get(), timeout=120)
            if ev["event"] == "done":
                break
        assert ev["done"] == 2 and ev["failed"] == 0
    finally:
        await sub.unsubscribe()
        for w in (w1, w2):
            if w is not None:
                w.stop()
    # exactly one finished run per cell; the killed attempt left nothing that counts
    runs = tracker.cell_runs(job.experiment, job_id=job.id, status=None)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["cell_n"]) for r in finished) == [0, 1]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    for r in finished:
        m = r.data.metrics
        assert m["n_judged"] + m["n_judge_failed"] == 1
    # the killed cell was redone by the second worker; each cell_done announced once
    cell_done = [e["current"]["n"] for e in events if e["event"] == "cell_done"]
    assert sorted(cell_done) == [0, 1]
    assert any(e["event"] == "cell_started" and e["current"]["n"] == killed_cell
               and e["worker"] != events[0]["worker"] for e in events)
    redis_done = await redis_client.hgetall(f"bench:job:{job.id}:done")
    assert {int(k): v.decode() for k, v in redis_done.items()} == \
        {int(r.data.tags["cell_n"]): r.info.run_id for r in finished}
    # nothing left on the work queue for this job
    info = await nc.jetstream().stream_info("BENCH", subjects_filter=f"bench.cell.{job.id}.>")
    assert not info.state.subjects

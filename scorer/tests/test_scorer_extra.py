"""Global-model option, metrics over HTTP, Redis-down fallback, reads without a task."""

import asyncio
import urllib.request

import numpy as np
import pytest

from scorer.scoring import Scorer
from scorer.settings import ScorerSettings
from tipsdev.testing import spawn_worker, wait_responding
from tipsml.contract import ScoreRequest
from tipsml.messaging.connection import request_json
from tipsml.state import StateStore, state_key

pytestmark = pytest.mark.system


async def test_global_policy_shares_one_model_across_users(stack, redis_client, uid):
    s = ScorerSettings(redis_url=stack.redis_url, global_policies=["linucb"], shadow_policies=[])
    store = StateStore.from_url(stack.redis_url, global_policies=["linucb"], global_refresh_s=0)
    sc = Scorer(s, store, rng=np.random.default_rng(0))
    a = await sc.score(ScoreRequest(user_id=f"{uid}-a", policy="linucb"))
    b = await sc.score(ScoreRequest(user_id=f"{uid}-b", policy="egreedy-v1"))
    assert a.record["vectors"]["linucb"][0] == "tips:stg:linucb"
    assert b.record["vectors"]["egreedy-v1"][0] == f"tips:st:{{{uid}-b}}:egreedy-v1"
    await store.record_decisions([a.record])
    r = await store.apply_reward(f"ev-{uid}", a.reply["decision_id"], f"{uid}-a", 1.0)
    assert r.outcome == "applied" and r.globals_applied == 1
    # a redelivery re-runs the global step, which its per-decision marker makes a no-op
    again = await store.apply_reward(f"ev-{uid}", a.reply["decision_id"], f"{uid}-a", 1.0)
    assert again.outcome == "duplicate" and again.globals_applied == 0
    st_other_user = await sc.stats(f"{uid}-zzz", "linucb")
    assert sum(x["updates"] for x in st_other_user["arms"].values()) == 1
    assert sum(x["pulls"] for x in st_other_user["arms"].values()) == 1
    # the merged model is what the numpy update of the prior gives
    from tipsml.bandits import initial_arm, sherman_morrison_update
    rec = await store.get_decision(a.reply["decision_id"], f"{uid}-a")
    x = np.frombuffer(rec["x:linucb"], dtype="<f8")
    blobs = await store.global_models(sc.policies["linucb"], sc.arms)
    got = np.frombuffer(blobs[sc.arms.index(a.reply["arm"])], dtype="<f8")
    np.testing.assert_allclose(got, sherman_morrison_update(initial_arm(7, 1.0), x, 1.0),
                               rtol=1e-9, atol=1e-12)
    # a user literally named like the old global key does not touch the global model
    odd = await sc.score(ScoreRequest(user_id="*global*", policy="egreedy-v1"))
    assert odd.record["vectors"]["egreedy-v1"][0] == "tips:st:{*global*}:egreedy-v1"
    from tipsml.state import GLOBAL_SHARDS, global_pulls_key, global_shard_key
    await store.r.delete(*[global_shard_key("linucb", i) for i in range(GLOBAL_SHARDS)],
                         *[global_pulls_key("linucb", i) for i in range(GLOBAL_SHARDS)])
    await store.close()


async def test_redis_unreachable_gives_flagged_uniform_fallback(stack):
    s = ScorerSettings(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.05)
    store = StateStore.from_url(s.redis_url)
    sc = Scorer(s, store)
    out = await sc.score(ScoreRequest(user_id="u", arms=["a", "b", "c", "d"]))
    assert out.reply["ok"] and out.reply["fallback"] is True
    assert out.reply["propensity"] == pytest.approx(0.25)
    assert out.log[0]["fallback"] is True and out.log[0]["propensity"] == pytest.approx(0.25)
    # the fallback keeps its record (written once Redis answers) so its reward can apply
    rec = out.record
    assert rec["fallback"] is True and rec["arm"] == out.reply["arm"]
    assert rec["propensity"] == pytest.approx(0.25) and rec["learners"][0] == "egreedy-pooled"
    assert set(rec["vectors"]) == set(rec["learners"])
    await store.close()


async def test_worker_serves_prometheus_metrics(stack, nc):
    w = spawn_worker("scorer.main", {**stack.env(), "METRICS_PORT": "0"})
    try:
        port = w.info["metrics_port"]
        await wait_responding(nc, "tips.stats")
        # 40 of each: replicas in the queue group share them, this one surely gets some
        for _ in range(40):
            assert (await request_json(nc, "tips.score", {"user_id": "metrics-user"}))["ok"]
            assert (await request_json(nc, "tips.score", b"bad"))["ok"] is False
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for name in ("scorer_request_latency_seconds_bucket", "scorer_requests_total",
                     "scorer_decisions_total", "scorer_explored_total"):
            assert name in body
        assert 'scorer_requests_total{code="invalid_request",subject="tips.score"}' in body
        assert 'scorer_requests_total{code="ok",subject="tips.score"}' in body
    finally:
        w.stop()


async def test_reset_requires_admin_token_when_configured(stack, nc, uid):
    w = spawn_worker("scorer.main", {**stack.env(), "ADMIN_TOKEN": "s3cret-for-test",
                                     "METRICS_PORT": "-1"})
    try:
        await wait_responding(nc, "tips.stats")
        # other scorers of the session may share the queue group: 30 tries reach this one
        codes = set()
        for _ in range(30):
            r = await request_json(nc, "tips.reset", {"user_id": uid})
            codes.add(r.get("error", {}).get("code", "ok"))
        assert "forbidden" in codes
        ok = [await request_json(nc, "tips.reset", {"user_id": uid},
                                 headers={"Tips-Admin-Token": "s3cret-for-test"})
              for _ in range(10)]
        assert all(r["ok"] for r in ok)
    finally:
        w.stop()


async def test_reads_go_out_without_a_task_and_survive_a_script_flush(stack, redis_client, uid):
    """Once the raw connection is up, the coalesced read is written at once and answered
    as a plain future (no task per batch); it gives what load_batch gives, and a Redis
    that forgot its scripts still answers it (the read is plain HMGETs, no script)."""
    s = ScorerSettings(redis_url=stack.redis_url, shadow_policies=[])
    store = StateStore.from_url(stack.redis_url)
    sc = Scorer(s, store, rng=np.random.default_rng(0))
    try:
        first = await sc.score(ScoreRequest(user_id=f"{uid}-a"))  # connects: the task path
        assert not first.reply["fallback"]
        await store.record_decisions([first.record])
        r = await store.apply_reward(f"ev-{uid}", first.reply["decision_id"], f"{uid}-a", 1.0)
        reqs = [([state_key(first.reply["policy"], f"{uid}-a")], sc.arms)]
        fut = store.load_batch_nowait(reqs)
        assert isinstance(fut, asyncio.Future) and not isinstance(fut, asyncio.Task)
        got = await fut
        assert got == await store.load_batch(reqs)
        assert r.outcome == "applied" and sum(b is not None for b in got[0][0]) == 1
        await redis_client.script_flush()
        assert await store.load_batch_nowait(reqs) == got
        batches = sc.reader.batches
        out = await sc.score(ScoreRequest(user_id=f"{uid}-a"))
        assert not out.reply["fallback"] and sc.reader.batches == batches + 1
    finally:
        await store.close()


async def test_a_read_that_fails_fails_only_its_own_request(stack, redis_client, uid):
    """A coalesced read is one HMGET per state key: a key Redis refuses (WRONGTYPE) fails
    the request it belongs to, in its place, on the raw connection and on redis-py alike;
    the batch's other requests get their models, one list per state key."""
    store = StateStore.from_url(stack.redis_url)
    arms = ["a", "b"]
    good = [state_key("egreedy-v1", f"{uid}-g"), state_key("linucb", f"{uid}-g")]
    bad = [state_key("egreedy-v1", f"{uid}-x"), state_key("linucb", f"{uid}-x")]
    await redis_client.hset(good[0], "a", b"model-a")
    await redis_client.set(bad[1], "not a hash")
    reqs = [(good, arms), (bad, arms), (good[:1], arms)]
    try:
        first = await store.load_batch(reqs)  # connects the raw connection
        fut = store.load_batch_nowait(reqs)
        assert fut is not None
        fast, store._fast_read = store._fast_read, None
        try:
            via_redis_py = await store.load_batch(reqs)  # redis-py's pipeline
        finally:
            store._fast_read = fast
        for got in (first, await fut, via_redis_py):
            assert got[0] == [[b"model-a", None], [None, None]]
            assert isinstance(got[1], Exception) and "WRONGTYPE" in str(got[1])
            assert got[2] == [[b"model-a", None]]
    finally:
        await store.close()


async def _score_cb(sc: Scorer, req: ScoreRequest):
    """Scorer.score_cb as a coroutine: (taken, outcome)."""
    fut = asyncio.get_running_loop().create_future()
    taken = sc.score_cb(req, fut.set_result)
    if not taken:
        assert not fut.done()
        return False, None
    return True, await asyncio.wait_for(fut, 2.0)


def _same_decision(a, b) -> None:
    """Two outcomes of the same request under the same random draws: equal but for the
    decision's id and time."""
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("decision_id", "ts")}

    assert strip(a.reply) == strip(b.reply)
    assert [strip(e) for e in a.log] == [strip(e) for e in b.log]
    ra, rb = strip(a.record), strip(b.record)
    va, vb = ra.pop("vectors"), rb.pop("vectors")
    assert ra == rb and va.keys() == vb.keys()
    for k in va:
        assert va[k][0] == vb[k][0] and np.array_equal(va[k][1], vb[k][1])


async def test_score_cb_decides_as_score_does(stack, redis_client, uid):
    """The synchronous path (no task, the outcome by callback from the Redis reader) makes
    the decision the awaited path makes: the same draws give the same reply, record and
    log entry, for users with and without state, the live policy pooled or not; a pooled
    prior due for its refresh is left to the awaited path (False, nothing drawn)."""
    store = StateStore.from_url(stack.redis_url, global_refresh_s=60)
    ctx = {"hour_of_day": 9, "day_of_week": 2}
    prof = {"completion_rate": 0.4, "dismiss_rate": 0.1}
    try:
        for live in ("egreedy-v1", "egreedy-pooled", "linucb"):
            s = ScorerSettings(redis_url=stack.redis_url, default_policy=live)
            seed_sc = Scorer(s, store, rng=np.random.default_rng(1))
            out = await seed_sc.score(ScoreRequest(user_id=f"{uid}-{live}-x"))
            await store.record_decisions([out.record])
            assert (await store.apply_reward(f"ev-{uid}-{live}", out.reply["decision_id"],
                                             f"{uid}-{live}-x", 1.0)).outcome == "applied"
            a = Scorer(s, store, rng=np.random.default_rng(7))
            b = Scorer(s, store, rng=np.random.default_rng(7))
            if live == "egreedy-pooled":  # a fresh scorer: the shared prior is not cached yet
                store._gcache.clear()
                assert await _score_cb(b, ScoreRequest(user_id=f"{uid}-p")) == (False, None)
            for i, user in enumerate([f"{uid}-{live}-x", f"{uid}-{live}-new"] * 3):
                req = ScoreRequest(user_id=user, context=ctx, profile_features=prof,
                                   request_id=f"r{i}")
                want = await a.score(req)
                taken, got = await _score_cb(b, req)
                assert taken, (live, i)
                assert not got.reply["fallback"]
                _same_decision(want, got)
    finally:
        await store.close()


async def test_score_cb_falls_back_when_redis_is_unreachable(stack):
    s = ScorerSettings(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.05,
                       default_policy="egreedy-v1")
    store = StateStore.from_url(s.redis_url)
    sc = Scorer(s, store)
    try:
        for _ in range(5):  # the breaker opens after 3: then the answer comes at once
            taken, out = await _score_cb(sc, ScoreRequest(user_id="u", arms=["a", "b", "c"]))
            assert taken and out.reply["fallback"] is True
            assert out.reply["propensity"] == pytest.approx(1 / 3)
            assert out.record["fallback"] is True and out.log[0]["fallback"] is True
        assert sc.reader.breaker.is_open
    finally:
        await store.close()


async def test_a_failure_after_the_read_is_a_typed_error_on_the_taskless_path(
        nc, scorer_service, uid, monkeypatch):
    """The arms' maths failing (an injected fault: any bug or unusable model there) fails
    after the Redis read, inside the reader's callback: the request still gets its typed
    ``internal`` reply (not silence until the client's timeout), the other requests of
    the same read batch are served, and the worker keeps serving."""
    import scorer.scoring as scoring

    real = scoring.choose_many

    def choose_many(pols, arms, blobs, xs, rng, priors=None):
        if arms == ["boom-1", "boom-2"]:
            raise ValueError("injected")
        return real(pols, arms, blobs, xs, rng, priors)

    monkeypatch.setattr(scoring, "choose_many", choose_many)
    # egreedy-v1: no pooled prior to refresh, so every request takes the task-less path
    reqs = [{"user_id": f"{uid}-{i}", "policy": "egreedy-v1",
             "arms": ["boom-1", "boom-2"] if i % 3 == 0 else ["a", "b"]} for i in range(12)]
    got = await asyncio.gather(*(request_json(nc, "tips.score", r, timeout=2.0) for r in reqs))
    for r, g in zip(reqs, got):
        if r["arms"][0] == "boom-1":
            assert g["ok"] is False and g["error"]["code"] == "internal", g
        else:
            assert g["ok"] is True and g["arm"] in ("a", "b"), g
    monkeypatch.setattr(scoring, "choose_many", real)
    ok = await request_json(nc, "tips.score", {"user_id": f"{uid}-fine"}, timeout=2.0)
    assert ok["ok"] is True

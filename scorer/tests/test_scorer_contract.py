"""tips.score / tips.stats / tips.reset over real NATS + Redis (embedded stack)."""

import asyncio
import json

import pytest

from scorer.decisionlog import expand_entry
from tipsml.messaging.connection import request_json

pytestmark = [pytest.mark.system, pytest.mark.cluster]


async def score(nc, payload, timeout=2.0):
    return await request_json(nc, "tips.score", payload, timeout=timeout)


async def test_score_reply_has_contract_fields(nc, scorer_service, uid):
    r = await score(nc, {"user_id": uid, "request_id": "r1",
                         "context": {"hour_of_day": 9, "day_of_week": 1,
                                     "tasks": [{"id": 1, "title": "write", "priority": 3,
                                                "overdue": True}]},
                         "profile_features": {"completion_rate": 0.8, "preferred_hour": None}})
    assert r["ok"] is True
    for f in ("decision_id", "policy", "arm", "propensity", "explored", "scores",
              "feature_version", "shadow"):
        assert f in r
    assert r["policy"] == "egreedy-pooled"
    assert r["arm"] in scorer_service.arms
    assert 0 < r["propensity"] <= 1
    assert set(r["scores"]) == set(scorer_service.arms)
    assert {s["policy"] for s in r["shadow"]} == {"egreedy-v2", "linucb"}
    assert r["request_id"] == "r1"


@pytest.mark.parametrize("policy,fv", [("egreedy-v1", "ctx7-v1"), ("egreedy-v2", "ctx7+prof5-v2"),
                                       ("linucb", "ctx7-v1"), ("thompson", "ctx7-v1")])
async def test_each_policy_serves(nc, scorer_service, uid, policy, fv):
    r = await score(nc, {"user_id": uid, "policy": policy, "arms": ["x", "y"]})
    assert r["ok"] and r["policy"] == policy and r["arm"] in ("x", "y")
    assert r["feature_version"] == fv


@pytest.mark.parametrize("payload,code", [
    (b"{not json", "invalid_request"),
    (b"", "invalid_request"),
    (b"[1,2]", "invalid_request"),
    ({"policy": "linucb"}, "invalid_request"),
    ({"user_id": 42}, "invalid_request"),
    ({"user_id": "u", "arms": "x"}, "invalid_request"),
    ({"user_id": "u", "arms": []}, "invalid_request"),
    ({"user_id": "u", "context": {"hour_of_day": 24}}, "invalid_request"),
    ({"user_id": "u", "context": {"day_of_week": -1}}, "invalid_request"),
    ({"user_id": "u", "context": {"tasks": [{"priority": 5}]}}, "invalid_request"),
    ({"user_id": "u", "profile_features": [1, 2]}, "invalid_request"),
    ({"user_id": "u", "policy": "nope"}, "unknown_policy"),
    (b'{"user_id":"' + b"x" * 70000 + b'"}', "invalid_request"),
])
async def test_bad_input_gets_typed_error_and_worker_keeps_serving(nc, scorer_service, payload,
                                                                   code):
    if isinstance(payload, dict):
        payload = json.dumps(payload, allow_nan=True).encode()
    r = await score(nc, payload)
    assert r["ok"] is False
    assert r["error"]["code"] == code
    assert r["error"]["message"]
    ok = await score(nc, {"user_id": "still-alive"})
    assert ok["ok"] is True


async def test_missing_profile_features_use_fallbacks(nc, scorer_service, uid):
    r = await score(nc, {"user_id": uid, "policy": "egreedy-v2", "profile_features": None})
    assert r["ok"]
    r = await score(nc, {"user_id": uid, "policy": "egreedy-v2",
                         "profile_features": {"completion_rate": "high", "unknown": 3}})
    assert r["ok"]


async def _logged_features(nc, decision_id: str, policy: str) -> list[float]:
    js = nc.jetstream()
    psub = await js.pull_subscribe(f"decisions.{policy}", durable=None, stream="DECISIONS")
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        try:
            msgs = await psub.fetch(500, timeout=1)
        except Exception:
            continue
        for m in msgs:
            d = json.loads(m.data)
            if d["decision_id"] == decision_id:
                await psub.unsubscribe()
                return d["features"]
    raise AssertionError(f"decision {decision_id} not logged")


@pytest.mark.parametrize("bad", [[0.5, 0.6], {"v": 0.5}, b"1e400", b"-1e400", b"NaN",
                                 b"1" + b"0" * 400, "x" * 300, "high"])
async def test_bad_profile_value_uses_the_fallback_not_an_error(nc, scorer_service, uid, bad):
    """DESIGN.md: bad profile values use the feature's fallback, never an error. The
    decision is built from exactly the vector of a request without that feature."""
    good = {"dismiss_rate": 0.2, "mean_dwell_ms": 1234.0}
    ctx = {"hour_of_day": 9, "day_of_week": 2}
    if isinstance(bad, bytes):  # raw JSON tokens json.dumps cannot write
        pf = json.dumps({**good, "completion_rate": "__BAD__"}).replace('"__BAD__"',
                                                                        bad.decode())
        payload = (b'{"user_id": "' + uid.encode() + b'", "policy": "egreedy-v2", "context": '
                   + json.dumps(ctx).encode() + b', "profile_features": ' + pf.encode() + b"}")
    else:
        payload = {"user_id": uid, "policy": "egreedy-v2", "context": ctx,
                   "profile_features": {**good, "completion_rate": bad}}
    r = await score(nc, payload)
    assert r["ok"] is True, r
    ref = await score(nc, {"user_id": uid, "policy": "egreedy-v2", "context": ctx,
                           "profile_features": good})
    assert ref["ok"] is True
    got = await _logged_features(nc, r["decision_id"], "egreedy-v2")
    want = await _logged_features(nc, ref["decision_id"], "egreedy-v2")
    assert got == want  # completion_rate took its fallback (0.3), the rest is unchanged


def test_bad_profile_values_are_listed_for_the_metric():
    from tipsml.contract import ScoreRequest, parse

    raw = (b'{"user_id": "u", "profile_features": {"completion_rate": [1], "dismiss_rate": '
           b'1e400, "tip_volume": 1' + b"0" * 400 + b', "mean_dwell_ms": 5, "x": "'
           + b"y" * 300 + b'"}}')
    req = parse(ScoreRequest, raw)
    assert req.profile_fallbacks == {"completion_rate": "wrong_type",
                                     "dismiss_rate": "non_finite",
                                     "tip_volume": "out_of_range", "x": "too_long"}
    assert req.profile_features["mean_dwell_ms"] == 5
    assert req.profile_features["completion_rate"] is None


async def test_stats_counts_pulls_and_reset_clears(nc, scorer_service, uid):
    for _ in range(5):
        assert (await score(nc, {"user_id": uid}))["ok"]
    await asyncio.sleep(0.3)  # decision records are written after the reply
    st = await request_json(nc, "tips.stats", {"user_id": uid})
    assert st["ok"] and sum(a["pulls"] for a in st["arms"].values()) == 5
    rs = await request_json(nc, "tips.reset", {"user_id": uid})
    assert rs["ok"] and "egreedy-v1" in rs["reset_policies"]
    st = await request_json(nc, "tips.stats", {"user_id": uid})
    assert st["arms"] == {}
    bad = await request_json(nc, "tips.stats", {"user_id": uid, "policy": "nope"})
    assert bad["error"]["code"] == "unknown_policy"


async def test_decisions_are_logged_to_jetstream(nc, scorer_service, uid):
    js = nc.jetstream()
    r = await score(nc, {"user_id": uid, "policy": "linucb"})
    seen = {}
    deadline = asyncio.get_running_loop().time() + 5
    psub = await js.pull_subscribe("decisions.>", durable=None, stream="DECISIONS")
    messages = 0
    while len(seen) < 2 and asyncio.get_running_loop().time() < deadline:
        try:
            msgs = await psub.fetch(500, timeout=1)
        except Exception:
            continue
        for m in msgs:
            d = json.loads(m.data)
            if d["decision_id"] == r["decision_id"]:
                messages += 1
                assert m.subject == "decisions.linucb"
                for e in expand_entry(d):
                    seen[e["policy"]] = e
    # one message per decision, the shadow choices inside it
    assert messages == 1
    # live linucb + the configured shadows other than itself
    assert set(seen) == {"linucb", "egreedy-v2"}
    live = seen["linucb"]
    assert live["served"] is True and live["arm"] == r["arm"]
    assert live["propensity"] == r["propensity"] and len(live["features"]) == 7
    assert seen["egreedy-v2"]["served"] is False and len(seen["egreedy-v2"]["features"]) == 12
    assert "policy_version" in live and "ts" in live
    sh = seen["egreedy-v2"]
    assert sh["decision_id"] == r["decision_id"] and sh["served_arm"] == r["arm"]
    assert sh["arm"] == r["shadow"][0]["arm"] and sh["propensity"] == r["shadow"][0]["propensity"]

"""NATS Services API (ADR-32) against the real workers: $SRV.PING / INFO / STATS find the
scorer, the generator and the bench worker with their endpoints, and count requests,
errors (every ``ok: false`` reply) and processing time per endpoint."""

from __future__ import annotations

import json
import re

import pytest

from tipsdev.testing import wait_responding
from tipsml import subjects as S
from tipsml.client import discover
from tipsml.messaging.connection import request_json

pytestmark = pytest.mark.system

SEMVER = re.compile(r"^\d+\.\d+\.\d+")
NAMES = {"tips-scorer", "tips-generator", "tips-bench"}


@pytest.fixture(scope="module")
async def ready(service_workers, nc):
    for subject in (S.TIPS_SCORE, S.TIPS_GENERATE):
        await wait_responding(nc, subject, b'{"user_id": "probe"}', timeout=30)
    await wait_responding(nc, S.BENCH_EXPERIMENTS, b"{}", timeout=30)
    return service_workers


async def test_ping_finds_every_request_reply_worker(ready, nc):
    pings = await discover(nc, "PING")
    names = {p["name"] for p in pings}
    assert NAMES <= names, names
    for p in pings:
        assert p["type"] == "io.nats.micro.v1.ping_response"
        assert SEMVER.match(p["version"]) and p["id"]
    only = await discover(nc, "PING", "tips-generator")
    assert only and {p["name"] for p in only} == {"tips-generator"}


async def test_info_lists_endpoints_subjects_and_queue_groups(ready, nc):
    by_service: dict[str, list] = {}
    for ep in S.ENDPOINTS:
        by_service.setdefault(ep.service, []).append(ep)
    for name, eps in by_service.items():
        infos = await discover(nc, "INFO", name)
        assert infos, f"no $SRV.INFO answer from {name}"
        for info in infos:
            assert info["type"] == "io.nats.micro.v1.info_response"
            assert info["description"]
            got = {e["subject"]: e for e in info["endpoints"]}
            assert set(got) == {ep.subject for ep in eps}
            for ep in eps:
                e = got[ep.subject]
                assert e["name"] == ep.name and e["queue_group"] == ep.queue_group
                assert e["metadata"]["request"] == ep.request
                assert e["metadata"]["reply"] == ep.reply
    scorer = (await discover(nc, "INFO", "tips-scorer"))[0]
    assert scorer["metadata"]["asyncapi"] == "docs/asyncapi.yaml"


def _endpoint_totals(stats: list[dict], subject: str) -> dict:
    """Sum of one endpoint's counters over every instance (queue groups spread requests)."""
    tot = {"num_requests": 0, "num_errors": 0, "processing_time": 0, "codes": {}}
    for st in stats:
        assert st["type"] == "io.nats.micro.v1.stats_response"
        for e in st["endpoints"]:
            if e["subject"] != subject:
                continue
            for k in ("num_requests", "num_errors", "processing_time"):
                tot[k] += e[k]
            for c, n in ((e.get("data") or {}).get("codes") or {}).items():
                tot["codes"][c] = tot["codes"].get(c, 0) + n
    return tot


async def test_stats_count_requests_errors_and_time(ready, nc, uid):
    before = _endpoint_totals(await discover(nc, "STATS", "tips-scorer"), S.TIPS_SCORE)
    for i in range(4):
        assert (await request_json(nc, S.TIPS_SCORE, {"user_id": f"{uid}-{i}"}))["ok"]
    bad = [b"{not json", {"user_id": ""}, {"user_id": uid, "policy": "nope"}]
    for payload in bad:
        assert (await request_json(nc, S.TIPS_SCORE, payload))["ok"] is False
    after = _endpoint_totals(await discover(nc, "STATS", "tips-scorer"), S.TIPS_SCORE)
    assert after["num_requests"] - before["num_requests"] == 7
    assert after["num_errors"] - before["num_errors"] == 3
    codes = {c: n - before["codes"].get(c, 0) for c, n in after["codes"].items()}
    assert codes.get("invalid_request") == 2 and codes.get("unknown_policy") == 1
    assert after["processing_time"] > before["processing_time"]
    for st in await discover(nc, "STATS", "tips-scorer"):
        for e in st["endpoints"]:
            if e["num_requests"]:
                assert e["average_processing_time"] == e["processing_time"] // e["num_requests"]
                assert e["average_processing_time"] > 0

    g0 = _endpoint_totals(await discover(nc, "STATS", "tips-generator"), S.TIPS_GENERATE)
    r = await request_json(nc, S.TIPS_GENERATE, {"user_id": uid, "prompt_version": "v999"},
                           timeout=3)
    assert r["error"]["code"] == "unknown_prompt_version"
    g1 = _endpoint_totals(await discover(nc, "STATS", "tips-generator"), S.TIPS_GENERATE)
    assert (g1["num_requests"] - g0["num_requests"], g1["num_errors"] - g0["num_errors"]) == (1, 1)


async def test_error_replies_carry_adr32_headers_and_the_contract_body(ready, nc, uid):
    msg = await nc.request(S.TIPS_SCORE, json.dumps({"user_id": uid, "policy": "nope"}).encode(),
                           timeout=2)
    body = json.loads(msg.data)
    assert body["ok"] is False and body["error"]["code"] == "unknown_policy"
    assert msg.headers["Nats-Service-Error-Code"] == "400"
    assert msg.headers["Nats-Service-Error"].startswith("unknown_policy: ")
    ok = await nc.request(S.TIPS_SCORE, json.dumps({"user_id": uid}).encode(), timeout=2)
    assert json.loads(ok.data)["ok"] is True and not ok.headers
    nf = await nc.request(S.BENCH_RUNS, b'{"experiment": "no-such-experiment"}', timeout=30)
    assert json.loads(nf.data)["error"]["code"] == "not_found"
    assert nf.headers["Nats-Service-Error-Code"] == "404"

"""Fuzz of every subject's payloads against the real workers (subprocesses).

For every request-reply subject: a fixed corpus of nasty payloads plus property-based
payloads (hypothesis). Each request must get, in time, strict JSON with ``ok`` and either a
valid answer or a typed error — ``internal`` counts as a crash (an unhandled exception);
the worker keeps its pid; a rejected request leaves Redis byte-for-byte unchanged.
JetStream subjects (``feedback.>``, ``signals.>``): a rejected message is dead-lettered
and changes nothing; an accepted one is consistent with the contract.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter

import nats.errors
import pytest
from hypothesis import HealthCheck, assume, given, settings

from tests.chaoslib import dlq_count, record, score
from tests.fuzz.fuzzlib import (
    CORPUS,
    EXAMPLES,
    NATS_MAX,
    check_ok,
    check_reply,
    diff,
    encoded,
    feedback_req,
    generate_req,
    leaderboard_req,
    score_req,
    settle,
    signal_req,
    snapshot,
    stats_req,
)
from tipsml.state import event_key

pytestmark = [pytest.mark.system, pytest.mark.slow]

SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), print_blob=True)
TALLY: dict[str, Counter] = {}
SUBJECT_WORKER = {"tips.score": "scorer", "tips.stats": "scorer", "tips.reset": "scorer",
                  "tips.generate": "generator", "bench.leaderboard": "bench"}


def _strict_json(data: bytes):
    """The oracle's JSON: strict UTF-8, no byte-order mark (RFC 8259 lets a parser refuse
    one; Python's json.loads(bytes) would silently skip it)."""
    return json.loads(data.decode("utf-8"))


def _tally(subject: str, outcome: str) -> None:
    TALLY.setdefault(subject, Counter())[outcome] += 1


async def _ask(fz, subject: str, data: bytes, timeout: float = 3.0):
    state = {"dirty": True}
    before = await snapshot(fz.r)
    t0 = time.monotonic()
    try:
        msg = await fz.nc.request(subject, data, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - no answer in time = the worker dropped it
        _tally(subject, "crash:no_reply")
        raise AssertionError(f"{subject}: no reply ({type(e).__name__}) to {data[:200]!r}") from e
    took = time.monotonic() - t0
    try:
        rep = check_reply(msg.data)
    except (AssertionError, ValueError) as e:
        _tally(subject, "crash:bad_reply")
        raise AssertionError(
            f"{subject}: bad reply {msg.data[:300]!r} to {data[:200]!r}: {e}") from e
    if rep["ok"]:
        _tally(subject, "ok")
        state["dirty"] = True
    else:
        code = rep["error"]["code"]
        _tally(subject, "internal" if code == "internal" else f"error:{code}")
        assert code != "internal", f"{subject}: internal error on {data[:300]!r}: {rep}"
        after = await snapshot(fz.r)
        changed = diff(before, after)
        if changed:
            _tally(subject, "crash:state_changed")
        assert not changed, f"{subject}: rejected request changed Redis {changed}: {data[:200]!r}"
    return rep, took


def _request_reply(fz, subject: str, data: bytes, req=None):
    worker = SUBJECT_WORKER[subject]
    if worker not in fz.workers:
        pytest.skip(f"{worker} worker not running")
    fz.run(settle(fz.r))
    rep, _took = fz.run(_ask(fz, subject, data))
    if rep["ok"]:
        try:
            check_ok(subject, req, rep)
        except (AssertionError, KeyError, TypeError) as e:
            _tally(subject, "crash:invalid_answer")
            raise AssertionError(
                f"{subject}: invalid ok answer {rep} to {data[:200]!r}: {e}") from e
    alive = fz.alive()[worker]
    if not alive:
        _tally(subject, "crash:worker_died")
    assert alive, f"{worker} died on {data[:200]!r}"


SUBJECTS = ["tips.score", "tips.stats", "tips.reset", "tips.generate", "bench.leaderboard"]




def _corpus_params():
    for i in range(len(CORPUS)):
        for subject in SUBJECTS:
            yield pytest.param(subject, i, id=f"{i}-{subject}")


@pytest.mark.parametrize("subject,i", list(_corpus_params()))
def test_corpus(fuzz, subject, i):
    data = CORPUS[i]
    if len(data) > NATS_MAX:
        # the client refuses it before it reaches any worker (NATS max_payload)
        with pytest.raises(nats.errors.MaxPayloadError):
            fuzz.run(fuzz.nc.request(subject, data, timeout=2))
        _tally(subject, "refused_by_nats")
        return
    try:
        req = _strict_json(data)
    except (ValueError, RecursionError):
        req = None
    _request_reply(fuzz, subject, data, req)


def _prop(subject, strategy):
    @SETTINGS
    @given(data=encoded(strategy))
    def run(fuzz, data):
        assume(len(data) < NATS_MAX)
        try:
            req = _strict_json(data)
        except (ValueError, RecursionError):
            req = None
        _request_reply(fuzz, subject, data, req)
    return run


test_fuzz_score = _prop("tips.score", score_req)
test_fuzz_stats = _prop("tips.stats", stats_req)
test_fuzz_reset = _prop("tips.reset", stats_req)
test_fuzz_generate = _prop("tips.generate", generate_req)
test_fuzz_leaderboard = _prop("bench.leaderboard", leaderboard_req)


# ---------------------------------------------------------------- feedback.>
def _valid_feedback(obj) -> bool:
    """Independent oracle of the contract (DESIGN.md) for a feedback event."""
    if not isinstance(obj, dict):
        return False
    dw, pv = obj.get("dwell_ms"), obj.get("prompt_version")
    if dw is not None and not (isinstance(dw, (int, float)) and not isinstance(dw, bool)
                               and 0 <= dw <= 7 * 86400 * 1000):
        return False
    if pv is not None and not (isinstance(pv, str) and len(pv) <= 64):
        return False
    for k in ("event_id", "decision_id", "user_id"):
        if not (isinstance(obj.get(k), str) and 1 <= len(obj[k]) <= 128):
            return False
    rc, rw = obj.get("reaction"), obj.get("reward")
    if rc is not None and rc not in ("completed", "accepted", "dismissed", "ignored"):
        return False
    if rw is not None and not (isinstance(rw, (int, float)) and not isinstance(rw, bool)
                               and math.isfinite(rw) and 0 <= rw <= 1):
        return False
    return rc is not None or rw is not None


async def _consumer_done(fz, stream, durable, seq, timeout=15.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ci = await fz.js.consumer_info(stream, durable)
        if ci.ack_floor.stream_seq >= seq and ci.num_ack_pending == 0:
            return True
        await __import__("asyncio").sleep(0.02)
    return False


@pytest.fixture(scope="module")
def decisions(fuzz):
    async def make():
        out = []
        for i in range(8):
            u = f"fzf-{i}"
            rep = await score(fuzz.nc, u, i)
            assert rep["ok"], rep
            out.append((rep["decision_id"], u))
        return out
    d = fuzz.run(make())
    fuzz.run(settle(fuzz.r))
    return d


def test_fuzz_feedback(fuzz, decisions):
    strategy = encoded(feedback_req(decisions))

    @SETTINGS
    @given(data=strategy)
    def run(data):
        assume(len(data) < NATS_MAX)
        try:
            obj = _strict_json(data)
        except (ValueError, RecursionError):
            obj = None

        async def go():
            before = await settle(fuzz.r, 1.0)
            dlq0 = await dlq_count(fuzz.js, "dlq.feedback")
            ack = await fuzz.js.publish("feedback.fuzz", data,
                                        headers={"Nats-Msg-Id": f"fz-{uuid.uuid4()}"})
            assert await _consumer_done(fuzz, "FEEDBACK", "feedback-consumer", ack.seq), \
                f"feedback not settled (nak'ed or stuck): {data[:200]!r}"
            dead = await dlq_count(fuzz.js, "dlq.feedback") - dlq0
            after = await snapshot(fuzz.r)
            return before, after, dead

        before, after, dead = fuzz.run(go())
        valid = _valid_feedback(obj)
        _tally("feedback.>", "accepted" if not dead else "dead_lettered")
        assert fuzz.alive()["feedback"], "feedback consumer died"
        if dead:
            changed = diff(before, after)
            if changed:
                _tally("feedback.>", "crash:state_changed")
            assert not changed, f"rejected feedback changed Redis {changed}: {data[:200]!r}"
            if valid and len(data) <= 64 * 1024:
                _tally("feedback.>", "crash:valid_rejected")
                raise AssertionError(f"valid feedback dead-lettered: {data[:300]!r}")
            rw = obj.get("reward") if isinstance(obj, dict) else None
            if isinstance(rw, (int, float)) and not isinstance(rw, bool) and not (
                    math.isfinite(rw) and 0 <= rw <= 1):
                _tally("feedback.>", "rejected_bad_reward")
        else:
            if not valid:
                _tally("feedback.>", "crash:invalid_accepted")
                raise AssertionError(f"invalid feedback accepted: {data[:300]!r}")
            recorded = fuzz.run(fuzz.r.exists(event_key(obj["event_id"], obj["user_id"])))
            assert recorded, "no outcome recorded"

    run()


# ---------------------------------------------------------------- signals.>
def _invalid_signal(draw_obj) -> bool:
    o = draw_obj
    if not isinstance(o, dict):
        return True
    u = o.get("user_id")
    return not (isinstance(u, str) and 1 <= len(u) <= 128)


def test_fuzz_signals_rejected_change_nothing(fuzz):
    """Only invalid signals here (missing/ill-typed user_id or not an object): each one must
    be dead-lettered and Redis must not move at all."""
    @SETTINGS
    @given(data=encoded(signal_req))
    def run(data):
        assume(len(data) < NATS_MAX)
        try:
            obj = _strict_json(data)
        except (ValueError, RecursionError):
            obj = None
        assume(_invalid_signal(obj))

        async def go():
            before = await settle(fuzz.r, 1.0)
            dlq0 = await dlq_count(fuzz.js, "dlq.signals")
            ack = await fuzz.js.publish("signals.fuzz.x", data)
            ok = await _consumer_done(fuzz, "SIGNALS", "generator-signals", ack.seq)
            dead = await dlq_count(fuzz.js, "dlq.signals") - dlq0
            return before, await snapshot(fuzz.r), dead, ok

        before, after, dead, ok = fuzz.run(go())
        _tally("signals.>", "dead_lettered" if dead else "accepted")
        assert fuzz.alive()["generator"], "generator died"
        assert ok, f"poison signal not settled: {data[:200]!r}"
        assert dead == 1, f"invalid signal not dead-lettered: {data[:200]!r}"
        changed = diff(before, after)
        assert not changed, f"rejected signal changed Redis {changed}: {data[:200]!r}"

    run()


def test_fuzz_signals_mixed_worker_survives(fuzz):
    """Any signal (valid ones make the generator try a refresh against a dead LLM): the
    generator survives and still answers tips.generate."""
    @SETTINGS
    @given(data=encoded(signal_req))
    def run(data):
        assume(len(data) < NATS_MAX)
        fuzz.run(fuzz.js.publish("signals.fuzz.y", data))
        _tally("signals.>", "sent_mixed")

    run()
    time.sleep(1.0)
    assert fuzz.alive()["generator"]
    rep = fuzz.run(fuzz.nc.request("tips.generate", b'{"user_id": "after-fuzz"}', timeout=3))
    assert json.loads(rep.data)["ok"]


def test_zz_workers_alive_and_report(fuzz):
    """Last: every worker still has its original pid and answers; the tally is recorded."""
    assert all(fuzz.alive().values()), fuzz.alive()
    rep = fuzz.run(score(fuzz.nc, "fz-final"))
    assert rep["ok"] and not rep.get("fallback"), rep
    for subject, c in sorted(TALLY.items()):
        crashes = sum(v for k, v in c.items() if k.startswith("crash") or k == "internal")
        record(f"fuzz {subject}", cases=sum(v for k, v in c.items() if k != "sent_mixed") +
               c.get("sent_mixed", 0), crashes=crashes, outcomes=dict(c),
               worker_restarts=0)

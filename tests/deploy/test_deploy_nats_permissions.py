"""The shipped NATS config on the real nats-server: who may do what.

Every check is against the real server's verdict: an allowed action has its
effect (a reply, a PubAck, a fetched message), a refused one draws the server's
"Permissions Violation" error and has no effect. The JetStream set-up of each
worker is done with the workers' own code (``ensure_streams`` / ``ensure_consumer``
with the consumer specs of ``tipsml.subjects``), so a stream or durable added
there without a matching permission here fails this test.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import nats.errors
import pytest
from tipsml import subjects as S
from tipsml.natsutil import ensure_consumer, ensure_streams, publish_dead_letter

pytestmark = [pytest.mark.system]

WORKER_CONSUMERS = {
    "feedback": [S.FEEDBACK_CONSUMER],
    "generator": [S.SIGNALS_CONSUMER],
    "bench": [c for c in (getattr(S, "BENCH_JOBS_CONSUMER", None),
                          getattr(S, "BENCH_CELLS_CONSUMER", None)) if c is not None],
}


async def refused(nc, subject: str, action, timeout: float = 2.0) -> None:
    """Run ``action`` and assert the server answered with a permission violation
    naming ``subject``."""
    before = len(nc.perm_errors)
    try:
        await action()
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        pass  # a refused request never gets its answer
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        new = nc.perm_errors[before:]
        # nats-py lowercases the server's error line
        if any("permissions violation" in e and f'"{subject.lower()}"' in e for e in new):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected a permissions violation for {subject!r}; "
                         f"server errors: {nc.perm_errors[before:]}")


async def responder(nc, subject: str, queue: str = "", reply: bytes = b'{"ok":true}'):
    """Subscribe and answer every request; returns (sub, list of received payloads)."""
    got: list[bytes] = []

    async def cb(msg):
        got.append(msg.data)
        if msg.reply:
            await msg.respond(reply)

    sub = await nc.subscribe(subject, queue=queue, cb=cb)
    await nc.flush()
    return sub, got


async def test_unknown_user_and_wrong_password_refused(secured_stack):
    for creds in ({}, {"user": "recommender", "password": "wrong"},
                  {"user": "nobody", "password": "x"}):
        errors: list[Exception] = []

        async def on_error(e, errors=errors):
            errors.append(e)

        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(secured_stack.nats_url, allow_reconnect=False, connect_timeout=2,
                               max_reconnect_attempts=0, error_cb=on_error, **creds)
        assert any("authorization" in str(e).lower() for e in errors), (creds, errors)


async def test_recommender_requests_served_by_worker_users(connect_as):
    scorer, generator, rec = (await connect_as("scorer"), await connect_as("generator"),
                              await connect_as("recommender"))
    subs = [
        await responder(scorer, S.TIPS_SCORE, S.Q_SCORER, b'{"ok":true,"arm":"a"}'),
        await responder(scorer, S.TIPS_STATS, S.Q_SCORER),
        await responder(generator, S.TIPS_GENERATE, S.Q_GENERATOR, b'{"ok":true,"tip":"t"}'),
    ]
    for subject in (S.TIPS_SCORE, S.TIPS_STATS, S.TIPS_GENERATE):
        msg = await rec.request(subject, b'{"user_id":"u1"}', timeout=2)
        assert json.loads(msg.data)["ok"] is True, subject
    assert not scorer.perm_errors and not generator.perm_errors and not rec.perm_errors
    for sub, got in subs:
        assert len(got) == 1
        await sub.unsubscribe()


async def test_recommender_publishes_signals_and_feedback_to_jetstream(connect_as):
    admin, rec = await connect_as("admin"), await connect_as("recommender")
    await ensure_streams(admin.jetstream())
    js = rec.jetstream(timeout=2)
    eid = uuid.uuid4().hex
    ack = await js.publish("feedback.reaction", json.dumps({"event_id": eid}).encode(),
                           headers={"Nats-Msg-Id": eid})
    assert ack.stream == "FEEDBACK"
    ack = await js.publish("signals.app.opened", b'{"user_id":"u1","kind":"app.opened"}',
                           headers={"Nats-Msg-Id": uuid.uuid4().hex})
    assert ack.stream == "SIGNALS"
    assert not rec.perm_errors


async def test_recommender_refused_admin_and_worker_subjects(connect_as):
    admin, rec = await connect_as("admin"), await connect_as("recommender")
    # admin-side listeners prove that nothing refused reaches anyone
    listeners = [await responder(admin, s) for s in
                 (S.BENCH_RUN, S.TIPS_RESET, S.BENCH_LEADERBOARD, "decisions.>")]
    await refused(rec, "bench.run", lambda: rec.publish("bench.run", b"{}"))
    await refused(rec, "tips.reset",
                  lambda: rec.request("tips.reset", b'{"user_id":"u1"}', timeout=0.5))
    await refused(rec, "bench.leaderboard",
                  lambda: rec.request("bench.leaderboard", b"{}", timeout=0.5))
    await refused(rec, "decisions.egreedy-v1", lambda: rec.publish("decisions.egreedy-v1", b"{}"))
    await refused(rec, "$JS.API.STREAM.DELETE.FEEDBACK",
                  lambda: rec.jetstream(timeout=0.5).delete_stream("FEEDBACK"))
    await refused(rec, "$JS.API.CONSUMER.MSG.NEXT.FEEDBACK.feedback-consumer",
                  lambda: rec.publish("$JS.API.CONSUMER.MSG.NEXT.FEEDBACK.feedback-consumer",
                                      b"{}", reply=rec.new_inbox()))
    # it may not listen in on other users' traffic either
    await refused(rec, "tips.score", lambda: rec.subscribe("tips.score"))
    await refused(rec, "feedback.>", lambda: rec.subscribe("feedback.>"))
    await admin.flush()
    await asyncio.sleep(0.2)
    for sub, got in listeners:
        assert got == []
        await sub.unsubscribe()  # connections are session-wide: leave no responder behind


async def test_admin_may_reset_and_run_bench(connect_as):
    admin, scorer = await connect_as("admin"), await connect_as("scorer")
    sub, got = await responder(scorer, S.TIPS_RESET, S.Q_SCORER)
    msg = await admin.request(S.TIPS_RESET, b'{"user_id":"u1"}', timeout=2)
    assert json.loads(msg.data) == {"ok": True} and len(got) == 1
    await sub.unsubscribe()
    js = admin.jetstream(timeout=2)
    await ensure_streams(js)
    ack = await js.publish(S.BENCH_RUN, b'{"experiment":"deploy-test"}',
                           headers={"Nats-Msg-Id": uuid.uuid4().hex})
    assert ack.stream == "BENCH"
    info = await js.stream_info("DEADLETTER")  # stream administration
    assert info.config.name == "DEADLETTER"
    assert not admin.perm_errors


@pytest.mark.parametrize("user", ["scorer", "generator", "feedback", "bench"])
async def test_worker_jetstream_setup_with_its_own_user(connect_as, user):
    """What the worker does at start-up and per message, under its own user:
    ensure every declared stream, bind its durables, fetch, ack, dead-letter."""
    nc = await connect_as(user)
    js = nc.jetstream(timeout=3)
    await ensure_streams(js)
    for name in S.STREAMS:
        assert (await js.stream_info(name)).config.name == name
    admin = await connect_as("admin")
    ajs = admin.jetstream(timeout=3)
    for spec in WORKER_CONSUMERS.get(user, []):
        await ensure_consumer(js, spec)
        await ensure_consumer(js, spec)  # idempotent at every start
        psub = await js.pull_subscribe_bind(spec.durable, stream=spec.stream)
        subject = spec.filter_subject.replace(">", f"deploytest.{uuid.uuid4().hex[:8]}")
        await ajs.publish(subject, b'{"probe":true}', headers={"Nats-Msg-Id": uuid.uuid4().hex})
        mine = None
        for _ in range(20):  # earlier tests may have left messages in the stream
            for m in await psub.fetch(10, timeout=3):
                await m.ack_sync(timeout=3)
                if m.subject == subject:
                    mine = m
            if mine:
                break
        assert mine is not None, f"{user} did not get its message on {spec.durable}"
        ci = await ajs.consumer_info(spec.stream, spec.durable)
        assert ci.num_ack_pending == 0
    dlq = {"feedback": S.DLQ_FEEDBACK, "generator": S.DLQ_SIGNALS, "bench": S.DLQ_BENCH}.get(user)
    if dlq:
        await publish_dead_letter(js, dlq, b"{}", "deploy-test", msg_id=uuid.uuid4().hex)
    if user == "scorer":
        ack = await js.publish(S.decisions_subject("egreedy-v1"), b"{}",
                               headers={"Nats-Msg-Id": uuid.uuid4().hex})
        assert ack.stream == "DECISIONS"
    assert not nc.perm_errors, nc.perm_errors


async def test_workers_confined_to_their_own_subjects(connect_as):
    scorer, gen = await connect_as("scorer"), await connect_as("generator")
    fb, bench = await connect_as("feedback"), await connect_as("bench")
    # nobody but admin starts bench jobs or resets users
    for nc in (scorer, gen, fb, bench):
        await refused(nc, "bench.run", lambda nc=nc: nc.publish("bench.run", b"{}"))
        await refused(nc, "tips.reset", lambda nc=nc: nc.publish("tips.reset", b"{}"))
        await refused(nc, "$JS.API.STREAM.DELETE.FEEDBACK",
                      lambda nc=nc: nc.jetstream(timeout=0.5).delete_stream("FEEDBACK"))
        await refused(nc, "$JS.API.STREAM.PURGE.DECISIONS",
                      lambda nc=nc: nc.jetstream(timeout=0.5).purge_stream("DECISIONS"))
    # each serves only its own subjects, and only in its queue group
    await refused(scorer, "tips.generate", lambda: scorer.subscribe("tips.generate",
                                                                    queue=S.Q_GENERATOR))
    await refused(scorer, "tips.score", lambda: scorer.subscribe("tips.score"))
    await refused(gen, "tips.score", lambda: gen.subscribe("tips.score", queue=S.Q_SCORER))
    await refused(bench, "tips.score", lambda: bench.subscribe("tips.score", queue=S.Q_SCORER))
    await refused(fb, "feedback.>", lambda: fb.subscribe("feedback.>"))
    # data subjects of the others
    await refused(scorer, "feedback.reaction", lambda: scorer.publish("feedback.reaction", b"{}"))
    await refused(gen, "decisions.egreedy-v1", lambda: gen.publish("decisions.egreedy-v1", b"{}"))
    await refused(fb, "signals.app.opened", lambda: fb.publish("signals.app.opened", b"{}"))
    await refused(bench, "dlq.feedback", lambda: bench.publish("dlq.feedback", b"{}"))
    await refused(gen, "dlq.feedback", lambda: gen.publish("dlq.feedback", b"{}"))
    # another worker's durable
    await refused(fb, "$JS.API.CONSUMER.MSG.NEXT.SIGNALS.generator-signals",
                  lambda: fb.publish("$JS.API.CONSUMER.MSG.NEXT.SIGNALS.generator-signals",
                                     b"{}", reply=fb.new_inbox()))
    await refused(gen, "$JS.API.CONSUMER.DELETE.FEEDBACK.feedback-consumer",
                  lambda: gen.jetstream(timeout=0.5).delete_consumer("FEEDBACK",
                                                                     "feedback-consumer"))
    await refused(fb, "$JS.API.CONSUMER.DELETE.FEEDBACK.feedback-consumer",
                  lambda: fb.jetstream(timeout=0.5).delete_consumer("FEEDBACK",
                                                                    "feedback-consumer"))
    # replies only to requests actually received (allow_responses), not to any inbox
    await refused(scorer, "_INBOX.forged", lambda: scorer.publish("_INBOX.forged", b"{}"))


@pytest.mark.parametrize("user,service,endpoints", [
    ("scorer", "tips-scorer", S.SCORER_ENDPOINTS),
    ("generator", "tips-generator", S.GENERATOR_ENDPOINTS),
    ("bench", "tips-bench", S.BENCH_ENDPOINTS),
])
async def test_workers_register_their_services_and_the_recommender_discovers_them(
        connect_as, user, service, endpoints):
    """Each worker user may run its NATS Services API service (the $SRV control subjects
    and every endpoint of tipsml.subjects on its queue group); the recommender may ask
    $SRV.PING / INFO / STATS."""
    from tipsml.client import discover
    from tipsml.service import respond, start_service

    worker, rec = await connect_as(user), await connect_as("recommender")

    async def ok(msg):
        return await respond(msg, b'{"ok":true}')

    svc = await start_service(worker, name=service, version="0.1.0", description="perm test",
                              queue_group=endpoints[0].queue_group)
    for ep in endpoints:
        await svc.add_request_endpoint(ep.name, ep.subject, ok)
    await worker.flush()
    try:
        infos = [i for i in await discover(rec, "INFO", service) if i["id"] == svc.id]
        assert len(infos) == 1
        assert {e["subject"] for e in infos[0]["endpoints"]} == {ep.subject for ep in endpoints}
        assert [p for p in await discover(rec, "PING") if p["id"] == svc.id]
        admin = await connect_as("admin")
        for ep in endpoints:  # admin may call every endpoint, the worker user answers it
            msg = await admin.request(ep.subject, b"{}", timeout=2)
            assert json.loads(msg.data)["ok"] is True, ep.subject
        stats = [s for s in await discover(rec, "STATS", service) if s["id"] == svc.id]
        assert sum(e["num_requests"] for e in stats[0]["endpoints"]) == len(endpoints)
        assert not worker.perm_errors and not rec.perm_errors
    finally:
        await svc.stop()

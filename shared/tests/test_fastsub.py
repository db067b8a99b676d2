"""tipsml.messaging.fastsub against real nats-server: nats-py requesters get their replies
through it (plain and with headers, many in flight, large payloads split across reads),
it keeps its queue group, it comes back by itself after a server restart, it refuses a
wrong password, and it stops taking messages when unsubscribed."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import nats
import pytest

from tipsdev.launcher import EmbeddedStack
from tipsml.messaging.fastsub import FastConnection

pytestmark = pytest.mark.system


def _echo(fc: FastConnection, seen: list | None = None):
    def cb(msg):
        if seen is not None:
            seen.append(msg)
        fc.write_pub(msg.reply, b"re:" + msg.data)
    return cb


async def test_requests_get_their_replies(stack, uid):
    fc = await FastConnection([stack.nats_url.split(",")[0]], name="t-fast").connect()
    nc = await nats.connect(stack.nats_url.split(",")[0])
    seen: list = []
    try:
        await fc.subscribe(f"fast.{uid}", queue="q", cb=_echo(fc, seen))
        big = b"x" * 200_000  # several socket reads for one frame
        bodies = [f"r{i}".encode() for i in range(300)] + [big]
        replies = await asyncio.gather(*(nc.request(f"fast.{uid}", b, timeout=5) for b in bodies))
        assert [r.data for r in replies] == [b"re:" + b for b in bodies]
        # a request with headers arrives as HMSG: its headers are parsed
        r = await nc.request(f"fast.{uid}", b"h", timeout=5, headers={"Tips-Admin-Token": "t"})
        assert r.data == b"re:h"
        assert seen[-1].headers == {"Tips-Admin-Token": "t"}
        assert seen[-1].subject == f"fast.{uid}" and seen[-1].reply.startswith("_INBOX.")
    finally:
        await nc.close()
        await fc.close()


async def test_error_replies_carry_headers(stack, uid):
    fc = await FastConnection([stack.nats_url.split(",")[0]]).connect()
    nc = await nats.connect(stack.nats_url.split(",")[0])

    def cb(msg):
        asyncio.get_running_loop().create_task(msg._client.publish(
            msg.reply, b'{"ok":false}', headers={"Nats-Service-Error-Code": "400"}))

    try:
        await fc.subscribe(f"fast.err.{uid}", queue="q", cb=cb)
        r = await nc.request(f"fast.err.{uid}", b"{}", timeout=5)
        assert r.data == b'{"ok":false}'
        assert r.headers == {"Nats-Service-Error-Code": "400"}
    finally:
        await nc.close()
        await fc.close()


async def test_queue_group_shares_and_unsubscribe_stops(stack, uid):
    url = stack.nats_url.split(",")[0]
    a, b = await FastConnection([url]).connect(), await FastConnection([url]).connect()
    nc = await nats.connect(url)
    got_a: list = []
    got_b: list = []
    try:
        sub_a = await a.subscribe(f"fast.q.{uid}", queue="grp", cb=_echo(a, got_a))
        await b.subscribe(f"fast.q.{uid}", queue="grp", cb=_echo(b, got_b))
        await asyncio.gather(*(nc.request(f"fast.q.{uid}", b"x", timeout=5) for _ in range(200)))
        assert len(got_a) + len(got_b) == 200  # each request once, to one member
        await sub_a.unsubscribe()
        before = len(got_a)
        await asyncio.gather(*(nc.request(f"fast.q.{uid}", b"x", timeout=5) for _ in range(50)))
        assert len(got_a) == before and len(got_b) >= 50
    finally:
        await nc.close()
        await a.close()
        await b.close()


async def test_reconnects_after_a_server_restart(uid):
    with EmbeddedStack(redis=False) as st:
        fc = await FastConnection([st.nats_url], name="t-restart").connect()
        fc.reconnect_wait = 0.1
        await fc.subscribe(f"fast.r.{uid}", queue="q", cb=_echo(fc))
        nc = await nats.connect(st.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        try:
            assert (await nc.request(f"fast.r.{uid}", b"1", timeout=5)).data == b"re:1"
            await asyncio.get_running_loop().run_in_executor(None, st.restart, "nats")
            deadline = asyncio.get_running_loop().time() + 20
            while True:  # both sides reconnect by themselves; the subscription is back
                try:
                    r = await nc.request(f"fast.r.{uid}", b"2", timeout=1)
                    break
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                        nats.errors.ConnectionClosedError):
                    assert asyncio.get_running_loop().time() < deadline, "no reply after restart"
                    await asyncio.sleep(0.2)
            assert r.data == b"re:2"
            assert fc.reconnects >= 1
        finally:
            await nc.close()
            await fc.close()


async def test_wrong_password_is_refused(tmp_path, uid):
    conf = tmp_path / "users.conf"
    conf.write_text('authorization { users = [ {user: "svc", password: "right"} ] }\n')
    with EmbeddedStack(redis=False, nats_config=str(conf)) as st:
        host = st.nats_url.split("//", 1)[1]
        with pytest.raises(ConnectionError, match="(?i)authorization"):
            await FastConnection([f"nats://svc:wrong@{host}"], connect_timeout=2).connect()
        fc = await FastConnection([f"nats://{host}"], user="svc", password="right").connect()
        await fc.close()


async def test_scorer_serves_tips_score_on_its_own_connection(stack, scorer_service, uid):
    """The scorer's tips.score subscription is on the fast connection, not nats-py's."""
    port = getattr(stack, "nats_monitor_port", None)
    if not port:
        pytest.skip("no monitoring port on this stack")
    nc = await nats.connect(stack.nats_url.split(",")[0])
    try:
        r = await nc.request("tips.score", json.dumps({"user_id": f"fast-{uid}"}).encode(),
                             timeout=5)
        assert json.loads(r.data)["ok"] is True
    finally:
        await nc.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?subs=1", timeout=5) as resp:
        conns = json.loads(resp.read())["connections"]
    fast = [c for c in conns if c.get("name") == "scorer-score"]
    assert fast and "tips.score" in fast[0].get("subscriptions_list", [])


class _FakeTransport:
    def __init__(self):
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data):
        self.written.append(data)

    def abort(self):
        self.aborted = True


@pytest.mark.parametrize("parser", ["c", "python"])
def test_frames_split_across_reads_and_garbage(parser, monkeypatch):
    """Pure parsing (no server): a frame cut anywhere is handed on once complete, headers
    are parsed, the server's PING is answered, and bytes that are not the protocol make
    the connection start again instead of being half-read (the C parser and the Python
    one)."""
    from tipsml.messaging import fastsub
    from tipsml.messaging.fastsub import FastSub, _Proto

    if parser == "python":
        monkeypatch.setattr(fastsub, "_frames", None)
    elif fastsub._frames is None:
        pytest.skip("the C part is not built")

    fc = FastConnection(["nats://127.0.0.1:1"])
    got: list = []
    fc._subs[1] = FastSub(fc, 1, "s", "q", got.append)
    proto = _Proto(fc)
    proto.transport = _FakeTransport()
    stream = (b"MSG s 1 _INBOX.a 5\r\nhello\r\nPING\r\n"
              b"HMSG s 1 _INBOX.b 18 20\r\nNATS/1.0\r\nK: v\r\n\r\nhi\r\nMSG s 9 3\r\nxyz\r\n")
    for i in range(len(stream)):  # one byte at a time: every cut point
        fc._feed(proto, stream[i:i + 1])
    assert [(m.reply, m.data, m.headers) for m in got] == [
        ("_INBOX.a", b"hello", None), ("_INBOX.b", b"hi", {"K": "v"})]  # sid 9: not ours
    assert proto.transport.written == [b"PONG\r\n"]
    assert not proto.buf
    fc._feed(proto, b"MSG s 1 _INBOX.c notanumber\r\n")
    assert proto.transport.aborted and not proto.buf


def test_c_and_python_parsers_hand_on_the_same_frames(monkeypatch):
    """Random streams of MSG / HMSG (with and without reply, empty payloads, payloads
    holding CRLF and protocol words) and control lines, cut at random points: the C
    parser hands on what the Python parser does, in the same order."""
    import random

    from tipsml.messaging import fastsub
    from tipsml.messaging.fastsub import FastSub, _Proto

    if fastsub._frames is None:
        pytest.skip("the C part is not built")
    rnd = random.Random(4)
    frames = []
    for i in range(400):
        kind = rnd.choice(["msg", "hmsg", "ping", "ok", "info"])
        body = rnd.choice([b"", b"x", b"MSG a 1 2\r\n", b"\r\n\r\n", bytes(range(256)),
                           b"{\"stream\":\"DECISIONS\",\"seq\":%d}" % i])
        reply = rnd.choice([b"", b" _INBOX.r%d" % i])
        sid = rnd.choice([1, 2, 7])
        if kind == "msg":
            frames.append(b"MSG s.%d %d%s %d\r\n%s\r\n" % (i, sid, reply, len(body), body))
        elif kind == "hmsg":
            hdr = b"NATS/1.0\r\nNats-Msg-Id: m%d\r\nX:  y \r\n\r\n" % i
            frames.append(b"HMSG s.%d %d%s %d %d\r\n%s%s\r\n"
                          % (i, sid, reply, len(hdr), len(hdr) + len(body), hdr, body))
        else:
            frames.append({"ping": b"PING\r\n", "ok": b"+OK\r\n",
                           "info": b"INFO {\"max_payload\":1048576}\r\n"}[kind])
    stream = b"".join(frames)

    def run(c: bool) -> tuple[list, list]:
        monkeypatch.setattr(fastsub, "_frames", fastsub._hot.nats_frames if c else None)
        fc = FastConnection(["nats://127.0.0.1:1"])
        got: list = []
        for sid in (1, 2):
            fc._subs[sid] = FastSub(fc, sid, "s.>", "q", got.append)
        proto = _Proto(fc)
        proto.transport = _FakeTransport()
        cuts = random.Random(9)
        pos = 0
        while pos < len(stream):
            n = cuts.choice([1, 2, 3, 7, 64, 1000])
            fc._feed(proto, stream[pos:pos + n])
            pos += n
        assert not proto.buf and not proto.transport.aborted
        return ([(m.subject, m.reply, m.data, m.headers) for m in got],
                proto.transport.written)

    c, py = run(True), run(False)
    assert c == py and len(c[0]) > 50 and len(c[1]) > 10

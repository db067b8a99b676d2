"""The shipped Redis ACL (deploy/redis/users.acl.template) on a real redis-server.

The ACL file is rendered by the same script compose's redis service runs
(deploy/redis/render-acl.sh: passwords from the environment, stored as SHA-256), then
loaded by a real redis-server. Each worker's user runs that worker's real code paths
(the scorer's decision, stats and reset; the feedback consumer's reward script; the
generator's cache/context/exposure operations; the bench job store) and is refused
everything else: other workers' keys, @dangerous/@admin commands, and no login at all
without a user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import redis.exceptions

from tipsdev.launcher import find_redis_server, free_port, redis_ping

pytestmark = [pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]
REDIS_DIR = ROOT / "deploy" / "redis"
TEMPLATE = REDIS_DIR / "users.acl.template"
USERS = ("admin", "scorer", "feedback", "generator", "bench")


def pw_var(user: str) -> str:
    return f"REDIS_{user.upper()}_PASSWORD"


def render(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(REDIS_DIR / "render-acl.sh"), str(TEMPLATE), str(out)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
                          check=False)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    """redis-server with the rendered ACL file; yields (port, passwords)."""
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum (coreutils/busybox) is needed to render the ACL file")
    d = tmp_path_factory.mktemp("redis-acl")
    passwords = {u: secrets.token_hex(20) for u in USERS}
    r = render(d / "users.acl", {pw_var(u): p for u, p in passwords.items()})
    assert r.returncode == 0, r.stderr
    text = (d / "users.acl").read_text()
    assert all(p not in text for p in passwords.values()), "a plaintext password in the ACL file"
    port = free_port()
    proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                             "--aclfile", str(d / "users.acl"), "--save", "", "--appendonly",
                             "no", "--dir", str(d)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis_ping(port)  # answers -NOAUTH: the server is up
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port, passwords
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest_asyncio.fixture(scope="module")
async def as_user(acl_redis):
    port, passwords = acl_redis
    conns: list = []

    def _make(user: str):
        r = aioredis.from_url(f"redis://{user}:{passwords[user]}@127.0.0.1:{port}/0")
        conns.append(r)
        return r

    yield _make
    for r in conns:
        await r.aclose()


async def denied(coro) -> None:
    with pytest.raises((redis.exceptions.NoPermissionError, redis.exceptions.ResponseError)) as e:
        await coro
    text = str(e.value).lower()
    assert "permission" in text or "noperm" in text or "can't run" in text, e.value


def test_placeholder_or_empty_passwords_are_refused(tmp_path):
    env = {pw_var(u): secrets.token_hex(20) for u in USERS}
    for bad in ("change-me-redis", "", "short"):
        r = render(tmp_path / "users.acl", {**env, "REDIS_SCORER_PASSWORD": bad})
        assert r.returncode == 78, r
        assert "REDIS_SCORER_PASSWORD" in r.stderr
        assert not (tmp_path / "users.acl").exists()


async def test_no_login_without_a_user(acl_redis):
    port, _ = acl_redis
    r = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(redis.exceptions.AuthenticationError):
        await r.get("tips:st:x:y")
    await r.aclose()
    wrong = aioredis.from_url(f"redis://scorer:wrong@127.0.0.1:{port}/0")
    with pytest.raises(redis.exceptions.AuthenticationError):
        await wrong.ping()
    await wrong.aclose()


async def test_scorer_and_feedback_run_their_real_code(as_user):
    """A decision (scorer: load state, record decision + pulls), its reward (feedback:
    the reward script across tips:evt / tips:dec / tips:gen / tips:st), stats and reset
    (scorer) - each under its own Redis user."""
    from scorer.scoring import Scorer
    from scorer.settings import ScorerSettings
    from tipsml.contract import ScoreRequest
    from tipsml.state import StateStore

    settings = ScorerSettings(redis_timeout_s=1.0)
    s_store = StateStore(as_user("scorer"))
    f_store = StateStore(as_user("feedback"))
    await s_store.warm(2, scripts=False)  # as the scorer starts (scorer.main)
    scorer = Scorer(settings, s_store)
    user = f"acl-{uuid.uuid4().hex[:8]}"
    out = await scorer.score(ScoreRequest(user_id=user))
    assert out.reply["ok"] and not out.reply["fallback"], out.reply
    await s_store.record_decisions([out.record])
    res = await f_store.apply_reward(uuid.uuid4().hex, out.reply["decision_id"], user, 1.0)
    assert res.outcome == "applied", res
    stats = await scorer.stats(user, None)
    assert stats["ok"] and stats["user_id"] == user
    reset = await scorer.reset(user, None)
    assert reset["keys_deleted"] >= 1
    # the default-reward sweep (feedback): due decisions of a shard, its lease, the backlog
    from tipsml.state import DUE_SHARDS, due_shard

    shard = due_shard(out.reply["decision_id"])
    far = out.record["ts"] + 10 * 86400 * 365
    due = await f_store.due(shard, far, 1000)
    assert any(d[0] == out.reply["decision_id"] for d in due)
    assert await f_store.claim_shard(shard, "acl-test", 2000)
    assert await f_store.due_backlog(far) >= 1 and DUE_SHARDS >= 1
    await f_store.forget_due(shard, [d[2] for d in due if d[0] == out.reply["decision_id"]])


async def test_the_scorer_runs_no_lua(as_user):
    """The scorer's user may not run or load a script, on its own keys either: a stolen
    scorer credential cannot block the server with a long script (Redis runs one at a
    time). The feedback consumer's may (its reward script)."""
    from tipsml.state import APPLY_REWARD_LUA

    scorer, feedback = as_user("scorer"), as_user("feedback")
    key = f"tips:st:{{acl-{uuid.uuid4().hex[:8]}}}:egreedy-v1"
    await denied(scorer.eval("while true do end", 1, key))
    await denied(scorer.script_load("return 1"))
    sha = await feedback.script_load(APPLY_REWARD_LUA)
    await denied(scorer.evalsha(sha, 1, key))
    await denied(scorer.execute_command("FUNCTION", "LIST"))
    assert await scorer.hmget(key, ["a", "b"]) == [None, None]  # its read is allowed


async def test_generator_and_bench_operations(as_user):
    gen, bench = as_user("generator"), as_user("bench")
    u = uuid.uuid4().hex[:8]
    p = gen.pipeline(transaction=True)
    p.lpush(f"tips:cand:{u}:focus_block:v1:m", "tip")
    p.lrange(f"tips:sig:{u}", 0, 9)
    p.set(f"tips:genctx:{u}", "{}", ex=60)
    p.sadd(f"tips:gencombo:{u}", "focus_block|v1|m")
    p.hset(f"tips:gen:{u}-d1", mapping={"prompt_version": "v1"})
    p.hincrby("tips:pv:served", "v1", 1)
    p.xadd("tips:exposures", {"u": u}, maxlen=1000, approximate=True)
    await p.execute()
    assert await gen.set(f"tips:genlock:signal:{u}", "1", nx=True, ex=5)
    pop = gen.register_script("return redis.call('LPOP', KEYS[1])")
    assert await pop(keys=[f"tips:cand:{u}:focus_block:v1:m"]) == b"tip"

    from bench_worker.store import JobStore

    js = JobStore(bench)
    job = f"acl-{u}"
    await js.start_submission(job, "exp", 2, {})
    assert await js.acquire(f"{job}:0", "w1", 5000)
    assert await js.renew(f"{job}:0", "w1", 5000)
    assert (await js.record_done(job, 0, "run-1"))[0] == 1
    await js.release(f"{job}:0", "w1")


async def test_hash_tagged_keys_still_match(as_user):
    """Redis Cluster layout (a hash tag on the user after the key family) keeps working."""
    sc, fb, gen = as_user("scorer"), as_user("feedback"), as_user("generator")
    u = "{u-" + uuid.uuid4().hex[:6] + "}"
    await sc.hset(f"tips:st:{u}:egreedy-v1", "focus_block", b"x")
    await sc.hincrby(f"tips:pulls:{u}:egreedy-v1", "focus_block", 1)
    await sc.hset(f"tips:dec:{u}:d1", "user", "u")
    await fb.set(f"tips:evt:{u}:e1", "applied", ex=60)
    await fb.hset(f"tips:st:{u}:egreedy-v1", "focus_block", b"y")
    await gen.hset(f"tips:gen:{u}:d1", "prompt_version", "v1")
    assert await fb.hget(f"tips:gen:{u}:d1", "prompt_version") == b"v1"


@pytest.mark.parametrize("user", ["scorer", "feedback", "generator", "bench"])
async def test_dangerous_and_admin_commands_refused(as_user, user):
    r = as_user(user)
    await denied(r.flushall())
    await denied(r.flushdb())
    await denied(r.keys("*"))
    await denied(r.config_get("*"))
    await denied(r.execute_command("ACL", "LIST"))
    await denied(r.execute_command("CLIENT", "LIST"))
    await denied(r.execute_command("SCRIPT", "FLUSH"))
    await denied(r.execute_command("FUNCTION", "FLUSH"))
    await denied(r.execute_command("MONITOR"))
    await denied(r.publish("tips", "x"))
    assert await r.ping()


async def test_each_worker_refused_the_others_keys(as_user):
    sc, fb, gen, bench = (as_user("scorer"), as_user("feedback"), as_user("generator"),
                          as_user("bench"))
    # scorer: no generator cache, no feedback claims, no bench
    await denied(sc.get("tips:cand:u:a:v1:m"))
    await denied(sc.set("tips:evt:e1", "applied"))
    await denied(sc.hset("bench:job:j", "x", 1))
    # feedback: no cache, no pulls, no generator context
    await denied(fb.get("tips:genctx:u"))
    await denied(fb.lrange("tips:cand:u:a:v1:m", 0, -1))
    await denied(fb.hincrby("tips:pulls:p:u", "a", 1))
    # generator: never the bandit state, decisions or claims
    await denied(gen.hgetall("tips:st:egreedy-v1:u"))
    await denied(gen.delete("tips:dec:d1"))
    await denied(gen.set("tips:evt:e1", "applied"))
    # bench: only bench:*
    await denied(bench.get("tips:st:egreedy-v1:u"))
    await denied(bench.delete("tips:dec:d1"))
    # scripts are checked key by key: a script cannot reach outside the user's patterns
    evil = gen.register_script("return redis.call('DEL', KEYS[1])")
    await denied(evil(keys=["tips:st:egreedy-v1:u"]))
    evil2 = sc.register_script("return redis.call('GET', 'bench:job:j')")
    await denied(evil2(keys=[]))

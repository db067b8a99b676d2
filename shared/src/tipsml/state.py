"""Bandit state, decisions and reward application in Redis.

Keys (``{p}`` policy, ``{u}`` user):

* ``tips:st:{p}:{u}``  hash arm → packed arm model (see :mod:`tipsml.bandits`);
  policies configured with one global model use ``tips:stg:{p}`` instead.
* ``tips:pulls:{p}:{u}`` (global: ``tips:pullsg:{p}``) hash arm → times served (live only).
* ``tips:dec:{decision_id}`` hash: the decision as the reward needs it (user, arm,
  learners, and per learner its state key and packed feature vector); TTL = reward window.
* ``tips:evt:{event_id}`` the idempotency claim of one feedback event (its outcome).
* ``tips:due:{<shard>}`` sorted set, member ``<decision_id>:<user_id>``, score = when
  the decision's reward window closes; the feedback consumer sweeps the due ones and
  applies the default reward (event ``default:<decision_id>``) unless a reaction
  claimed the decision first. ``DUE_SHARDS`` sets (hash tags: spread over a Redis
  Cluster's slots, and several consumers sweep different shards at once).

The reward update is one Lua script: the idempotency claim, the join to the
decision and the Sherman–Morrison update of every learner happen atomically,
so concurrent consumers and redeliveries can neither lose nor double an update.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

def state_key(policy: str, user_id: str, global_model: bool = False) -> str:
    # a global model lives under its own prefix, so no user id can ever name it
    return f"tips:stg:{policy}" if global_model else f"tips:st:{policy}:{user_id}"


def pulls_key(policy: str, user_id: str, global_model: bool = False) -> str:
    return f"tips:pullsg:{policy}" if global_model else f"tips:pulls:{policy}:{user_id}"


def decision_key(decision_id: str) -> str:
    return f"tips:dec:{decision_id}"


def event_key(event_id: str) -> str:
    return f"tips:evt:{event_id}"


DUE_SHARDS = 16


def due_shard(decision_id: str) -> int:
    return zlib.crc32(decision_id.encode()) % DUE_SHARDS


def due_key(shard: int) -> str:
    return f"tips:due:{{{shard}}}"


def default_event_id(decision_id: str) -> str:
    """The event id of the default reward: one per decision, so it applies at most once."""
    return f"default:{decision_id}"


def generation_key(decision_id: str) -> str:
    """Written by the generator: which prompt version wrote the tip of this decision."""
    return f"tips:gen:{decision_id}"


# KEYS[1] event key, KEYS[2] decision key, KEYS[3] generation key (prompt version)
# ARGV[1] reward, ARGV[2] event-claim ttl (s), ARGV[3] ridge lambda, ARGV[4] user id,
# ARGV[5] '1' to claim a missing decision as expired, '0' to answer 'pending' (no claim):
#         the scorer writes the decision record just after replying, so a very early
#         reaction can arrive first; the consumer retries it for a grace period.
# ARGV[6..] (any position from 6, recognised by their prefix) 'hp:<policy>=<update id>':
#         the updater's hyper-parameters (tipsml.bandits.update_id) — a mismatch with the
#         decision's 'hp:<policy>' fields answers 'hyper_mismatch' (no claim, no change).
# returns {outcome, policy, arm, prompt_version[, detail]}
APPLY_REWARD_LUA = r"""
local pv = redis.call('HGET', KEYS[3], 'prompt_version') or ''
local prev = redis.call('GET', KEYS[1])
if prev then return {'duplicate', prev, '', pv} end
local d = redis.call('HMGET', KEYS[2], 'user', 'arm', 'learners', 'rewarded', 'policy')
if not d[1] then
  if ARGV[5] == '0' then return {'pending', '', '', pv} end
  redis.call('SET', KEYS[1], 'expired', 'EX', ARGV[2])
  return {'expired', '', '', pv}
end
if d[1] ~= ARGV[4] then
  redis.call('SET', KEYS[1], 'mismatch', 'EX', ARGV[2])
  return {'mismatch', d[5], d[2], pv}
end
if d[4] then
  redis.call('SET', KEYS[1], 'already_rewarded', 'EX', ARGV[2])
  return {'already_rewarded', d[5], d[2], pv}
end
-- one set of hyper-parameters per policy: ARGV entries 'hp:<policy>=<update id>' are the
-- updater's; every learner whose decision-time id ('hp:<policy>' field) differs is refused
-- before anything changes, with no claim (fixed config + DLQ replay can still apply it)
local hp = {}
local any_hp = false
for i = 6, #ARGV do
  local hpol, hval = string.match(ARGV[i], '^hp:([^=]+)=(.*)$')
  if hpol then hp[hpol] = hval; any_hp = true end
end
if any_hp then
  for p in string.gmatch(d[3], '[^,]+') do
    local got = redis.call('HGET', KEYS[2], 'hp:' .. p)
    if got and got ~= hp[p] then
      return {'hyper_mismatch', d[5], d[2], pv,
              p .. ': scored with ' .. got .. ', updater has ' .. (hp[p] or 'no such policy')}
    end
  end
end
local r = tonumber(ARGV[1])
local lam = tonumber(ARGV[3])
local arm = d[2]
for p in string.gmatch(d[3], '[^,]+') do
  local xs = redis.call('HGET', KEYS[2], 'x:' .. p)
  local skey = redis.call('HGET', KEYS[2], 'skey:' .. p)
  local dim = #xs / 8
  local x = {struct.unpack('<' .. string.rep('d', dim), xs)}
  local n = 2 + dim + dim * dim
  local fmt = '<' .. string.rep('d', n)
  local blob = redis.call('HGET', skey, arm)
  local v
  if blob and #blob == n * 8 then
    v = {struct.unpack(fmt, blob)}
  else
    v = {0, 0}
    for i = 1, dim do v[2 + i] = 0 end
    for i = 1, dim do for j = 1, dim do
      v[2 + dim + (i - 1) * dim + j] = (i == j) and (1 / lam) or 0
    end end
  end
  local off = 2 + dim
  local u = {}
  local denom = 1
  for i = 1, dim do
    local s = 0
    for j = 1, dim do s = s + v[off + (i - 1) * dim + j] * x[j] end
    u[i] = s
    denom = denom + x[i] * s
  end
  for i = 1, dim do
    local ui = u[i] / denom
    for j = 1, dim do
      local k = off + (i - 1) * dim + j
      v[k] = v[k] - ui * u[j]
    end
    v[2 + i] = v[2 + i] + r * x[i]
  end
  v[1] = v[1] + 1
  v[2] = v[2] + r
  redis.call('HSET', skey, arm, struct.pack(fmt, unpack(v, 1, n)))
end
redis.call('HSET', KEYS[2], 'rewarded', ARGV[1])
redis.call('SET', KEYS[1], 'applied', 'EX', ARGV[2])
return {'applied', d[5], d[2], pv}
"""


# KEYS: state keys; ARGV: arms. One command instead of a pipeline of HMGETs: the
# request path's only Redis call (cheaper to build and parse than a pipeline).
LOAD_MANY_LUA = r"""
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, unpack(ARGV)) end
return out
"""


@dataclass(frozen=True)
class ApplyResult:
    outcome: str  # applied | duplicate | expired | pending | mismatch | already_rewarded | hyper_mismatch
    policy: str   # deciding policy (for duplicate: the first outcome)
    arm: str
    prompt_version: str
    detail: str = ""  # hyper_mismatch: which learner, decision-time vs updater id


class StateStore:
    """Async facade over Redis for the scorer and the feedback consumer."""

    def __init__(self, redis: aioredis.Redis, reward_window_s: int = 86400, lam: float = 1.0,
                 record_grace_s: float = 3600.0, hyper: dict[str, str] | None = None):
        self.r = redis
        self.reward_window_s = reward_window_s
        # a decision record outlives its window by this much, so the default reward can
        # still find it when the sweeping consumer was down for a while
        self.record_grace_s = record_grace_s
        self.lam = lam
        # the updater's hyper-parameters per policy (default: every registered policy
        # with this λ); sent with every reward so the Lua script can refuse a mismatch
        if hyper is None:
            from .bandits import POLICY_KINDS, update_id

            hyper = {name: update_id(fs.version, lam) for name, (_, fs) in POLICY_KINDS.items()}
        self.hyper_args = [f"hp:{p}={v}" for p, v in sorted(hyper.items())]
        self._apply = redis.register_script(APPLY_REWARD_LUA)
        self._load = redis.register_script(LOAD_MANY_LUA)

    @classmethod
    def from_url(cls, url: str, max_connections: int = 64, pool_timeout_s: float = 5.0,
                 **kw) -> "StateStore":
        # A blocking pool: callers beyond max_connections wait for a free connection.
        # redis-py's default pool raises MaxConnectionsError past 100 connections, which
        # turned every concurrent batch > 100 into spurious naks (and scorer fallbacks).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout_s,
            socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=0)
        return cls(aioredis.Redis.from_pool(pool), **kw)

    async def close(self) -> None:
        await self.r.aclose()

    async def load_many(self, keys: list[str], arms: list[str]) -> list[list[bytes | None]]:
        """One round trip (one script call): for each state key the arms' packed models."""
        return await self._load(keys=keys, args=arms)

    async def warm(self, connections: int = 2) -> None:
        """Load the scripts and open ``connections`` pooled connections before serving, so
        the first requests pay neither a SCRIPT LOAD nor a TCP connect."""
        await self.r.script_load(LOAD_MANY_LUA)
        await self.r.script_load(APPLY_REWARD_LUA)
        await asyncio.gather(*(self.r.ping() for _ in range(connections)))

    async def load_batch(self, reqs: list[tuple[list[str], list[str]]]) -> list:
        """Many :meth:`load_many` calls in one pipeline (one round trip, one connection).
        A failed call answers its exception in its place; the others are unaffected."""
        for attempt in (0, 1):
            pipe = self.r.pipeline(transaction=False)
            for keys, arms in reqs:  # EVALSHA directly: a Script in a pipeline costs a
                pipe.evalsha(self._load.sha, len(keys), *keys, *arms)  # SCRIPT EXISTS first
            out = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(o, NoScriptError) for o in out):
                await self.r.script_load(LOAD_MANY_LUA)  # Redis restarted or flushed
                continue
            return out
        return out

    async def record_decisions(self, records: list[dict]) -> None:
        """Write decision records (for the reward join) and pull counters, pipelined."""
        pipe = self.r.pipeline(transaction=False)
        for rec in records:
            dkey = decision_key(rec["decision_id"])
            fields = {
                "user": rec["user_id"], "arm": rec["arm"], "policy": rec["policy"],
                "learners": ",".join(rec["learners"]), "propensity": repr(rec["propensity"]),
                "ts": repr(rec["ts"]), "version": rec["policy_version"],
            }
            if rec.get("fallback"):
                fields["fallback"] = "1"
            for p, (skey, x) in rec["vectors"].items():
                fields[f"skey:{p}"] = skey
                fields[f"x:{p}"] = np.asarray(x, dtype="<f8").tobytes()
            for p, hp in rec.get("hyper", {}).items():  # update id per learner (bandits.update_id)
                fields[f"hp:{p}"] = hp
            pipe.hset(dkey, mapping=fields)
            pipe.expire(dkey, int(self.reward_window_s + self.record_grace_s))
            pipe.zadd(due_key(due_shard(rec["decision_id"])),
                      {f"{rec['decision_id']}:{rec['user_id']}": rec["ts"] + self.reward_window_s})
            pipe.hincrby(rec["pulls_key"], rec["arm"], 1)
        await pipe.execute()

    async def apply_reward(self, event_id: str, decision_id: str, user_id: str,
                           reward: float, claim_missing: bool = True) -> ApplyResult:
        """Apply once. With ``claim_missing=False`` an unknown decision answers ``pending``
        and claims nothing (the caller retries: the record may not be written yet)."""
        res = await self._apply(
            keys=[event_key(event_id), decision_key(decision_id), generation_key(decision_id)],
            args=[repr(float(reward)), self.reward_window_s * 2, repr(self.lam), user_id,
                  "1" if claim_missing else "0", *self.hyper_args],
        )
        vals = [v.decode() if isinstance(v, bytes) else (v or "") for v in res]
        return ApplyResult(*vals[:5])

    async def due(self, shard: int, now: float, limit: int) -> list[tuple[str, str, bytes]]:
        """Decisions of a shard whose window has closed: (decision_id, user_id, member)."""
        members = await self.r.zrangebyscore(due_key(shard), "-inf", now, start=0, num=limit)
        out = []
        for m in members:
            did, _, user = m.decode().partition(":")
            out.append((did, user, m))
        return out

    async def forget_due(self, shard: int, members: list[bytes]) -> None:
        if members:
            await self.r.zrem(due_key(shard), *members)

    async def claim_shard(self, shard: int, owner: str, ttl_ms: int) -> bool:
        """A short lease so replicas sweep different shards (correctness does not depend
        on it: the default reward's event claim makes a double sweep harmless)."""
        return bool(await self.r.set(f"{due_key(shard)}:lease", owner, nx=True, px=ttl_ms))

    async def due_backlog(self, now: float) -> int:
        pipe = self.r.pipeline(transaction=False)
        for s in range(DUE_SHARDS):
            pipe.zcount(due_key(s), "-inf", now)
        return sum(await pipe.execute())

    async def get_decision(self, decision_id: str) -> dict[str, str]:
        raw = await self.r.hgetall(decision_key(decision_id))
        return {k.decode(): (v.decode(errors="replace") if not k.startswith(b"x:") else v)
                for k, v in raw.items()}

    async def stats(self, policy: str, user_id: str, global_model: bool, dim: int) -> dict:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(state_key(policy, user_id, global_model))
        pipe.hgetall(pulls_key(policy, user_id, global_model))
        st, pulls = await pipe.execute()
        arms: dict[str, dict] = {}
        for arm_b, cnt in pulls.items():
            arms.setdefault(arm_b.decode(), {})["pulls"] = int(cnt)
        for arm_b, blob in st.items():
            v = np.frombuffer(blob, dtype="<f8")
            a = arms.setdefault(arm_b.decode(), {})
            a["updates"] = int(v[0])
            a["reward_sum"] = float(v[1])
        for a in arms.values():
            a.setdefault("pulls", 0)
            a.setdefault("updates", 0)
            a.setdefault("reward_sum", 0.0)
            a["reward_mean"] = a["reward_sum"] / a["updates"] if a["updates"] else None
        return arms

    async def reset(self, policies: list[str], user_id: str) -> int:
        keys = []
        for p in policies:
            keys += [state_key(p, user_id), pulls_key(p, user_id)]
        return int(await self.r.delete(*keys)) if keys else 0

"""Bandit state, decisions and reward application in Redis (single Redis or Redis Cluster).

Every key of one user's learning loop carries the user's **hash tag** ``{u}`` (see
:func:`utag`), so on a Redis Cluster they share one slot and every script touches one
slot only (all the keys it touches are in its KEYS):

* ``tips:st:{u}:{p}``  hash arm → packed arm model, layout 2 (float32, upper triangle of
  A⁻¹; see :mod:`tipsml.bandits`; the former float64 layout is still read);
* ``tips:pulls:{u}:{p}`` hash arm → times served (live policy only);
* ``tips:dec:{u}:{decision_id}`` hash: the compact decision record the reward needs
  (:meth:`StateStore.record_decisions`); TTL = reward window + grace;
* ``tips:evt:{u}:{event_id}`` the idempotency claim of one feedback event (its outcome);
* ``tips:gen:{u}:{decision_id}`` written by the generator (prompt version of the tip).

State and pull keys of a user expire ``STATE_TTL_S`` after the user's last reward /
decision (idle users cost nothing after that; 0 keeps them forever).

Global models (``GLOBAL_POLICIES``) are not one hot key: a reward adds its sufficient
statistics (n, Σr, b = Σ r x, Σ x xᵀ — additive, float64) into one of ``GLOBAL_SHARDS``
shard keys ``tips:stg:{p.<s>}`` (``s`` from the decision id), under a per-decision marker
``tips:gdone:{p.<s>}:<decision_id>`` (SET NX), so each decision counts once. The scorer
sums the shards and inverts ``λI + Σ x xᵀ`` on read, at most every
``GLOBAL_REFRESH_S`` per process: global models are **eventually consistent** (a reward
is visible to a scorer within that refresh), updates are exactly once. Their pull
counters are sharded the same way (``tips:pullsg:{p.<s>}``).

Pooled policies (:data:`tipsml.bandits.POOLED_POLICIES`: per-user models shrunk toward a
shared model) are both: the user's model is an ordinary per-user key updated in the
reward script (with the policy's own ridge λ_p, ARGV ``lam:<p>=<λ>``), and the script
returns the decision's x for the shared part too (ARGV ``sh:<p>``), which the same
global step adds to the policy's shard ``tips:stg:{p.<s>}`` once per decision. On a
Redis Cluster the two keys are in different slots, so they cannot be one script: the
user's step holds the idempotency claim, the shared step its per-decision marker, and a
crash between them is repaired by the redelivery (the claim answers ``duplicate`` with
``applied``, which re-runs the marker-guarded shared step).

* ``tips:due:{<shard>}`` sorted set, member ``<decision_id>:<user_id>``, score = when
  the decision's reward window closes; the feedback consumer sweeps the due ones and
  applies the default reward (event ``default:<decision_id>``) unless a reaction
  claimed the decision first. ``DUE_SHARDS`` sets (hash tags: spread over a Redis
  Cluster's slots, and several consumers sweep different shards at once).

The per-user reward update is one Lua script: the idempotency claim, the join to the
decision and the Sherman–Morrison update of every per-user learner happen atomically
in the user's slot, so concurrent consumers and redeliveries can neither lose nor
double an update. A redelivered event whose claim says ``applied`` re-runs the global
step (idempotent by its marker), so a crash between the two steps loses nothing.

``REDIS_URL`` chooses the client: ``redis://…`` one Redis, ``redis-cluster://h1:p1,h2:p2``
(or ``REDIS_CLUSTER=1``) a Redis Cluster (:func:`connect_redis`).

On one Redis over plain TCP the scorer's two hot pipelines — the coalesced model read
(:meth:`StateStore.load_batch`) and the decision records
(:meth:`StateStore.record_decisions`) — go over their own raw connections
(:mod:`tipsml.resp`: RESP packed in one ``bytes``, replies parsed by hiredis), not
through redis-py's per-command machinery (issue 12: most of a decision's Redis CPU).
Same commands, same replies, same errors; ``REDIS_FAST_PATH=0`` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis

from tipsml.resp import FastRedis, c_pack, encode_arg, fast_params, pack

log = logging.getLogger(__name__)

STATE_TTL_S = int(os.environ.get("STATE_TTL_S", str(90 * 86400)))
GLOBAL_REFRESH_S = float(os.environ.get("GLOBAL_REFRESH_S", "1.0"))
# the hot pipelines on raw connections (tipsml.resp) where the client allows it
FAST_PATH = os.environ.get("REDIS_FAST_PATH", "1").lower() not in ("0", "false", "no")


# every key is spelled once, in tipsml.keys; re-exported here for the callers of state
from tipsml.keys import (  # noqa: E402,F401
    DEC,
    DUE_SHARDS,
    GLOBAL_SHARDS,
    HP_IDS_KEY,
    VERSION_SHARDS,
    decision_key,
    default_event_id,
    due_key,
    due_shard,
    event_key,
    generation_key,
    global_marker_key,
    global_pulls_key,
    global_shard,
    global_shard_key,
    hp_tag,
    pulls_key,
    state_key,
    user_of_tag,
    utag,
    version_marker_key,
    version_shard,
    version_stat_key,
)


async def read_version_stats(r) -> dict[tuple[str, str], tuple[float, float]]:
    """{(arm, version): (n, Σr)} summed over the shards (one pipeline); ``("*", version)``
    sums over all tip kinds."""
    pipe = r.pipeline(transaction=False)
    for s in range(VERSION_SHARDS):
        pipe.hgetall(version_stat_key(s))
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for row in await pipe.execute():
        for f, blob in row.items():
            if len(blob) != 16:
                continue
            f = f.decode() if isinstance(f, bytes) else f
            arm, _, version = f.partition("\x1f")
            n, sr = np.frombuffer(blob, dtype="<f8")
            for a in (arm, "*"):  # "*": over all tip kinds (PROMPT_BANDIT_PER_ARM=false)
                n0, s0 = out.get((a, version), (0.0, 0.0))
                out[(a, version)] = (n0 + float(n), s0 + float(sr))
    return out


def is_cluster_url(url: str) -> bool:
    return url.startswith(("redis-cluster://", "rediss-cluster://")) or \
        os.environ.get("REDIS_CLUSTER", "") in ("1", "true", "yes")


def _maint_notifications():
    """redis-py's maintenance-notification handshake, off unless
    ``REDIS_MAINT_NOTIFICATIONS`` is ``auto`` or ``on``. redis-py 8 speaks RESP3 and, by
    default, asks every new connection for them (``CLIENT MAINT_NOTIFICATIONS ON``); the
    Redis this project runs (7.x, OSS) refuses, which costs each new connection a round trip
    and leaves a reference cycle (the refused error's traceback, held by the connect task:
    feedback-consumer/tests/test_feedback_garbage.py). A managed Redis that sends them can
    turn them on. ``None`` where this redis-py has no such handshake."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # pragma: no cover - an older redis-py: nothing to switch off
        return None
    mode = os.environ.get("REDIS_MAINT_NOTIFICATIONS", "off").strip().lower()
    return MaintNotificationsConfig(
        enabled={"auto": "auto", "on": True, "true": True, "1": True}.get(mode, False))


def connect_redis(url: str, *, max_connections: int = 64, pool_timeout_s: float = 5.0,
                  socket_timeout: float | None = 2.0, **kw):
    """A client for ``url``: ``redis://`` → one Redis (blocking pool), ``redis-cluster://h:p,
    h2:p2`` (or ``REDIS_CLUSTER=1``) → :class:`redis.asyncio.RedisCluster` (slots from any
    reachable node, MOVED/ASK and failovers followed by redis-py). Maintenance
    notifications: :func:`_maint_notifications`."""
    maint = _maint_notifications()
    if maint is not None:
        kw.setdefault("maint_notifications_config", maint)
    if is_cluster_url(url):
        from urllib.parse import unquote

        from redis.asyncio.cluster import ClusterNode, RedisCluster

        rest = url.split("://", 1)[1].split("/", 1)[0]
        tls = url.startswith("rediss")
        auth: dict = {}
        if "@" in rest:  # redis-cluster://[user]:password@h1:p1,h2:p2
            userinfo, rest = rest.rsplit("@", 1)
            user, _, pw = userinfo.partition(":")
            auth = {"username": unquote(user) or None, "password": unquote(pw) or None}
        nodes = []
        for hp in rest.split(","):
            host, _, port = hp.rpartition(":")
            nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no client-side retries: on a connection error redis-py's cluster pipeline closes
        # *every* node's connections before retrying, so one dead master stalled the reads
        # of all users; our callers retry themselves (scorer: fallback; feedback: nak;
        # decision writer: retry loop) and the slot map is refreshed on the next command
        return RedisCluster(startup_nodes=nodes, ssl=tls, max_connections=max_connections,
                            retry=Retry(NoBackoff(), 0), **auth,
                            socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                            require_full_coverage=False, **kw)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout_s,
        socket_timeout=socket_timeout, socket_connect_timeout=2.0, health_check_interval=0,
        **kw)
    return aioredis.Redis.from_pool(pool)


def _failover_errors() -> tuple:
    from redis.exceptions import ClusterDownError, ConnectionError, SlotNotCoveredError
    from redis.exceptions import TimeoutError as RedisTimeout

    return (ConnectionError, RedisTimeout, ClusterDownError, SlotNotCoveredError, OSError,
            TimeoutError)


_FAILOVER_ERRORS = _failover_errors()


# KEYS[1] event key, KEYS[2] decision key, KEYS[3] generation key (prompt version),
# KEYS[4..] the user's state keys of the per-user policies named in ARGV[7], in order.
# ARGV[1] reward, ARGV[2] event-claim ttl (s), ARGV[3] ridge lambda, ARGV[4] user id,
# ARGV[5] '1' to claim a missing decision as expired, '0' to answer 'pending' (no claim):
#         the scorer writes the decision record just after replying, so a very early
#         reaction can arrive first; the consumer retries it for a grace period.
# ARGV[6] state ttl (s; 0 = none), ARGV[7] comma list of per-user policies (KEYS[4..]).
# ARGV[8..] 'hp:<policy>=<tag>': the updater's hyper-parameters (hp_tag of
#         tipsml.bandits.update_id) — a learner whose decision-time tag differs answers
#         'hyper_mismatch' (no claim, no change); 'lam:<policy>=<λ>': that per-user
#         policy's own ridge λ (else ARGV[3]); 'sh:<policy>': a per-user policy that also
#         feeds shared statistics (pooled): its x is returned for the global step too.
# Decision record (layout 2): a arm, p policy, l 'policy/dim,…' learners, x their feature
# vectors (float32, concatenated in l's order), h their hp tags (comma list), r rewarded.
# A learner not among ARGV[7] (a global policy) is returned as policy, x for the global
# step. returns {outcome, policy, arm, prompt_version, detail[, gpolicy, gx, …]}
APPLY_REWARD_LUA = r"""
local pv = redis.call('HGET', KEYS[3], 'prompt_version') or ''
local skeys = {}
local i = 0
for p in string.gmatch(ARGV[7], '[^,]+') do i = i + 1; skeys[p] = KEYS[3 + i] end
local hp, lams, shared = {}, {}, {}
local any_hp = false
for k = 8, #ARGV do
  local hpol, hval = string.match(ARGV[k], '^hp:([^=]+)=(.*)$')
  if hpol then hp[hpol] = hval; any_hp = true end
  local lpol, lval = string.match(ARGV[k], '^lam:([^=]+)=(.*)$')
  if lpol then lams[lpol] = tonumber(lval) end
  local spol = string.match(ARGV[k], '^sh:(.+)$')
  if spol then shared[spol] = true end
end
local function learners(l)
  local out = {}
  for p, dim in string.gmatch(l or '', '([^,/]+)/(%d+)') do out[#out + 1] = {p, tonumber(dim)} end
  return out
end
local function globals(d)
  local out = {}
  local off = 0
  for _, ld in ipairs(learners(d[2])) do
    if (not skeys[ld[1]]) or shared[ld[1]] then
      out[#out + 1] = ld[1]
      out[#out + 1] = string.sub(d[6], off * 4 + 1, (off + ld[2]) * 4)
    end
    off = off + ld[2]
  end
  return out
end
local prev = redis.call('GET', KEYS[1])
if prev then
  local res = {'duplicate', prev, '', pv, ''}
  if prev == 'applied' then
    local d = redis.call('HMGET', KEYS[2], 'a', 'l', 'r', 'p', 'h', 'x')
    if d[1] then for _, v in ipairs(globals(d)) do res[#res + 1] = v end end
  end
  return res
end
local d = redis.call('HMGET', KEYS[2], 'a', 'l', 'r', 'p', 'h', 'x')
if not d[1] then
  if ARGV[5] == '0' then return {'pending', '', '', pv, ''} end
  redis.call('SET', KEYS[1], 'expired', 'EX', ARGV[2])
  return {'expired', '', '', pv, ''}
end
if d[3] then
  redis.call('SET', KEYS[1], 'already_rewarded', 'EX', ARGV[2])
  return {'already_rewarded', d[4], d[1], pv, ''}
end
local ls = learners(d[2])
if any_hp then
  local k = 0
  for got in string.gmatch(d[5] or '', '[^,]+') do
    k = k + 1
    local p = ls[k] and ls[k][1]
    if p and got ~= '-' and got ~= hp[p] then
      return {'hyper_mismatch', d[4], d[1], pv, p .. '|' .. got .. '|' .. (hp[p] or '')}
    end
  end
end
local r = tonumber(ARGV[1])
local lam = tonumber(ARGV[3])
local ttl = tonumber(ARGV[6])
local arm = d[1]
local glob = {}
local off = 0
for _, ld in ipairs(ls) do
  local p, dim = ld[1], ld[2]
  local xs = string.sub(d[6], off * 4 + 1, (off + dim) * 4)
  off = off + dim
  local skey = skeys[p]
  if (not skey) or shared[p] then
    glob[#glob + 1] = p
    glob[#glob + 1] = xs
  end
  if skey then
    local plam = lams[p] or lam
    local x = {struct.unpack('<' .. string.rep('f', dim), xs)}
    local nt = dim * (dim + 1) / 2
    local n2 = 2 + dim + nt
    local n1 = 2 + dim + dim * dim
    -- tix[(i-1)*dim+j]: where A⁻¹[i][j] lives in the upper triangle (row-major)
    local tix = {}
    for a = 1, dim do for b = 1, dim do
      local lo, hi = math.min(a, b), math.max(a, b)
      tix[(a - 1) * dim + b] = 2 + dim + (lo - 1) * dim - (lo - 1) * (lo - 2) / 2 + (hi - lo) + 1
    end end
    local blob = redis.call('HGET', skey, arm)
    local v
    if blob and #blob == n2 * 4 then
      v = {struct.unpack('<' .. string.rep('f', n2), blob)}
    elseif blob and #blob == n1 * 8 then
      local w = {struct.unpack('<' .. string.rep('d', n1), blob)}
      v = {}
      for k = 1, 2 + dim do v[k] = w[k] end
      for a = 1, dim do for b = a, dim do
        v[tix[(a - 1) * dim + b]] = w[2 + dim + (a - 1) * dim + b]
      end end
    else
      v = {0, 0}
      for k = 1, dim do v[2 + k] = 0 end
      for a = 1, dim do for b = a, dim do
        v[tix[(a - 1) * dim + b]] = (a == b) and (1 / plam) or 0
      end end
    end
    local u = {}
    local denom = 1
    for a = 1, dim do
      local s = 0
      for b = 1, dim do s = s + v[tix[(a - 1) * dim + b]] * x[b] end
      u[a] = s
      denom = denom + x[a] * s
    end
    for a = 1, dim do
      local ua = u[a] / denom
      for b = a, dim do
        local k = tix[(a - 1) * dim + b]
        v[k] = v[k] - ua * u[b]
      end
      v[2 + a] = v[2 + a] + r * x[a]
    end
    v[1] = v[1] + 1
    v[2] = v[2] + r
    redis.call('HSET', skey, arm, struct.pack('<' .. string.rep('f', n2), unpack(v, 1, n2)))
    if ttl > 0 then redis.call('EXPIRE', skey, ttl) end
  end
end
redis.call('HSET', KEYS[2], 'r', ARGV[1])
redis.call('SET', KEYS[1], 'applied', 'EX', ARGV[2])
local res = {'applied', d[4], d[1], pv, ''}
for _, v in ipairs(glob) do res[#res + 1] = v end
return res
"""

# KEYS[1] global shard key, KEYS[2] the decision's marker in that shard's slot
# ARGV[1] arm, ARGV[2] reward, ARGV[3] x (float32), ARGV[4] marker ttl (s)
# Adds n, Σr, b = Σ r x and the upper triangle of Σ x xᵀ (float64) once per decision.
GLOBAL_ADD_LUA = r"""
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then return 0 end
local dim = #ARGV[3] / 4
local x = {struct.unpack('<' .. string.rep('f', dim), ARGV[3])}
local n = 2 + dim + dim * (dim + 1) / 2
local fmt = '<' .. string.rep('d', n)
local blob = redis.call('HGET', KEYS[1], ARGV[1])
local v
if blob and #blob == n * 8 then
  v = {struct.unpack(fmt, blob)}
else
  v = {}
  for k = 1, n do v[k] = 0 end
end
local r = tonumber(ARGV[2])
v[1] = v[1] + 1
v[2] = v[2] + r
local k = 2 + dim
for a = 1, dim do
  v[2 + a] = v[2 + a] + r * x[a]
  for b = a, dim do k = k + 1; v[k] = v[k] + x[a] * x[b] end
end
redis.call('HSET', KEYS[1], ARGV[1], struct.pack(fmt, unpack(v, 1, n)))
return 1
"""


def _load_bytes(reqs) -> bytes:
    """A coalesced read as one RESP ``bytes``: per request, one HMGET of its arms per
    state key (one user's keys share a slot). Plain HMGETs, not a Lua script: inside
    Redis a script call of three HMGETs cost 25.8 µs against 3.0 µs for the HMGETs
    themselves (``INFO commandstats`` over ``bench/score_bench.py --rates 1000``), a
    quarter of redis-server's CPU per decision. Each HMGET is atomic; the keys of one
    request were never read as one snapshot that mattered (each policy's model stands
    alone)."""
    return b"".join([pack("HMGET", k, *arms) for keys, arms in reqs for k in keys])


def _load_commands(reqs) -> int:
    return sum(len(keys) for keys, _ in reqs)


def _per_request(reqs, replies) -> list:
    """The HMGET replies of a coalesced read, back per request: the list of its keys'
    replies, or the first error among them in its place (that request fails alone)."""
    out, i = [], 0
    for keys, _ in reqs:
        mine = replies[i:i + len(keys)]
        i += len(keys)
        err = next((r for r in mine if isinstance(r, BaseException)), None)
        out.append(mine if err is None else err)
    return out


@dataclass(frozen=True)
class ApplyResult:
    outcome: str  # applied | duplicate | expired | pending | already_rewarded | hyper_mismatch
    policy: str   # deciding policy (for duplicate: the first outcome)
    arm: str
    prompt_version: str
    detail: str = ""  # hyper_mismatch: which learner, decision-time vs updater id
    globals_applied: int = 0  # global-model updates this call added (0 or 1 each)


_HP_TAGS: dict[str, str] = {}


def _hp_tag(update_id: str) -> str:
    """:func:`hp_tag`, remembered (a handful of ids per process; one per decision each)."""
    t = _HP_TAGS.get(update_id)
    if t is None:
        t = hp_tag(update_id)
        if len(_HP_TAGS) < 1024:
            _HP_TAGS[update_id] = t
    return t


def future_outcome(f: asyncio.Future) -> tuple:
    """(result, None) or (None, the error) of a finished future."""
    if f.cancelled():
        return None, asyncio.CancelledError()
    err = f.exception()
    return (f.result(), None) if err is None else (None, err)


def settle_future(fut: asyncio.Future, res, err: BaseException | None) -> None:
    """:func:`future_outcome` the other way: ``fut`` gets ``res`` or ``err`` (cancelled for
    a ``CancelledError``), unless it is done already."""
    if fut.done():
        return
    if err is None:
        fut.set_result(res)
    elif isinstance(err, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(err)


class StateStore:
    """Async facade over Redis (or a Redis Cluster) for the scorer and the feedback consumer."""

    def __init__(self, redis, reward_window_s: int = 86400, lam: float = 1.0,
                 record_grace_s: float = 3600.0, hyper: dict[str, str] | None = None,
                 global_policies=(), state_ttl_s: int | None = None,
                 global_refresh_s: float | None = None, pooled_lambda: float | None = None):
        self.r = redis
        self.cluster = type(redis).__name__ == "RedisCluster"
        self.reward_window_s = reward_window_s
        # a decision record outlives its window by this much, so the default reward can
        # still find it when the sweeping consumer was down for a while
        self.record_grace_s = record_grace_s
        self.lam = lam
        self.state_ttl_s = STATE_TTL_S if state_ttl_s is None else int(state_ttl_s)
        self.global_refresh_s = GLOBAL_REFRESH_S if global_refresh_s is None else global_refresh_s
        self.global_policies = set(global_policies or ())
        # the updater's hyper-parameters per policy (default: every registered policy
        # with this λ); sent with every reward so the Lua script can refuse a mismatch
        from .bandits import POLICY_KINDS, POOLED_LAMBDA, POOLED_POLICIES, policy_lambda, update_id

        plam = POOLED_LAMBDA if pooled_lambda is None else float(pooled_lambda)
        # a pooled policy is never a pure global one: its users keep their own models
        self.global_policies -= POOLED_POLICIES
        self.pooled = {p for p in POOLED_POLICIES if p in POLICY_KINDS}
        self.lams = {p: policy_lambda(p, lam, plam) for p in POLICY_KINDS}
        if hyper is None:
            hyper = {name: update_id(fs.version, self.lams[name])
                     for name, (_, fs) in POLICY_KINDS.items()}
        self.hyper = dict(hyper)
        self.hyper_args = [f"hp:{p}={hp_tag(v)}" for p, v in sorted(hyper.items())]
        self.hyper_args += [f"lam:{p}={self.lams[p]!r}" for p in sorted(self.pooled)]
        self.hyper_args += [f"sh:{p}" for p in sorted(self.pooled)]
        # per-user policies whose state keys the reward script may touch (all it knows)
        self.user_policies = [p for p in sorted(set(POLICY_KINDS) | set(hyper))
                              if p not in self.global_policies]
        self._apply = redis.register_script(APPLY_REWARD_LUA)
        self._gadd = redis.register_script(GLOBAL_ADD_LUA)
        self._hp_registered = False
        self._gcache: dict[tuple, tuple[float, list[bytes]]] = {}
        self._theta: dict[tuple, tuple[list[bytes], np.ndarray]] = {}
        self._last_refresh = 0.0
        self._bg: set[asyncio.Task] = set()
        self._glock = asyncio.Lock()
        # the two hot pipelines on their own raw connections (reads never queue behind a
        # batch of records): None where the client cannot be mirrored (cluster, TLS, ...)
        self._fast_read = self._fast_write = None
        params = fast_params(redis) if FAST_PATH and not self.cluster else None
        if params:
            self._fast_read = FastRedis(**params)
            self._fast_write = FastRedis(**params)

    @classmethod
    def from_url(cls, url: str, max_connections: int = 64, pool_timeout_s: float = 5.0,
                 **kw) -> StateStore:
        # A blocking pool: callers beyond max_connections wait for a free connection.
        # redis-py's default pool raises MaxConnectionsError past 100 connections, which
        # turned every concurrent batch > 100 into spurious naks (and scorer fallbacks).
        return cls(connect_redis(url, max_connections=max_connections,
                                 pool_timeout_s=pool_timeout_s), **kw)

    @classmethod
    def from_settings(cls, s) -> StateStore:
        """The store as a worker's settings describe it (scorer and feedback consumer must
        agree on every one of these)."""
        return cls.from_url(s.redis_url, reward_window_s=s.reward_window_s,
                            lam=s.ridge_lambda, pooled_lambda=getattr(s, "pooled_lambda", None),
                            record_grace_s=s.reward_record_grace_s,
                            global_policies=s.global_policies, state_ttl_s=s.state_ttl_s,
                            global_refresh_s=s.global_refresh_s)

    async def close(self) -> None:
        for f in (self._fast_read, self._fast_write):
            if f is not None:
                await f.aclose()
        await self.r.aclose()

    async def _script_load_all(self, script: str) -> None:
        await self.r.script_load(script)  # on a cluster redis-py sends it to every primary

    async def warm(self, connections: int = 2, scripts: bool = True) -> None:
        """Load the scripts (``scripts``: the scorer runs none — its read is plain HMGETs —
        and its Redis user may not) and open ``connections`` pooled connections before
        serving, so the first requests pay neither a SCRIPT LOAD nor a TCP connect."""
        for src in (APPLY_REWARD_LUA, GLOBAL_ADD_LUA) if scripts else ():
            await self._script_load_all(src)
        if self.cluster:
            await self.r.ping()
        else:
            await asyncio.gather(*(self.r.ping() for _ in range(connections)))
        for f in (self._fast_read, self._fast_write):
            if f is not None:
                await f.execute(pack("PING"), 1)
        await self._register_hp()
        await self._check_listpack()

    async def _check_listpack(self) -> None:
        """Warn when the server keeps a user's models in hash tables (≈ 15 % more memory):
        ``hash-max-listpack-value`` should be ≥ 512 (deploy/README.md, capacity)."""
        try:
            got = await self.r.config_get("hash-max-listpack-value")
            v = int(next(iter(got.values()))) if isinstance(got, dict) and got else 512
        except Exception:  # noqa: BLE001 - managed Redis may refuse CONFIG: set it there
            return
        if v < 512:
            log.warning("hash-max-listpack-value is %s: set it to 512 so bandit state and "
                        "decision records stay compact (deploy/README.md)", v)

    async def load_batch(self, reqs: list[tuple[list[str], list[str]]],
                         deadline_s: float | None = None) -> list:
        """Per request, each state key's arm models (one HMGET per key, :func:`_load_bytes`;
        one user's keys share a slot on a cluster), all in one pipeline (one round trip,
        one connection). A failed read answers its exception in its request's place; the
        others are unaffected.

        On a cluster: one pipeline per master, sent concurrently, so a master that fails
        (killed, failing over) fails only the requests of its slots — the users of the
        other masters are still served (redis-py would fail the whole pipeline)."""
        if not self.cluster:
            return await self._load_pipeline(reqs)
        groups: dict[str, list[int]] = {}
        for i, (keys, _) in enumerate(reqs):
            try:
                node = self.r.get_node_from_key(keys[0]).name
            except Exception:  # noqa: BLE001 - slot map not loaded yet / slot uncovered
                node = ""
            groups.setdefault(node, []).append(i)
        tasks = [asyncio.ensure_future(self._load_pipeline([reqs[i] for i in idx]))
                 for idx in groups.values()]
        # a master that does not answer (killed: redis-py retries and refreshes the slot
        # map meanwhile) must not hold the answers of the others: past the deadline its
        # requests fail alone and its pipeline finishes in the background
        _, pending = await asyncio.wait(tasks, timeout=deadline_s)
        out: list = [None] * len(reqs)
        for idx, t in zip(groups.values(), tasks):
            if t in pending:
                t.add_done_callback(lambda f: f.cancelled() or f.exception())
                res: object = TimeoutError("a Redis Cluster master did not answer in time")
            else:
                res = t.exception() or t.result()
            for j, i in enumerate(idx):
                out[i] = res if isinstance(res, BaseException) else res[j]
        return out

    def _slot_map_stale(self, errors) -> None:
        """A cluster node refused or failed: refresh the slot map (at most every 0.5 s, in
        the background), so commands find the replica that took over. redis-py does it
        for single commands, not for a pipeline's per-command errors."""
        if not self.cluster or not any(isinstance(e, _FAILOVER_ERRORS) for e in errors):
            return
        now = time.monotonic()
        if now - self._last_refresh < 0.5:
            return
        self._last_refresh = now

        async def refresh():
            try:
                await self.r.nodes_manager.initialize()
            except Exception as e:  # noqa: BLE001 - the next error tries again
                log.debug("slot map refresh failed: %r", e)

        t = asyncio.ensure_future(refresh())
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def _load_pipeline(self, reqs) -> list:
        if self._fast_read is not None:
            return await self._load_fast(reqs)
        pipe = self.r.pipeline(transaction=False)
        for keys, arms in reqs:
            for k in keys:
                pipe.execute_command("HMGET", k, *arms)
        try:
            out = await pipe.execute(raise_on_error=False)
        except Exception as e:
            self._slot_map_stale([e])
            raise
        self._slot_map_stale(out)
        return _per_request(reqs, out)

    def load_batch_nowait(self, reqs: list[tuple[list[str], list[str]]], cb=None
                          ) -> asyncio.Future | bool | None:
        """:meth:`load_batch` written at once on the raw connection, as a future (not a
        coroutine: no task per batch), or with ``cb``: ``cb(results, None)`` or
        ``cb(None, error)`` called from the connection's reader (no future, no loop turn
        between Redis's reply and the requests waiting for it; ``True`` is returned).
        ``None`` where it does not apply (a cluster, redis-py, the connection not up yet):
        use :meth:`load_batch`."""
        fast = self._fast_read
        if fast is None or self.cluster:
            return None
        n = _load_commands(reqs)
        out = asyncio.get_running_loop().create_future() if cb is None else None

        def answered(res, err) -> None:
            if err is None:
                res = _per_request(reqs, res)
            if cb is not None:
                cb(res, err)
            else:
                settle_future(out, res, err)

        if not fast.send_nowait(_load_bytes(reqs), n, answered):
            return None
        return out if cb is None else True

    async def _load_fast(self, reqs) -> list:
        """:meth:`_load_pipeline` on the raw connection: the same HMGETs, one ``bytes``
        out, the replies as redis-py gives them."""
        out = await self._fast_read.execute(_load_bytes(reqs), _load_commands(reqs))
        return _per_request(reqs, out)

    async def _register_hp(self) -> None:
        """Map the short hyper-parameter tags of decision records back to their ids."""
        if not self._hp_registered:
            await self.r.hset(HP_IDS_KEY, mapping={hp_tag(v): v for v in self.hyper.values()})
            self._hp_registered = True

    def decision_fields(self, rec: dict) -> dict:
        """The compact decision record (layout 2; about 300 B in Redis, see
        bench/results/compact_state.json)."""
        ls, xs, hs = [], [], []
        hyper = rec.get("hyper", {})
        seen: dict[int, bytes] = {}  # policies sharing a feature vector share its bytes
        for p in rec["learners"]:
            v = rec["vectors"][p][1]
            b = seen.get(id(v))
            if b is None:
                b = seen[id(v)] = np.asarray(v, dtype="<f4").tobytes()
            ls.append(f"{p}/{len(b) // 4}")
            xs.append(b)
            hs.append(_hp_tag(hyper[p]) if p in hyper else "-")
        fields = {"a": rec["arm"], "p": rec["policy"], "l": ",".join(ls), "x": b"".join(xs),
                  "h": ",".join(hs), "pr": f"{rec['propensity']:.9g}", "t": f"{rec['ts']:.3f}"}
        if rec.get("fallback"):
            fields["f"] = "1"
        return fields

    def _pulls_key(self, rec: dict) -> str:
        if rec["policy"] in self.global_policies:
            return global_pulls_key(rec["policy"], global_shard(rec["decision_id"]))
        return pulls_key(rec["policy"], rec["user_id"])

    def _record_commands(self, records: list[dict]) -> list[tuple]:
        """The commands writing ``records``: per record its hash (HSET + EXPIRE), its
        place in the due set, its live policy's pull counter (+ EXPIRE)."""
        ttl = int(self.reward_window_s + self.record_grace_s)
        cmds = []
        for rec in records:
            did, uid = rec["decision_id"], rec["user_id"]
            dkey = decision_key(did, uid)
            fields = self.decision_fields(rec)
            cmds.append(("HSET", dkey, *[x for kv in fields.items() for x in kv]))
            cmds.append(("EXPIRE", dkey, ttl))
            cmds.append(("ZADD", due_key(due_shard(did)), rec["ts"] + self.reward_window_s,
                         f"{did}:{uid}"))
            pk = self._pulls_key(rec)
            cmds.append(("HINCRBY", pk, rec["arm"], 1))
            if self.state_ttl_s > 0 and rec["policy"] not in self.global_policies:
                cmds.append(("EXPIRE", pk, self.state_ttl_s))
        return cmds

    def _record_resp(self, records: list[dict]) -> tuple[bytes, int]:
        """:meth:`_record_commands` as the RESP bytes :func:`tipsml.resp.pack` makes of
        them (and how many commands): the decision log's pipeline on the raw connection.
        Each command is one call of the C packer where it is built (a record's five
        commands in about a third of the time the hand-written formatting below takes);
        without it, the formatting (issue 12: generic packing in Python was half of a
        record's CPU)."""
        if c_pack is None:
            return self._record_resp_python(records)
        ttl = int(self.reward_window_s + self.record_grace_s)
        sttl = self.state_ttl_s if self.state_ttl_s > 0 else None
        window = self.reward_window_s
        out: list[bytes] = []
        add = out.append
        n = 0
        for rec in records:
            did, uid = rec["decision_id"], rec["user_id"]
            dkey = decision_key(did, uid)
            hset = ["HSET", dkey]
            for kv in self.decision_fields(rec).items():
                hset += kv
            add(c_pack(*hset))
            add(c_pack("EXPIRE", dkey, ttl))
            add(c_pack("ZADD", due_key(due_shard(did)), rec["ts"] + window, f"{did}:{uid}"))
            pk = self._pulls_key(rec)
            add(c_pack("HINCRBY", pk, rec["arm"], 1))
            n += 4
            if sttl is not None and rec["policy"] not in self.global_policies:
                add(c_pack("EXPIRE", pk, sttl))
                n += 1
        return b"".join(out), n

    def _record_resp_python(self, records: list[dict]) -> tuple[bytes, int]:
        """:meth:`_record_resp` where the C packer is not built: the RESP written by hand."""
        ttl = encode_arg(int(self.reward_window_s + self.record_grace_s))
        sttl = encode_arg(self.state_ttl_s) if self.state_ttl_s > 0 else None
        window = self.reward_window_s
        out: list[bytes] = []
        add = out.append
        n = 0
        for rec in records:
            did, uid = rec["decision_id"], rec["user_id"]
            dkey = decision_key(did, uid).encode()
            fields = self.decision_fields(rec)
            add(b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n"
                % (2 + 2 * len(fields), len(dkey), dkey))
            for k, v in fields.items():
                k = k.encode()
                if type(v) is not bytes:
                    v = v.encode()
                add(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(v), v))
            add(b"*3\r\n$6\r\nEXPIRE\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                % (len(dkey), dkey, len(ttl), ttl))
            due = due_key(due_shard(did)).encode()
            score = encode_arg(rec["ts"] + window)
            member = f"{did}:{uid}".encode()
            add(b"*4\r\n$4\r\nZADD\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                % (len(due), due, len(score), score, len(member), member))
            pk = self._pulls_key(rec).encode()
            arm = rec["arm"].encode()
            add(b"*4\r\n$7\r\nHINCRBY\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$1\r\n1\r\n"
                % (len(pk), pk, len(arm), arm))
            n += 4
            if sttl is not None and rec["policy"] not in self.global_policies:
                add(b"*3\r\n$6\r\nEXPIRE\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                    % (len(pk), pk, len(sttl), sttl))
                n += 1
        return b"".join(out), n

    async def record_decisions(self, records: list[dict]) -> None:
        """Write decision records (for the reward join) and pull counters, pipelined.
        Raises (nothing is known written) on a connection failure or any error reply."""
        if not self._hp_registered:
            await self._register_hp()
        if self._fast_write is not None:
            out = await self._fast_write.execute(*self._record_resp(records))
            for o in out:
                if isinstance(o, Exception):
                    raise o
            return
        cmds = self._record_commands(records)
        pipe = self.r.pipeline(transaction=False)
        for c in cmds:
            pipe.execute_command(*c)
        try:
            await pipe.execute()
        except Exception as e:
            self._slot_map_stale([e])
            raise

    async def apply_reward(self, event_id: str, decision_id: str, user_id: str,
                           reward: float, claim_missing: bool = True) -> ApplyResult:
        """Apply once. With ``claim_missing=False`` an unknown decision answers ``pending``
        and claims nothing (the caller retries: the record may not be written yet).
        Global learners are updated right after, by decision id, exactly once."""
        res = await self._apply(
            keys=[event_key(event_id, user_id), decision_key(decision_id, user_id),
                  generation_key(decision_id, user_id),
                  *[state_key(p, user_id) for p in self.user_policies]],
            args=[repr(float(reward)), self.reward_window_s * 2, repr(self.lam), user_id,
                  "1" if claim_missing else "0", self.state_ttl_s,
                  ",".join(self.user_policies), *self.hyper_args],
        )
        vals = [v.decode() if isinstance(v, bytes) else (v or "") for v in res[:5]]
        outcome, policy, arm, pv, detail = vals
        if outcome == "hyper_mismatch":
            detail = await self._hyper_detail(detail)
        if pv and (outcome == "applied" or (outcome == "duplicate" and policy == "applied")):
            # the reward is attributed to the prompt version that wrote the tip: once per
            # decision (marker), in the version's shard; a redelivery repairs a crash here
            if outcome == "applied":
                await self.add_version_reward(decision_id, arm, pv, reward)
            else:
                d = await self.r.hmget(decision_key(decision_id, user_id), ["a", "r"])
                if d[0] is not None:
                    rw = float(d[1]) if d[1] is not None else reward
                    await self.add_version_reward(decision_id, d[0].decode(), pv, rw)
        gl = 0
        if len(res) > 5 and outcome in ("applied", "duplicate"):
            if outcome == "duplicate":  # the claim says applied: redo the idempotent step
                arm = (await self.r.hget(decision_key(decision_id, user_id), "a") or b"").decode()
            rw = reward
            if outcome == "duplicate":
                got = await self.r.hget(decision_key(decision_id, user_id), "r")
                rw = float(got) if got is not None else reward
            for j in range(5, len(res) - 1, 2):
                p = res[j].decode() if isinstance(res[j], bytes) else res[j]
                gl += await self.apply_global(p, decision_id, arm, rw, res[j + 1])
            if outcome == "duplicate":
                arm = ""
        return ApplyResult(outcome, policy, arm, pv, detail, gl)

    async def add_version_reward(self, decision_id: str, arm: str, version: str,
                                 reward: float) -> int:
        from .versions import stat_field

        s = version_shard(decision_id)
        return int(await self._gadd(
            keys=[version_stat_key(s), version_marker_key(s, decision_id)],
            args=[stat_field(arm, version), repr(float(reward)), b"", self.reward_window_s * 2]))

    async def apply_global(self, policy: str, decision_id: str, arm: str, reward: float,
                           x32: bytes) -> int:
        s = global_shard(decision_id)
        return int(await self._gadd(
            keys=[global_shard_key(policy, s), global_marker_key(policy, s, decision_id)],
            args=[arm, repr(float(reward)), x32, self.reward_window_s * 2]))

    async def _hyper_detail(self, raw: str) -> str:
        p, _, rest = raw.partition("|")
        got, _, want = rest.partition("|")
        names = await self.r.hmget(HP_IDS_KEY, [got, want]) if got else [None, None]
        g = names[0].decode() if names[0] else got
        w = self.hyper.get(p) or (names[1].decode() if names[1] else "no such policy")
        return f"{p}: scored with {g}, updater has {w}"

    async def global_models(self, policy, arms: list[str]) -> list[bytes]:
        """The merged global model of ``policy`` (a :class:`tipsml.bandits.Policy`) per arm,
        as full float64 vectors: Σ of the shards' statistics, A⁻¹ = (λI + Σ x xᵀ)⁻¹.
        Cached per process for ``global_refresh_s``."""
        key = (policy.name, tuple(arms))
        hit = self._gcache.get(key)
        now = time.monotonic()
        if hit and now - hit[0] < self.global_refresh_s:
            return hit[1]
        async with self._glock:
            hit = self._gcache.get(key)
            if hit and time.monotonic() - hit[0] < self.global_refresh_s:
                return hit[1]
            blobs = await self._merge_global(policy.name, policy.dim,
                                             getattr(policy, "global_lam", policy.lam), arms)
            self._gcache[key] = (time.monotonic(), blobs)
            return blobs

    async def global_stats(self, policy: str, dim: int, arms: list[str] | None = None):
        """{arm: summed statistics vector [n, Σr, b, triu(Σ x xᵀ)]} over the shards."""
        pipe = self.r.pipeline(transaction=False)
        for s in range(GLOBAL_SHARDS):
            if arms is None:
                pipe.hgetall(global_shard_key(policy, s))
            else:
                pipe.hmget(global_shard_key(policy, s), arms)
        rows = await pipe.execute()
        nt = 2 + dim + dim * (dim + 1) // 2
        tot: dict[str, np.ndarray] = {}
        for row in rows:
            items = row.items() if arms is None else zip(arms, row)
            for a, blob in items:
                a = a.decode() if isinstance(a, bytes) else a
                if blob and len(blob) == nt * 8:
                    v = np.frombuffer(blob, dtype="<f8")
                    tot[a] = tot[a] + v if a in tot else v.copy()
        return tot

    async def _merge_global(self, policy: str, dim: int, lam: float, arms: list[str]):
        from .bandits import pack, shared_full

        tot = await self.global_stats(policy, dim, arms)
        return [pack(shared_full(tot.get(a), dim, lam)) for a in arms]

    def shared_prior_nowait(self, policy, arms: list[str]) -> np.ndarray | None:
        """θ_s of :meth:`shared_prior` while the cached merge is fresh and its θ computed
        (the usual case: one refresh per ``global_refresh_s``), without a task, a timer or
        an await; ``None`` when a refresh is due (then await :meth:`shared_prior`)."""
        key = (policy.name, tuple(arms))
        g = self._gcache.get(key)
        if g is None or time.monotonic() - g[0] >= self.global_refresh_s:
            return None
        hit = self._theta.get(key)
        return hit[1] if hit is not None and hit[0] is g[1] else None

    async def shared_prior(self, policy, arms: list[str],
                           timeout_s: float | None = None) -> np.ndarray:
        """(K, D) θ_s of a pooled policy's shared model (merged shards, cached like
        :meth:`global_models`; θ is computed once per refresh).

        With ``timeout_s`` (the scorer's Redis deadline) a refresh that does not answer in
        time — Redis slow or stalled — serves the previous copy (the population's model
        moves slowly; the per-user read still has its own deadline); the refresh itself
        goes on in the background (never cancelled mid-reply). No previous copy: raise."""
        from .bandits import shared_theta

        key = (policy.name, tuple(arms))
        hit = self._theta.get(key)
        job = asyncio.ensure_future(self.global_models(policy, arms))
        try:
            blobs = await (asyncio.wait_for(asyncio.shield(job), timeout_s)
                           if timeout_s else job)
        except (TimeoutError, Exception):
            job.add_done_callback(lambda f: f.cancelled() or f.exception())
            if hit is not None:
                return hit[1]
            raise
        if hit is not None and hit[0] is blobs:
            return hit[1]
        th = shared_theta(blobs, policy.dim)
        self._theta[key] = (blobs, th)
        return th

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

    async def get_decision(self, decision_id: str, user_id: str | None = None) -> dict:
        """The decision record, decoded into its long form (``user``, ``arm``, ``policy``,
        ``learners``, per learner ``x:<p>`` float64 bytes, ``skey:<p>``, ``hp:<p>``, and
        ``rewarded`` once rewarded). Without ``user_id`` the key is found by a SCAN (tests
        and tools only: slow on a big keyspace). Empty dict if absent."""
        key = None
        if user_id is not None:
            key = decision_key(decision_id, user_id)
        else:
            key = await self._find_key(f"{DEC}*:{decision_id}")
            if key is None:
                return {}
        raw = await self.r.hgetall(key)
        if not raw:
            return {}
        f = {k.decode(): v for k, v in raw.items()}
        if user_id is None:
            tag = key.split(":", 2)[2].rsplit(":", 1)[0]
            user_id = user_of_tag(tag)
        out = {"user": user_id, "arm": f["a"].decode(), "policy": f["p"].decode(),
               "propensity": f.get("pr", b"").decode(), "ts": f.get("t", b"").decode()}
        names, off = [], 0
        hs = f.get("h", b"").decode().split(",")
        tags = [t for t in hs if t != "-"]
        ids = dict(zip(tags, await self.r.hmget(HP_IDS_KEY, tags))) if tags else {}
        for i, ld in enumerate(f["l"].decode().split(",")):
            p, _, d = ld.rpartition("/")
            d = int(d)
            names.append(p)
            x = np.frombuffer(f["x"][off * 4:(off + d) * 4], dtype="<f4").astype("<f8")
            off += d
            out[f"x:{p}"] = x.tobytes()
            out[f"skey:{p}"] = state_key(p, user_id, p in self.global_policies)
            if i < len(hs) and hs[i] != "-":
                v = ids.get(hs[i])
                out[f"hp:{p}"] = v.decode() if v else hs[i]
        out["learners"] = ",".join(names)
        if "r" in f:
            out["rewarded"] = f["r"].decode()
        if "f" in f:
            out["fallback"] = "1"
        return out

    async def decision_users(self, decision_ids) -> dict[str, str]:
        """{decision id: user id} of existing decision records, by one SCAN over
        ``tips:dec:*`` (tests and tools: they know decision ids, not always users)."""
        want = set(decision_ids)
        out: dict[str, str] = {}
        async for k in self.r.scan_iter(match=DEC + "*", count=5000):
            k = k.decode() if isinstance(k, bytes) else k
            tag, _, did = k[len(DEC):].rpartition(":")
            if did in want:
                out[did] = user_of_tag(tag)
        return out

    async def _find_key(self, pattern: str) -> str | None:
        if self.cluster:
            async for k in self.r.scan_iter(match=pattern, count=1000):
                return k.decode() if isinstance(k, bytes) else k
            return None
        async for k in self.r.scan_iter(pattern, count=1000):
            return k.decode()
        return None

    async def stats(self, policy: str, user_id: str, global_model: bool, dim: int) -> dict:
        from .bandits import decode_arm

        arms: dict[str, dict] = {}
        if global_model:
            tot = await self.global_stats(policy, dim)
            pipe = self.r.pipeline(transaction=False)
            for s in range(GLOBAL_SHARDS):
                pipe.hgetall(global_pulls_key(policy, s))
            for row in await pipe.execute():
                for arm_b, cnt in row.items():
                    a = arms.setdefault(arm_b.decode(), {})
                    a["pulls"] = a.get("pulls", 0) + int(cnt)
            for arm, v in tot.items():
                a = arms.setdefault(arm, {})
                a["updates"] = int(v[0])
                a["reward_sum"] = float(v[1])
        else:
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(state_key(policy, user_id))
            pipe.hgetall(pulls_key(policy, user_id))
            st, pulls = await pipe.execute()
            for arm_b, cnt in pulls.items():
                arms.setdefault(arm_b.decode(), {})["pulls"] = int(cnt)
            for arm_b, blob in st.items():
                v = decode_arm(blob, dim, self.lam)
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
        n = 0
        for p in policies:  # one user's keys share a slot: a multi-key DEL is fine there
            n += int(await self.r.delete(state_key(p, user_id), pulls_key(p, user_id)))
        return n

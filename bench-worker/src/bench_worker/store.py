"""Bench job state in Redis (the fast path; MLflow runs are the record of truth).

Keys (``{j}`` job id, ``{k}`` cell key ``{j}:{n}``), all expiring after ``TTL_S``:

* ``bench:job:{j}`` hash: experiment, total, started_at, done_at_start, completed_at
* ``bench:job:{j}:done`` hash n → MLflow run id of the finished cell
* ``bench:job:{j}:failed`` hash n → why the cell failed for good (this submission)
* ``bench:job:{j}:attempt`` hash n → re-queue generation of a failed cell (msg-id part)
* ``bench:lease:{k}`` the worker working on the cell (PX lease, renewed by heartbeats)
"""

from __future__ import annotations

import time

from tipsml.keys import bench_job_key as job_key
from tipsml.keys import bench_lease_key as lease_key

TTL_S = 30 * 86400


# KEYS[1] done, KEYS[2] failed, KEYS[3] job; ARGV[1] n, ARGV[2] run id, ARGV[3] ttl
_RECORD_DONE = r"""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[2])}
"""
# KEYS[1] done, KEYS[2] failed; ARGV[1] n, ARGV[2] reason, ARGV[3] ttl
_RECORD_FAILED = r"""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[2])}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[2])}
"""
# KEYS[1] lease; ARGV[1] owner  → 1 when released
_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class JobStore:
    def __init__(self, redis):
        self.r = redis
        self._done = redis.register_script(_RECORD_DONE)
        self._failed = redis.register_script(_RECORD_FAILED)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    # -------------------------------------------------- submission
    async def start_submission(self, j: str, experiment: str, total: int,
                               done: dict[int, str]) -> dict[int, int]:
        """Record a (re)submission: sync finished cells found in MLflow, clear last
        submission's failures (they are retried), bump their attempt. Returns attempts."""
        failed = await self.r.hkeys(f"{job_key(j)}:failed")
        p = self.r.pipeline(transaction=True)
        if done:
            p.hset(f"{job_key(j)}:done", mapping={str(n): rid for n, rid in done.items()})
        for n in failed:
            p.hincrby(f"{job_key(j)}:attempt", n, 1)
        p.delete(f"{job_key(j)}:failed")
        p.hset(job_key(j), mapping={"experiment": experiment, "total": total,
                                    "started_at": time.time(), "done_at_start": len(done)})
        p.hdel(job_key(j), "completed_at")
        for suffix in ("", ":done", ":attempt"):
            p.expire(job_key(j) + suffix, TTL_S)
        await p.execute()
        return await self.attempts(j)

    async def attempts(self, j: str) -> dict[int, int]:
        raw = await self.r.hgetall(f"{job_key(j)}:attempt")
        return {int(k): int(v) for k, v in raw.items()}

    # -------------------------------------------------- cells
    async def done(self, j: str) -> dict[int, str]:
        raw = await self.r.hgetall(f"{job_key(j)}:done")
        return {int(k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}

    async def failed(self, j: str) -> dict[int, str]:
        raw = await self.r.hgetall(f"{job_key(j)}:failed")
        return {int(k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}

    async def is_done(self, j: str, n: int) -> str | None:
        v = await self.r.hget(f"{job_key(j)}:done", str(n))
        return v.decode() if isinstance(v, bytes) else v

    async def record_done(self, j: str, n: int, run_id: str) -> tuple[int, int]:
        d, f = await self._done(keys=[f"{job_key(j)}:done", f"{job_key(j)}:failed", job_key(j)],
                                args=[str(n), run_id, TTL_S])
        return int(d), int(f)

    async def record_failed(self, j: str, n: int, reason: str) -> tuple[int, int]:
        d, f = await self._failed(keys=[f"{job_key(j)}:done", f"{job_key(j)}:failed"],
                                  args=[str(n), reason[:500], TTL_S])
        return int(d), int(f)

    async def counts(self, j: str) -> tuple[int, int]:
        p = self.r.pipeline(transaction=False)
        p.hlen(f"{job_key(j)}:done")
        p.hlen(f"{job_key(j)}:failed")
        d, f = await p.execute()
        return int(d), int(f)

    async def meta(self, j: str) -> dict:
        raw = await self.r.hgetall(job_key(j))
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                              else v) for k, v in raw.items()}

    async def mark_completed(self, j: str) -> bool:
        """True for exactly one caller per submission (who then announces completion)."""
        return bool(await self.r.hsetnx(job_key(j), "completed_at", time.time()))

    # -------------------------------------------------- leases
    async def acquire(self, cell_key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self.r.set(lease_key(cell_key), owner, nx=True, px=ttl_ms))

    async def renew(self, cell_key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[lease_key(cell_key)], args=[owner, ttl_ms]))

    async def release(self, cell_key: str, owner: str) -> None:
        await self._release(keys=[lease_key(cell_key)], args=[owner])

    async def eta_s(self, j: str, done: int, failed: int, total: int) -> float | None:
        m = await self.meta(j)
        try:
            started = float(m["started_at"])
            base = int(m.get("done_at_start", 0))
        except (KeyError, ValueError):
            return None
        progressed = done - base
        if progressed <= 0:
            return None
        return max(0.0, (time.time() - started) / progressed * (total - done - failed))

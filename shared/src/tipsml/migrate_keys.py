"""Move the learning loop's keys to the Redis Cluster layout (idempotent).

    python -m tipsml.migrate_keys [--src REDIS_URL] [--dst REDIS_URL] [--dry-run]

Run it with the scorers and feedback consumers stopped (old workers write the old keys,
new workers the new ones). ``--src`` defaults to ``REDIS_URL``; ``--dst`` to ``--src``
(in place). From one Redis to a Redis Cluster: ``--src redis://old:6379/0 --dst
redis-cluster://n1:7000,n2:7000``. What it does, for every key of the former layout:

* ``tips:st:<p>:<u>``     → ``tips:st:{u}:<p>``, each arm model re-encoded in layout 2
  (float32, upper triangle of A⁻¹; ``bench/compact_state.py`` states the precision);
* ``tips:pulls:<p>:<u>``  → ``tips:pulls:{u}:<p>``;
* ``tips:dec:<id>``       → ``tips:dec:{u}:<id>`` in the compact record layout, same TTL;
* ``tips:gen:<id>``       → ``tips:gen:{u}:<id>`` (the user is in the record), same TTL;
* ``tips:evt:default:<id>`` → ``tips:evt:{u}:default:<id>`` (user from the decision);
  other event claims hold no user and are left to expire: a redelivery of such an event
  finds its decision already rewarded (``already_rewarded``), so nothing applies twice;
* ``tips:stg:<p>`` (a global model's A⁻¹ form) → its sufficient statistics
  (``A - λI``, b, n, Σr) in shard 0 ``tips:stg:{p.0}``; ``tips:pullsg:<p>`` → shard 0;
* with ``--dst`` ≠ ``--src``: every other ``tips:*`` key (due sets, caches, counters) is
  copied with DUMP/RESTORE (TTL kept).

Idempotent: an old key is deleted (``--keep`` keeps it) once its new key is written, and a
new key that already exists is merged field by field with the new key winning, so a
second run, or a run after an interruption, changes nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import numpy as np

from . import keys as K
from .bandits import HEADER, _tri_index, decode_arm, dim_of, encode_arm
from .state import (
    HP_IDS_KEY,
    StateStore,
    connect_redis,
    decision_key,
    event_key,
    generation_key,
    global_pulls_key,
    global_shard_key,
    hp_tag,
    pulls_key,
    state_key,
)


def _s(b) -> str:
    return b.decode() if isinstance(b, bytes) else b


async def _scan(r, pattern: str):
    async for k in r.scan_iter(match=pattern, count=1000):
        yield _s(k)


async def _ttl_ms(r, key: str) -> int:
    t = await r.pttl(key)
    return int(t) if t and t > 0 else 0


class Migrator:
    def __init__(self, src, dst, lam: float, dry_run: bool, keep: bool):
        self.src, self.dst = src, dst
        self.lam = lam
        self.dry = dry_run
        self.keep = keep
        self.store = StateStore(dst, lam=lam)
        self.counts: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def _done(self, key: str) -> None:
        if not self.dry and not self.keep:
            await self.src.delete(key)

    async def _merge_hash(self, new: str, fields: dict, ttl_ms: int = 0) -> None:
        if self.dry:
            return
        have = await self.dst.hkeys(new)
        have = {_s(h) for h in have}
        add = {k: v for k, v in fields.items() if k not in have}
        if add:
            await self.dst.hset(new, mapping=add)
        if ttl_ms:
            await self.dst.pexpire(new, ttl_ms)

    async def state(self) -> None:
        async for k in _scan(self.src, K.ST + "*"):
            if "{" in k:
                continue  # already the new layout
            pol, _, user = k[len(K.ST):].partition(":")
            raw = await self.src.hgetall(k)
            fields = {}
            for a, blob in raw.items():
                d = dim_of(blob)
                fields[_s(a)] = encode_arm(decode_arm(blob, d, self.lam), d) if d else blob
            await self._merge_hash(state_key(pol, user), fields, await _ttl_ms(self.src, k))
            await self._done(k)
            self._count("state")
        async for k in _scan(self.src, K.PULLS + "*"):
            if "{" in k:
                continue
            pol, _, user = k[len(K.PULLS):].partition(":")
            raw = {_s(a): v for a, v in (await self.src.hgetall(k)).items()}
            await self._merge_hash(pulls_key(pol, user), raw, await _ttl_ms(self.src, k))
            await self._done(k)
            self._count("pulls")

    async def decisions(self) -> None:
        async for k in _scan(self.src, K.DEC + "*"):
            did = k[len(K.DEC):]
            if "{" in did:
                continue
            f = {_s(a): v for a, v in (await self.src.hgetall(k)).items()}
            if "user" not in f:
                continue
            user = _s(f["user"])
            learners = _s(f.get("learners", b"")).split(",") if f.get("learners") else []
            hp = {p: _s(f[f"hp:{p}"]) for p in learners if f"hp:{p}" in f}
            rec = {"decision_id": did, "user_id": user, "arm": _s(f["arm"]),
                   "policy": _s(f.get("policy", b"")), "learners": learners,
                   "propensity": float(_s(f.get("propensity", b"0")) or 0),
                   "ts": float(_s(f.get("ts", b"0")) or 0), "hyper": hp,
                   "vectors": {p: ("", np.frombuffer(f[f"x:{p}"], dtype="<f8"))
                               for p in learners if f"x:{p}" in f}}
            rec["learners"] = [p for p in learners if p in rec["vectors"]]
            fields = self.store.decision_fields(rec)
            if hp and not self.dry:  # short tags in the record, full ids in tips:hpids
                await self.dst.hset(HP_IDS_KEY, mapping={hp_tag(i): i for i in hp.values()})
            if "rewarded" in f:
                fields["r"] = _s(f["rewarded"])
            if "fallback" in f:
                fields["f"] = "1"
            new = decision_key(did, user)
            ttl = await _ttl_ms(self.src, k)
            await self._merge_hash(new, fields, ttl)
            # the default reward's claim of this decision moves with it
            ek = f"{K.EVT}default:{did}"
            v = await self.src.get(ek)
            if v is not None:
                if not self.dry:
                    await self.dst.set(event_key(f"default:{did}", user), v,
                                       px=await _ttl_ms(self.src, ek) or None, nx=True)
                await self._done(ek)
                self._count("event_claim")
            await self._done(k)
            self._count("decision")
        async for k in _scan(self.src, K.GEN + "*"):
            did = k[len(K.GEN):]
            if "{" in did:
                continue
            f = {_s(a): v for a, v in (await self.src.hgetall(k)).items()}
            if "user_id" not in f:
                continue
            await self._merge_hash(generation_key(did, _s(f["user_id"])), f,
                                   await _ttl_ms(self.src, k))
            await self._done(k)
            self._count("generation")

    async def globals(self) -> None:
        async for k in _scan(self.src, K.STG + "*"):
            pol = k[len(K.STG):]
            if "{" in pol:
                continue
            raw = await self.src.hgetall(k)
            fields = {}
            for a, blob in raw.items():
                d = dim_of(blob)
                if not d:
                    continue
                v = decode_arm(blob, d, self.lam)
                ainv = v[HEADER + d:].reshape(d, d)
                xx = np.linalg.inv(ainv) - self.lam * np.eye(d)
                flat, _ = _tri_index(d)
                stats = np.concatenate([v[:HEADER + d], xx.ravel()[flat]])
                fields[_s(a)] = stats.astype("<f8").tobytes()
            await self._merge_hash(global_shard_key(pol, 0), fields)
            await self._done(k)
            self._count("global_model")
        async for k in _scan(self.src, K.PULLSG + "*"):
            pol = k[len(K.PULLSG):]
            if "{" in pol:
                continue
            raw = {_s(a): v for a, v in (await self.src.hgetall(k)).items()}
            await self._merge_hash(global_pulls_key(pol, 0), raw)
            await self._done(k)
            self._count("global_pulls")

    async def rest(self) -> None:
        """src ≠ dst: copy every other tips:* key (DUMP/RESTORE, TTL kept)."""
        moved = (K.ST, K.PULLS, K.DEC, K.GEN, K.STG, K.PULLSG, K.EVT + "default:")
        async for k in _scan(self.src, K.PREFIX + "*"):
            if k.startswith(moved) and "{" not in k:
                continue
            if await self.dst.exists(k):
                continue
            blob = await self.src.dump(k)
            if blob is None:
                continue
            if not self.dry:
                await self.dst.restore(k, await _ttl_ms(self.src, k), blob, replace=False)
            self._count("copied")


async def run(args) -> dict:
    src = connect_redis(args.src)
    dst = connect_redis(args.dst) if args.dst and args.dst != args.src else src
    m = Migrator(src, dst, args.ridge_lambda, args.dry_run, args.keep)
    try:
        await m.state()
        await m.decisions()
        await m.globals()
        if dst is not src:
            await m.rest()
    finally:
        await src.aclose()
        if dst is not src:
            await dst.aclose()
    return m.counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tipsml.migrate_keys", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--dst", default=None)
    ap.add_argument("--ridge-lambda", type=float,
                    default=float(os.environ.get("RIDGE_LAMBDA", "1.0")))
    ap.add_argument("--dry-run", action="store_true", help="count what would move")
    ap.add_argument("--keep", action="store_true", help="do not delete the old keys")
    args = ap.parse_args(argv)
    counts = asyncio.run(run(args))
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to migrate",
          file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scoring logic of ``tips.score`` / ``tips.stats`` / ``tips.reset`` (no NATS here).

``Scorer.score`` does exactly one pipelined Redis round trip (the live policy's and
every shadow policy's arm models), computes the choice with numpy, and returns the
reply plus the records to write *after* replying: the decision record (Redis, for the
reward join) and the DECISIONS log entries (JetStream, for off-policy evaluation).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tipsml.bandits import Policy, build_policies, choose_many, round6
from tipsml.contract import ContractError, ErrorCode, ScoreRequest
from tipsml.features import build_vectors, resolve_time
from tipsml.messaging.breaker import CircuitBreaker
from tipsml.state import StateStore, future_outcome, pulls_key, settle_future, state_key

log = logging.getLogger(__name__)


class _Batch:
    """One read pipeline in flight: its requests, when it left, whether it is settled."""

    __slots__ = ("items", "late", "settled", "t0")

    def __init__(self, items, t0: float):
        self.items = items
        self.t0 = t0
        self.settled = False  # its requests have their models or their failure
        self.late = False     # its deadline passed (the grace turns are running)


class CoalescingReader:
    """Reads of concurrent requests go to Redis together: one pipeline per batch.

    A burst of N requests used to start N script calls at once; they queued for the
    connection pool, each with its own 25 ms deadline, and ``asyncio.wait_for`` cancelled
    the calls that ran late — redis-py then drops the connection (its reply is unread),
    so a burst turned into a reconnect storm, the breaker opened and most of the burst
    was served by the fallback. Here, requests that arrive while ``max_inflight``
    pipelines are out wait together and leave in the next one (up to ``max_batch``
    requests' reads, one round trip, one connection). The deadline belongs to the batch,
    counted from when it was sent: a slow Redis fails the batch's requests (they fall
    back), but the pipeline itself is never cancelled, so connections stay healthy.

    On the raw connection the pipeline's replies come back by callback, straight from the
    connection's reader to the requests' futures (no future or loop turn in between), and
    one timer watches the oldest batch's deadline instead of a timer per batch (issue 12).
    """

    def __init__(self, store: StateStore, *, timeout_s: float, max_batch: int = 32,
                 max_inflight: int = 2, breaker_failures: int = 3, breaker_s: float = 0.5):
        self.store = store
        self.breaker = CircuitBreaker(breaker_failures, breaker_s)  # counts failed batches
        self.timeout_s = timeout_s
        self.max_batch = max(1, max_batch)
        self.max_inflight = max(1, max_inflight)
        self._pending: list[tuple[list[str], list[str], Callable]] = []
        self._inflight = 0
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: collections.deque[_Batch] = collections.deque()  # sent, oldest first
        self._watch: asyncio.TimerHandle | None = None
        # the raw connection's read, written at once (StateStore.load_batch_nowait)
        self._nowait = getattr(store, "load_batch_nowait", None)
        # called after each batch's requests had their answer (the scorer's fast NATS
        # connection sends the replies they wrote then, not a loop turn later)
        self.on_settled: list[Callable[[], None]] = []
        self.batches = 0  # observable: batches sent (tests, metrics)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop, looked up once (``asyncio.get_running_loop`` costs a getpid() syscall,
        and the hot path needed it three times per request) and again only if that loop
        was closed (a reader outliving a test's loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
            self._watch = None  # a closed loop's timer and batches never complete
            self._out.clear()
        return loop

    def load(self, keys: list[str], arms: list[str]) -> asyncio.Future:
        fut = self._running_loop().create_future()
        self.load_cb(keys, arms, lambda res, err: settle_future(fut, res, err))
        return fut

    def load_cb(self, keys: list[str], arms: list[str], cb) -> None:
        """:meth:`load` without a future: ``cb(models, None)`` or ``cb(None, error)`` is
        called from the connection's reader (or the deadline's timer), in the same loop
        turn the outcome is known (issue 12: the request path needs no task)."""
        if self.breaker.is_open:
            cb(None, ConnectionError("redis circuit open"))
            return
        self._pending.append((keys, arms, cb))
        if not self._scheduled:
            self._scheduled = True
            self._running_loop().call_soon(self._flush)

    def flush_now(self) -> None:
        """Send the reads queued so far now, not at the next loop turn (the fast NATS
        connection calls it once it has handed on every request of a read)."""
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        loop = self._running_loop()
        # on a Redis Cluster each master answers for itself within the deadline (a failing
        # master fails only its users' requests, not the batch)
        kw = {"deadline_s": self.timeout_s * 0.8} if getattr(self.store, "cluster", False) \
            else {}
        out = self._out
        while out and out[0].settled:
            out.popleft()
        while self._pending and self._inflight < self.max_inflight:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._inflight += 1
            self.batches += 1
            reqs = [(k, a) for k, a, _ in batch]
            b = _Batch(batch, loop.time())
            out.append(b)
            if self._watch is None:
                self._watch = loop.call_at(b.t0 + self.timeout_s, self._check)
            # the pipeline written at once where the raw connection is up, its replies by
            # callback; else one task per batch (redis-py, a cluster, not connected yet)
            try:
                sent = self._nowait is not None and not kw and self._nowait(
                    reqs, lambda res, err, b=b: self._answered(b, res, err))
            except Exception as e:  # noqa: BLE001 - e.g. the connection refused the write
                self._settle(b, e)
                continue
            if not sent:
                job = loop.create_task(self.store.load_batch(reqs, **kw))
                job.add_done_callback(lambda j, b=b: self._answered(b, *future_outcome(j)))

    def _answered(self, b: _Batch, results, err: BaseException | None) -> None:
        """The pipeline finished: its requests get their models (or its failure); one
        that already failed for lateness only drops the outcome."""
        if b.settled:
            return
        if isinstance(err, asyncio.CancelledError):
            err = ConnectionError("state store read cancelled")
        self._settle(b, err, results)

    def _check(self) -> None:
        """The watch timer: batches past their deadline start their grace turns
        (:meth:`_late`); the timer is set again for the oldest batch still in time."""
        self._watch = None
        loop = self._running_loop()
        now = loop.time()
        for b in self._out:
            if b.settled or b.late:
                continue
            due = b.t0 + self.timeout_s
            if now < due:
                self._watch = loop.call_at(due, self._check)
                return
            b.late = True
            self._late(b, 0)

    def _late(self, b: _Batch, turns: int) -> None:
        """The deadline passed. A busy loop fires it in the same turn as the reply's socket
        event, before the reader resumes: give the reply a few turns before calling Redis
        slow (our own queueing is not Redis's fault). Then the waiting requests give up;
        the pipeline finishes in the background (its reply is read and dropped)."""
        if b.settled:
            return  # answered meanwhile
        if turns < 8:
            self._running_loop().call_soon(self._late, b, turns + 1)
            return
        self._settle(b, TimeoutError(
            f"state store did not answer within {self.timeout_s * 1000:.0f} ms"))

    def _settle(self, b: _Batch, err: BaseException | None, results=None) -> None:
        b.settled = True
        self._inflight -= 1
        try:
            if err is None:
                self._resolve(b.items, results)
            else:
                self._fail(b.items, err)
        finally:
            if self._pending and not self._scheduled:
                self._scheduled = True
                self._running_loop().call_soon(self._flush)
            for hook in self.on_settled:
                hook()

    @staticmethod
    def _answer(cb, res, err) -> None:
        try:
            cb(res, err)
        except Exception:  # noqa: BLE001 - one request's failure never stops the batch
            log.exception("a state read's callback failed")

    def _fail(self, batch, err: BaseException) -> None:
        """A failed batch fails its requests and those queued behind it: Redis is slow or
        down, so they fall back now instead of waiting for a batch of their own. After
        ``breaker_failures`` failed batches in a row the breaker opens for ``breaker_s``:
        requests then fall back at once, until a probe batch goes through."""
        self.breaker.failure()
        waiting, self._pending = self._pending, []
        for *_, cb in (*batch, *waiting):
            self._answer(cb, None, err)

    def _resolve(self, batch, results) -> None:
        self.breaker.success()
        for (*_, cb), res in zip(batch, results):
            if isinstance(res, Exception):
                self._answer(cb, None, res)
            else:
                self._answer(cb, res, None)


class DecisionIds:
    """Random 128-bit decision ids as 32 hex digits (uuid4().hex's shape), drawn from the
    OS's CSPRNG 512 at a time: one ``os.urandom`` call per 512 decisions instead of one
    per decision plus a UUID object (4.3 → 1.1 µs). Unpredictable like uuid4: a client
    seeing its own ids learns nothing of another user's."""

    __slots__ = ("__weakref__", "_buf", "_pos")

    def __init__(self):
        self._buf, self._pos = b"", 0
        # a forked child draws its own (without a getpid() syscall per decision)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (d := ref()) is not None and d._forget())

    def _forget(self) -> None:
        self._buf, self._pos = b"", 0

    def __call__(self) -> str:
        p = self._pos
        if p >= len(self._buf):
            self._buf, p = os.urandom(16 * 512), 0
        self._pos = p + 16
        return self._buf[p:p + 16].hex()


# Features as the DECISIONS log keeps them: 6 decimals (the decision record keeps float32;
# 1e-6 is far below any feature's meaningful resolution), about half the bytes of full
# float64 reprs: x.round(6).tolist(), in C where it is built.
_logged = round6


class _Plan:
    """What a decision of one live policy needs that does not change between requests:
    its shadows, which of them learn, their feature sets and update ids (built once per
    live policy: issue 12)."""

    __slots__ = ("feature_sets", "global_model", "hyper", "learners", "learns", "pols",
                 "shared", "shadows", "versions")

    def __init__(self, live: Policy, shadows: list[Policy], learners: list[str]):
        self.shadows = shadows
        self.pols = [live, *shadows]
        self.learners = learners
        self.learns = [p.name in learners for p in self.pols]
        self.feature_sets = [p.features for p in self.pols]
        self.versions = [p.features.version for p in self.pols]
        self.hyper = {p.name: p.update_id for p, learns in zip(self.pols, self.learns) if learns}
        self.global_model = any(p.global_model for p in self.pols)
        self.shared = self.global_model or any(p.pooled for p in self.pols)  # not one read


class _Decision:
    """One request's decision between its start and its models' arrival."""

    __slots__ = ("arms", "decision_id", "live", "plan", "record", "req", "skeys", "ts",
                 "when", "xs")

    def __init__(self, req, live, plan, arms, skeys, decision_id, ts, when, xs, record):
        self.req = req
        self.live = live
        self.plan = plan
        self.arms = arms
        self.skeys = skeys
        self.decision_id = decision_id
        self.ts = ts
        self.when = when  # (hour of day, day of week) the decision was made at
        self.xs = xs
        self.record = record


@dataclass(slots=True)
class ScoreOutcome:
    reply: dict
    record: dict | None  # decision record for Redis (fallbacks have one too)
    log: list[dict]      # DECISIONS entries (served + shadow)


class Scorer:
    def __init__(self, settings, store: StateStore, rng: np.random.Generator | None = None):
        self.settings = settings
        self.store = store
        self.policies: dict[str, Policy] = build_policies(settings)
        for p in [settings.default_policy, *settings.shadow_policies]:
            if p not in self.policies:
                raise ValueError(f"configured policy {p!r} is not one of {sorted(self.policies)}")
        self.arms = list(settings.arms)
        self.rng = rng or np.random.default_rng()
        self.new_id = DecisionIds()
        self._plans: dict[str, _Plan] = {}
        # a pooled policy's prior from the fresh cache without a task (StateStore)
        self._prior_nowait = getattr(store, "shared_prior_nowait", None)
        self.redis_timeout_s = getattr(settings, "redis_timeout_s", 0.025)
        self.reader = CoalescingReader(
            store, timeout_s=self.redis_timeout_s,
            max_batch=getattr(settings, "redis_read_batch", 32),
            max_inflight=getattr(settings, "redis_read_inflight", 2),
            breaker_failures=getattr(settings, "redis_breaker_failures", 3),
            breaker_s=getattr(settings, "redis_breaker_s", 0.5))

    def policy(self, name: str | None) -> Policy:
        name = name or self.settings.default_policy
        p = self.policies.get(name)
        if p is None:
            raise ContractError(ErrorCode.unknown_policy,
                                f"unknown policy {name!r}; "
                                f"known: {', '.join(sorted(self.policies))}")
        return p

    async def _load_models(self, pols, skeys, arms):
        """Per-user models in one read (one HMGET per key, one slot: the user's); global
        ones from the merged, cached shards (:meth:`StateStore.global_models`). Returns
        (models, priors): a pooled policy's prior is its shared model's θ (merged shards,
        cached: no Redis call on most requests)."""
        if not any(p.pooled or p.global_model for p in pols):  # the usual case: one read
            return await self.reader.load(skeys, arms), None
        glob = [p.global_model for p in pols]
        priors = []
        for p in pols:
            th = None
            if p.pooled:
                if self._prior_nowait is not None:  # the fresh cache: no task, no await
                    th = self._prior_nowait(p, arms)
                if th is None:
                    th = await self.store.shared_prior(p, arms, self.redis_timeout_s)
            priors.append(th)
        if not any(glob):
            return await self.reader.load(skeys, arms), priors
        ukeys = [k for k, g in zip(skeys, glob) if not g]
        got = iter(await self.reader.load(ukeys, arms) if ukeys else [])
        out = []
        for p, g in zip(pols, glob):
            out.append(await self.store.global_models(p, arms) if g else next(got))
        return out, priors

    def _new_plan(self, live: Policy) -> _Plan:
        """The plan of ``live``, built on its first request and kept."""
        shadows = [self.policies[s] for s in self.settings.shadow_policies if s != live.name]
        learners = [live.name]
        if getattr(self.settings, "shadow_learn", True):
            learners += [p.name for p in shadows]
        plan = self._plans[live.name] = _Plan(live, shadows, learners)
        return plan

    def _begin(self, req: ScoreRequest, live: Policy, plan: _Plan, arms: list[str]
               ) -> _Decision:
        """What a decision holds before its models are read: its id, time, features and
        the decision record (the same for the served and the fallback reply)."""
        pols, uid = plan.pols, req.user_id
        skeys = [state_key(p.name, uid, p.global_model) for p in pols]
        ts = time.time()
        decision_id = self.new_id()
        when = resolve_time(req.context)
        # one vector per feature version (policies sharing one share the array)
        byv = build_vectors(plan.feature_sets, req.context, req.profile_features, when=when)
        xs = [byv[v] for v in plan.versions]
        record = {
            "decision_id": decision_id, "user_id": uid,
            "policy": live.name, "policy_version": live.version,
            "ts": ts, "learners": plan.learners,
            "vectors": {p.name: (k, x) for p, k, x, learns in zip(pols, skeys, xs, plan.learns)
                        if learns},
            "pulls_key": pulls_key(live.name, uid, live.global_model),
            "hyper": plan.hyper,
        }
        return _Decision(req, live, plan, arms, skeys, decision_id, ts, when, xs, record)

    async def score(self, req: ScoreRequest) -> ScoreOutcome:
        live = self.policy(req.policy)
        plan = self._plans.get(live.name) or self._new_plan(live)
        d = self._begin(req, live, plan, req.arms or self.arms)
        try:
            blobs, priors = await self._load_models(plan.pols, d.skeys, d.arms)
        except (TimeoutError, Exception) as e:  # Redis down/slow: safe uniform fallback
            return self._fallback(d, repr(e)[:200])
        return self._finish(d, blobs, priors)

    def score_cb(self, req: ScoreRequest,
                 cb: Callable[[ScoreOutcome | Exception], None]) -> bool:
        """:meth:`score` without a task or a future (issue 12): ``cb(outcome)`` is called
        from the state read's callback, in the loop turn Redis answered (or the deadline
        passed: the fallback); ``cb(exception)`` where :meth:`score` would have raised
        after its read (e.g. a stored model it cannot use). ``False``, and nothing done,
        where the request needs an await first — a pooled policy's shared prior due for a
        refresh, a global model — then :meth:`score` serves it. Raises what :meth:`score`
        raises before its read (``unknown_policy``); ``cb`` must not raise."""
        live = self.policy(req.policy)
        plan = self._plans.get(live.name) or self._new_plan(live)
        arms = req.arms or self.arms
        priors = None
        if plan.shared:  # a pooled or global policy among them
            if plan.global_model or self._prior_nowait is None:
                return False
            priors = [self._prior_nowait(p, arms) if p.pooled else None for p in plan.pols]
            if any(th is None for p, th in zip(plan.pols, priors) if p.pooled):
                return False  # a refresh is due: score() awaits it
        d = self._begin(req, live, plan, arms)

        def answered(blobs, err) -> None:
            try:
                out = (self._fallback(d, repr(err)[:200]) if err is not None  # Redis down/slow
                       else self._finish(d, blobs, priors))
            except Exception as e:  # noqa: BLE001 - the request's typed error, not the reader's
                cb(e)
                return
            cb(out)

        self.reader.load_cb(d.skeys, arms, answered)
        return True

    def _finish(self, d: _Decision, blobs, priors) -> ScoreOutcome:
        """The choice of every policy from its models, and what the decision replies, records
        and logs."""
        req, live, plan, arms, xs = d.req, d.live, d.plan, d.arms, d.xs
        shadows, decision_id, ts, record = plan.shadows, d.decision_id, d.ts, d.record
        choices = choose_many(plan.pols, arms, blobs, xs, self.rng, priors)
        c = choices[0]
        reply = {
            "ok": True, "decision_id": decision_id, "policy": live.name,
            "policy_version": live.version, "arm": c.arm, "propensity": c.propensity,
            "explored": c.explored, "scores": c.scores, "feature_version": live.features.version,
            "shadow": [{"policy": p.name, "arm": ch.arm, "propensity": ch.propensity}
                       for p, ch in zip(shadows, choices[1:])],
            "fallback": False,
        }
        if req.request_id:
            reply["request_id"] = req.request_id
        record["arm"] = c.arm
        record["propensity"] = c.propensity
        rounded: dict[str, list[float]] = {}

        def logged(i: int) -> list[float]:  # once per feature version
            v = plan.versions[i]
            r = rounded.get(v)
            if r is None:
                r = rounded[v] = _logged(xs[i])
            return r

        hour, dow = d.when
        # one DECISIONS message per decision: the served entry (its fields as before) with
        # the shadow policies' choices inside it (``shadow``; scorer.decisionlog.expand_entry
        # gives the former one-entry-per-policy view)
        entry = {
            "decision_id": decision_id, "user_id": req.user_id, "policy": live.name,
            "policy_version": live.version, "served": True, "live_policy": live.name,
            "arm": c.arm, "propensity": c.propensity, "explored": c.explored,
            "arms": arms, "scores": c.scores, "features": logged(0),
            "feature_version": live.features.version, "hour_of_day": hour, "day_of_week": dow,
            "served_arm": c.arm, "ts": ts, "request_id": req.request_id,
            "shadow": [{"policy": p.name, "policy_version": p.version, "arm": ch.arm,
                        "propensity": ch.propensity, "explored": ch.explored,
                        "scores": ch.scores, "features": logged(i),
                        "feature_version": p.features.version}
                       for i, (p, ch) in enumerate(zip(shadows, choices[1:]), 1)],
        }
        return ScoreOutcome(reply, record, [entry])

    def _fallback(self, d: _Decision, reason: str) -> ScoreOutcome:
        """A uniform choice (p = 1/K, the best exploration data OPE can get). Its record is
        written like any other once Redis answers again (the writer retries), so its
        reward applies and the log keeps it, flagged ``fallback``."""
        req, live, arms, record = d.req, d.live, d.arms, d.record
        decision_id, ts = d.decision_id, d.ts
        arm = arms[int(self.rng.integers(len(arms)))]
        p = 1.0 / len(arms)
        reply = {
            "ok": True, "decision_id": decision_id, "policy": live.name,
            "policy_version": live.version + "+fallback", "arm": arm, "propensity": p,
            "explored": True, "scores": {a: 0.0 for a in arms},
            "feature_version": live.features.version, "shadow": [], "fallback": True,
            "fallback_reason": "state store unavailable",
        }
        if req.request_id:
            reply["request_id"] = req.request_id
        log = [{
            "decision_id": decision_id, "user_id": req.user_id, "policy": live.name,
            "policy_version": reply["policy_version"], "served": True, "live_policy": live.name,
            "arm": arm, "propensity": p, "explored": True, "arms": arms, "scores": reply["scores"],
            "features": record["vectors"][live.name][1].tolist(),
            "feature_version": live.features.version, "served_arm": arm,
            "ts": ts, "request_id": req.request_id, "fallback": True, "fallback_detail": reason,
        }]
        log[0]["hour_of_day"], log[0]["day_of_week"] = d.when
        record.update(arm=arm, propensity=p, fallback=True)
        return ScoreOutcome(reply, record, log)

    async def stats(self, user_id: str, policy: str | None) -> dict:
        pols = [self.policy(policy)] if policy else [self.policy(None)]
        out = {}
        for p in pols:
            arms = await self.store.stats(p.name, user_id, p.global_model, p.dim)
            out[p.name] = {"global_model": p.global_model, "version": p.version, "arms": arms}
        first = out[pols[0].name]
        return {"ok": True, "user_id": user_id, "policy": pols[0].name,
                "arms": first["arms"], "policies": out}

    async def reset(self, user_id: str, policy: str | None) -> dict:
        pols = [self.policy(policy)] if policy else list(self.policies.values())
        per_user = [p.name for p in pols if not p.global_model]
        deleted = await self.store.reset(per_user, user_id)
        return {"ok": True, "user_id": user_id, "reset_policies": per_user,
                "skipped_global": [p.name for p in pols if p.global_model], "keys_deleted": deleted}

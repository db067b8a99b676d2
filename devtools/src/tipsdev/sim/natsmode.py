"""NATS mode: the simulator plays the recommender against the real workers.

Per round, for every (policy cohort, user):

1. ``tips.score`` request-reply to the real scorer (``policy`` named in the request);
2. wait until the scorer has *logged* the decision — a core subscription on
   ``decisions.<policy>`` sees the served entry, which the scorer publishes only after
   the decision record is in Redis, so the reward can always be joined;
3. draw the reaction from the hidden model (same uniform as in-process mode);
4. publish ``{event_id, decision_id, user_id, reaction, dwell_ms, ts}`` on
   ``feedback.<reaction>`` with ``Nats-Msg-Id: <event_id>`` (JetStream, FEEDBACK) —
   except, with the realistic client (``client="realistic"``, the default), for an
   *ignored* tip: a real app cannot know a tip was ignored, so nothing is sent and the
   feedback consumer's default reward (``DEFAULT_REWARD`` when ``REWARD_WINDOW_S``
   closes) is what the learner gets; ``client="explicit"`` is the former simulator;
5. before the next round, wait until the durable ``feedback-consumer`` has acked
   everything up to the last feedback published (consumer info: ack floor), so a
   user's next decision sees the previous reward — the in-process semantics.

Each policy cohort uses its own user ids (``<run>-<policy>-<user>``) built on the same
simulated users, so cohorts never share bandit state and compare like for like.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tipsdev.sim.inproc import Trace
from tipsdev.sim.world import REACTIONS, Episode
from tipsml import subjects as S
from tipsml.messaging.connection import request_json
from tipsml.rewards import REWARD_TABLE


@dataclass
class LiveStats:
    """Counters the live view reads (updated by the NATS runner)."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    feedback: int = 0
    silent: int = 0  # ignored tips of the realistic client: nothing published
    unconfirmed: int = 0
    unsettled_rounds: int = 0
    round: int = 0
    lat: deque = field(default_factory=lambda: deque(maxlen=20000))  # (t, seconds)
    reward_sum: dict = field(default_factory=dict)
    reward_n: dict = field(default_factory=dict)
    last_tip: str | None = None
    generate_errors: int = 0

    def observe(self, latency_s: float) -> None:
        self.requests += 1
        self.lat.append((time.monotonic(), latency_s))

    def window(self, seconds: float = 5.0) -> list[float]:
        cut = time.monotonic() - seconds
        return [v for t, v in list(self.lat) if t >= cut]

    def rps(self, seconds: float = 5.0) -> float:
        span = min(seconds, max(time.monotonic() - self.started, 1e-3))
        return len(self.window(seconds)) / span

    def p99_ms(self, seconds: float | None = 5.0) -> float:
        vals = self.window(seconds) if seconds else [v for _, v in self.lat]
        return float(np.percentile(vals, 99) * 1000) if vals else float("nan")

    def reward(self, policy: str) -> float:
        n = self.reward_n.get(policy, 0)
        return self.reward_sum.get(policy, 0.0) / n if n else float("nan")


class NatsSimError(RuntimeError):
    pass


async def wait_feedback_applied(js, last_seq: int, timeout: float,
                                durable: str = S.FEEDBACK_CONSUMER.durable) -> bool:
    """True once the feedback consumer has acked every message up to ``last_seq``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        ci = await js.consumer_info(S.FEEDBACK_CONSUMER.stream, durable)
        floor = ci.ack_floor.stream_seq if ci.ack_floor else 0
        delivered = ci.delivered.stream_seq if ci.delivered else 0
        if floor >= last_seq or (delivered >= last_seq and not ci.num_ack_pending):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.05)


async def run_nats(nc, ep: Episode, cohorts: list, *, run_id: str | None = None,
                   concurrency: int = 64, timeout: float = 2.0, settle: bool = True,
                   settle_timeout: float = 15.0, deadline: float | None = None,
                   stats: LiveStats | None = None, progress=None,
                   generate_every: int = 0, stop: asyncio.Event | None = None,
                   rate: float | None = None, client: str = "realistic") -> dict[str, Trace]:
    """Play every cohort on ``ep`` through NATS. A cohort is a policy name or a
    ``(label, policy)`` pair (two cohorts may run the same policy under different labels).

    ``deadline`` (monotonic) / ``stop`` end the run after the current round; the traces
    then hold only the rounds played (``Trace.meta['rounds']``). ``rate`` paces the
    ``tips.score`` requests (per second) so a demo stays within what the box sustains.
    ``client``: ``realistic`` (ignored tips send nothing) or ``explicit`` (see above).
    """
    if client not in ("realistic", "explicit"):
        raise ValueError(f"client must be realistic or explicit, not {client!r}")
    js = nc.jetstream()
    cohorts = [(c, c) if isinstance(c, str) else tuple(c) for c in cohorts]
    policies = [lab for lab, _ in cohorts]
    policy_of = dict(cohorts)
    run_id = run_id or uuid.uuid4().hex[:8]
    stats = stats or LiveStats()
    U, T = ep.n_users, ep.rounds
    arms = list(ep.arms)
    arm_ix = {a: i for i, a in enumerate(arms)}
    out = {p: {"arm": np.full((U, T), -1), "prop": np.zeros((U, T)), "rew": np.zeros((U, T)),
               "react": np.zeros((U, T), dtype=np.int64), "did": [[None] * T for _ in range(U)],
               "fb": np.zeros((U, T), dtype=bool)}
           for p in policies}
    uids = {p: [f"{run_id}-{p}-{u}" for u in ep.user_ids] for p in policies}
    seen: set[str] = set()
    seen_ev = asyncio.Event()

    async def on_decision(msg):
        try:
            d = json.loads(msg.data)
        except ValueError:
            return
        if d.get("served"):
            seen.add(d.get("decision_id"))
            seen_ev.set()

    subs = [await nc.subscribe(S.decisions_subject(p), cb=on_decision)
            for p in sorted(set(policy_of.values()))]
    await nc.flush()
    sem = asyncio.Semaphore(concurrency)
    last_seq = 0
    rounds_done = 0
    gen_tasks: set[asyncio.Task] = set()
    pace = {"next": 0.0}

    async def paced():
        now = time.monotonic()
        slot = max(pace["next"], now)
        pace["next"] = slot + 1.0 / rate
        if slot > now:
            await asyncio.sleep(slot - now)

    async def score(p: str, u: int, t: int):
        body = {"user_id": uids[p][u], "policy": policy_of[p], "arms": arms,
                "context": ep.context(u, t),
                "profile_features": ep.profile[u][t], "request_id": f"{run_id}:{p}:{u}:{t}"}
        if rate:
            await paced()
        async with sem:
            for attempt in range(3):
                t0 = time.perf_counter()
                r = await request_json(nc, S.TIPS_SCORE, body, timeout=timeout)
                stats.observe(time.perf_counter() - t0)
                if r.get("ok"):
                    break
                stats.errors += 1
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise NatsSimError(f"tips.score failed 3 times for {body['user_id']}: {r}")
        o = out[p]
        if r.get("fallback"):
            stats.fallbacks += 1
            o["fb"][u, t] = True
        o["arm"][u, t] = arm_ix[r["arm"]]
        o["prop"][u, t] = r["propensity"]
        o["did"][u][t] = r["decision_id"]
        return r

    async def generate(p: str, u: int, t: int, r: dict):
        try:
            g = await request_json(nc, S.TIPS_GENERATE, {
                "user_id": uids[p][u], "arm": r["arm"], "context": ep.context(u, t),
                "profile_features": ep.profile[u][t], "decision_id": r["decision_id"]},
                timeout=5.0)
            if g.get("ok"):
                stats.last_tip = (f"[{r['arm']} · {g.get('source')} · "
                                  f"{g.get('prompt_version')}] {g.get('tip')}")
            else:
                stats.generate_errors += 1
        except Exception:  # noqa: BLE001 - the generator is optional in the demo
            stats.generate_errors += 1

    async def feedback(p: str, u: int, t: int):
        nonlocal last_seq
        o = out[p]
        reaction = ep.reaction(u, t, int(o["arm"][u, t]))
        r = REWARD_TABLE[reaction]
        o["rew"][u, t] = r
        o["react"][u, t] = REACTIONS.index(reaction)
        stats.reward_sum[p] = stats.reward_sum.get(p, 0.0) + r
        stats.reward_n[p] = stats.reward_n.get(p, 0) + 1
        if client == "realistic" and reaction == "ignored":
            stats.silent += 1  # the app sends nothing; the service's default reward applies
            return
        did = o["did"][u][t]
        ev = f"{did}:fb"
        body = {"event_id": ev, "decision_id": did, "user_id": uids[p][u], "reaction": reaction,
                "dwell_ms": 0 if reaction in ("ignored", "dismissed") else 30000, "ts": time.time()}
        async with sem:
            ack = await js.publish(f"feedback.{reaction}", json.dumps(body).encode(),
                                   headers={"Nats-Msg-Id": ev}, timeout=timeout * 2)
        last_seq = max(last_seq, ack.seq)
        stats.feedback += 1

    try:
        for t in range(T):
            if (deadline is not None and time.monotonic() > deadline) or (stop and stop.is_set()):
                break
            stats.round = t
            replies = await asyncio.gather(*(score(p, u, t) for p in policies for u in range(U)))
            if generate_every and t % generate_every == 0 and len(gen_tasks) < 2:
                task = asyncio.create_task(generate(policies[0], 0, t, replies[0]))
                gen_tasks.add(task)
                task.add_done_callback(gen_tasks.discard)
            want = {r["decision_id"] for r in replies if not r.get("fallback")}
            wait_until = time.monotonic() + 5.0
            while not want <= seen and time.monotonic() < wait_until:
                seen_ev.clear()
                try:
                    await asyncio.wait_for(seen_ev.wait(), 0.1)
                except TimeoutError:
                    pass
            missing = want - seen
            stats.unconfirmed += len(missing)
            seen.difference_update(want)
            await asyncio.gather(*(feedback(p, u, t) for p in policies for u in range(U)))
            if settle and not await wait_feedback_applied(js, last_seq, settle_timeout):
                stats.unsettled_rounds += 1
            rounds_done = t + 1
            if progress is not None:
                progress(U * len(policies))
    finally:
        for s in subs:
            await s.unsubscribe()
        for task in list(gen_tasks):
            task.cancel()
    traces = {}
    for p in policies:
        o = out[p]
        a = o["arm"][:, :rounds_done]
        exp = np.take_along_axis(ep.expected[:, :rounds_done], np.maximum(a, 0)[:, :, None],
                                 axis=2)[:, :, 0]
        tr = Trace(policy_of[p], ep.seed, a, o["prop"][:, :rounds_done],
                   o["rew"][:, :rounds_done], exp,
                   ep.oracle()[:, :rounds_done], o["react"][:, :rounds_done])
        tr.meta = {"label": p, "client": client, "fallback": o["fb"][:, :rounds_done],
                   "user_ids": uids[p], "decision_ids": [row[:rounds_done] for row in o["did"]],
                   "rounds": rounds_done, "run_id": run_id}
        traces[p] = tr
    return traces

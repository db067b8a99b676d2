"""The default reward: silence is learned from, once, when a decision's window closes.

A real app never publishes ``ignored``: it cannot know that a user decided to ignore a
tip. Without a default, every arm is learned only from the tips users reacted to, so an
arm that is usually ignored but sometimes completed looks best (the learner estimates
reward *given a reaction*, not expected reward). As Azure Personalizer's reward wait
time and default reward do, the service owns it:

* the scorer's decision writer adds each decision to ``tips:due:{shard}`` (a sorted set,
  score = ts + ``REWARD_WINDOW_S``) in the same pipeline as the decision record;
* every ``DEFAULT_REWARD_SWEEP_S`` this sweeper takes a short lease on each shard in
  turn, reads the decisions whose window has closed (``ZRANGEBYSCORE``, at most
  ``DEFAULT_REWARD_BATCH``), and applies ``DEFAULT_REWARD`` to each through the same
  Lua script as a reaction, with the event id ``default:<decision_id>``;
* whichever claims the decision first wins: a reaction that came in time makes the
  default ``already_rewarded`` (counted, dropped); a reaction arriving after the
  default finds the decision rewarded (counted, dropped);
* then the members are removed. A crash between apply and remove re-sweeps them; the
  event claim makes that harmless. State lives in Redis only: restarts of any process
  lose nothing, and nothing scans the keyspace.

Cost per decision: one ZADD (~70 B of sorted-set entry while the window is open), one
ZRANGEBYSCORE share, one script call and one ZREM share when the window closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

from tipsml.state import DUE_SHARDS, StateStore, default_event_id

log = logging.getLogger(__name__)


class DefaultRewardSweeper:
    def __init__(self, store: StateStore, *, reward: float | None, every_s: float = 1.0,
                 batch: int = 256, concurrency: int = 32, metrics=None):
        self.store = store
        self.reward = reward
        self.every_s = every_s
        self.batch = batch
        self.concurrency = concurrency
        self.m = metrics
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.outcomes: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep_once()
            except Exception as e:  # noqa: BLE001 - Redis down: next round retries
                log.warning("default-reward sweep failed: %r", e)
            try:
                await asyncio.wait_for(stop.wait(), self.every_s)
            except TimeoutError:
                pass

    async def sweep_once(self, now: float | None = None) -> dict[str, int]:
        """One pass over every shard; returns the outcomes of this pass."""
        now = time.time() if now is None else now
        done: dict[str, int] = {}
        shards = list(range(DUE_SHARDS))
        random.shuffle(shards)  # replicas start on different shards
        for shard in shards:
            if not await self.store.claim_shard(shard, self.owner, int(self.every_s * 5000)):
                continue  # another replica sweeps it now
            while True:
                due = await self.store.due(shard, now, self.batch)
                if not due:
                    break
                if self.reward is not None:
                    sem = asyncio.Semaphore(self.concurrency)
                    outs = await asyncio.gather(*(self._apply(sem, did, user)
                                                  for did, user, _ in due))
                    for o in outs:
                        done[o] = done.get(o, 0) + 1
                await self.store.forget_due(shard, [m for *_, m in due])
                if len(due) < self.batch:
                    break
        for k, v in done.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        if self.m:
            self.m.due_backlog.set(await self.store.due_backlog(time.time()))
        return done

    async def _apply(self, sem: asyncio.Semaphore, decision_id: str, user_id: str) -> str:
        async with sem:
            res = await self.store.apply_reward(default_event_id(decision_id), decision_id,
                                                user_id, self.reward, claim_missing=True)
        if self.m:
            self.m.defaults.labels(res.outcome).inc()
            if res.outcome == "applied":
                self.m.applied.labels(res.policy, res.arm).inc()
                self.m.reward_sum.labels(res.policy, res.arm).inc(self.reward)
                self.m.reactions.labels(res.policy, "default",
                                        res.prompt_version or "unknown").inc()
        return res.outcome

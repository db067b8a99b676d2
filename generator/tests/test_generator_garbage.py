"""A ``tips.generate`` request leaves no reference cycles of the workers' objects behind
(issue 12, round 5: a cycle per request made the scorer's garbage collector stop the
process for 8-25 ms every second or less; see scorer/tests/test_scorer_garbage.py). Cache
hits, a miss served by the fallback (the LLM down) and typed errors, with the collector
saving what it finds."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from generator.generation import cand_key
from tipsdev.testing import CyclesLeft
from tipsml import guard as G
from tipsml import prompts

pytestmark = pytest.mark.system


async def _seed(redis_client, user: str, arm: str, n: int) -> None:
    """Candidates as a refresh writes them (as test_generate_contract's seed)."""
    key = cand_key(user, arm, "v1", "openai/smollm2-135m")
    for i in range(n):
        await redis_client.lpush(key, json.dumps({
            "tip": f"Tip {i} for {user}.", "model": "openai/smollm2-135m",
            "prompt_hash": prompts.REGISTRY["v1"].hash, "overlong": False, "ts": time.time(),
            "guard": G.GUARD_ID}))
    await redis_client.expire(key, 600)


async def test_generate_requests_leave_no_reference_cycles(nc, redis_client, generator_worker,
                                                           uid, gen_request):
    users = [f"{uid}-{i}" for i in range(6)]
    for u in users:
        await _seed(redis_client, u, "focus_block", 40)
    payloads = ([{"user_id": u, "arm": "focus_block", "request_id": f"r{i}"}
                 for i, u in enumerate(users * 4)]
                + [{"user_id": f"{uid}-miss", "arm": "focus_block"},  # the fallback
                   {"user_id": uid, "arm": "focus_block", "prompt_version": "nope"},
                   {"arm": "focus_block"}])
    async with generator_worker():
        await gen_request(payloads[0])  # warm: connections, caches, the prompt registry
        await asyncio.sleep(0.1)
        with CyclesLeft() as cycles:
            got = []
            for p in payloads:
                got.append(await gen_request(p))
            got += await asyncio.gather(*(gen_request(p) for p in payloads[:12]))
            await asyncio.sleep(0.3)  # exposures and bookkeeping written after the reply
    served = [g for g in got if g.get("ok")]
    assert len(served) == len(got) - 2 and {g["source"] for g in served} >= {"cache"}
    assert sorted(g["error"]["code"] for g in got if not g.get("ok")) == [
        "invalid_request", "unknown_prompt_version"]
    assert not cycles.found, sorted(cycles.found.items())

"""tips.generate refuses a request whose reply subject is not an inbox (issue 19): the
worker neither generates nor publishes, and counts it as code="refused_reply"."""

from __future__ import annotations

import asyncio
import json

import pytest

from tipsml import subjects as S

pytestmark = pytest.mark.system


async def test_forged_reply_subject_is_refused_and_counted(nc, generator_worker, uid,
                                                           dead_llm_url, gen_request):
    async with generator_worker(llm_api_base=dead_llm_url) as w:
        spy: list = []

        async def on_spy(msg):
            spy.append(msg)

        sub = await nc.subscribe(f"spy.{uid}.>", cb=on_spy)
        body = json.dumps({"user_id": f"u-{uid}", "arm": "focus_block"}).encode()
        for reply in (f"spy.{uid}.a", "$JS.API.STREAM.PURGE.DECISIONS", None):
            await nc.publish(S.TIPS_GENERATE, body, reply=reply or "")
        await nc.flush()
        for _ in range(100):
            if w.value("generator_requests_total", subject=S.TIPS_GENERATE,
                       code="refused_reply") >= 3:
                break
            await asyncio.sleep(0.02)
        assert w.value("generator_requests_total", subject=S.TIPS_GENERATE,
                       code="refused_reply") == 3
        assert w.value("generator_requests_total", subject=S.TIPS_GENERATE, code="ok") == 0
        await asyncio.sleep(0.2)
        assert spy == []
        await sub.unsubscribe()
        # a real request is served as ever
        r = await gen_request({"user_id": f"u-{uid}", "arm": "focus_block"})
        assert r["ok"] is True and r["tip"]

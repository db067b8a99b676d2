"""The worker lifecycle (tipsml.messaging.lifecycle.Worker): on stop, the stack unwinds in
reverse order of set-up, every step within what is left of SHUTDOWN_TIMEOUT_S, a failing
or hanging step never blocks the others (pure logic: no servers)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from tipsml.messaging.lifecycle import Worker


def settings(timeout_s: float = 1.0):
    return SimpleNamespace(shutdown_timeout_s=timeout_s)


async def test_teardown_is_reverse_order_within_the_deadline():
    order: list[str] = []
    stop, ready = asyncio.Event(), asyncio.Event()

    class Store:
        async def aclose(self):
            order.append("store")

    async def hang():
        order.append("hang")
        await asyncio.sleep(30)

    def boom():
        order.append("boom")
        raise RuntimeError("broken")

    async def background(stop_ev):
        await stop_ev.wait()
        order.append("task")

    async def main():
        async with Worker("t", settings(1.0), ready=ready, stop=stop) as w:
            w.closing(Store())
            w.on_close(hang)
            w.on_close(boom)
            w.task(background, name="bg")
            await w.run()

    t0 = time.monotonic()
    runner = asyncio.create_task(main())
    await asyncio.wait_for(ready.wait(), 5)
    stop.set()
    await asyncio.wait_for(runner, 5)
    took = time.monotonic() - t0
    assert order == ["task", "boom", "hang", "store"]  # last set up, first torn down
    assert took < 2.5, took  # the hanging step got what was left of the 1 s deadline


async def test_left_is_capped_by_share_and_deadline():
    w = Worker("t", settings(2.0), stop=asyncio.Event())
    assert w.left() == 2.0 and w.left(0.5) == 0.5
    w._start_deadline()
    await asyncio.sleep(0.2)
    assert 1.7 < w.left() < 1.85 and w.left(0.5) == 0.5
    w._deadline = time.monotonic() - 1
    assert w.left() == 0.1  # past the deadline: still a short try

"""Decision-log writer logic (pure asyncio, fakes for the two sinks; the system tests in
tests/faults/test_fault_burst_decisions.py run it against real Redis and JetStream)."""

from __future__ import annotations

import asyncio

from scorer.decisionlog import DecisionLogWriter


class FlakyStore:
    """Fails the first ``fail`` writes, then keeps what it is given."""

    def __init__(self, fail: int = 0, delay: float = 0.0):
        self.fail = fail
        self.delay = delay
        self.records: list[dict] = []

    async def record_decisions(self, records):
        await asyncio.sleep(self.delay)
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("redis down")
        self.records.extend(records)


class AckingJS:
    def __init__(self):
        self.ids: list[str] = []

    async def publish_async(self, subject, data, headers=None, wait_stall=None):
        fut = asyncio.get_running_loop().create_future()
        self.ids.append(headers["Nats-Msg-Id"])
        fut.set_result(None)
        return fut

    async def publish(self, subject, data, headers=None, timeout=None):
        self.ids.append(headers["Nats-Msg-Id"])


def decision(i: int):
    rec = {"decision_id": f"d{i}"}
    return rec, [{"decision_id": f"d{i}", "policy": "egreedy-v1"}]


async def test_records_are_retried_until_redis_takes_them():
    store, js = FlakyStore(fail=3), AckingJS()
    w = DecisionLogWriter(store, js, batch=8)
    w.start()
    for i in range(50):
        assert await w.submit(*decision(i))
    await w.drain(timeout=10)
    assert sorted(r["decision_id"] for r in store.records) == sorted(f"d{i}" for i in range(50))
    assert len(set(js.ids)) == 50 and w.lost == 0


async def test_backpressure_waits_instead_of_dropping():
    store, js = FlakyStore(delay=0.02), AckingJS()
    w = DecisionLogWriter(store, js, batch=4, high_water=8, maxsize=10_000, inflight=1)
    w.start()
    waited = 0
    for i in range(200):
        t0 = asyncio.get_running_loop().time()
        assert await w.submit(*decision(i))
        waited += asyncio.get_running_loop().time() - t0 > 0.005
        assert w.pending <= 8 + 1
    await w.drain(timeout=10)
    assert len(store.records) == 200 and w.lost == 0
    assert waited > 0  # replies did wait while the writer was behind


async def test_queue_full_while_redis_down_drops_and_counts():
    store, js = FlakyStore(fail=10**6), AckingJS()
    w = DecisionLogWriter(store, js, batch=4, high_water=4, maxsize=20, inflight=1)
    w.start()
    results = [await w.submit(*decision(i)) for i in range(60)]
    assert results.count(False) > 0 and w.lost == results.count(False)
    await w.drain(timeout=0.5)

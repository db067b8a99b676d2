"""Generator fixtures: the embedded real LLM (session) and in-process workers.

``generator_worker(**overrides)`` starts ``generator.main.serve`` on the session loop
against the embedded NATS + Redis of the root ``stack`` fixture. Only one generator runs
at a time (they share the ``generator`` queue group), so each test starts its own with
the configuration it needs; a start costs a few milliseconds after the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest
import pytest_asyncio

from tipsdev.launcher import EmbeddedStack


@pytest.fixture(scope="session")
def llm_stack():
    """The real embedded model (llama-cpp server + SmolLM2-135M GGUF from PyPI)."""
    with EmbeddedStack(nats=False, redis=False, llm=True) as st:
        yield st


@pytest.fixture
def dead_llm_url():
    """An address where nothing listens: the LLM is down (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest_asyncio.fixture
async def hung_llm_url():
    """A server that accepts connections and never answers: the LLM is hung."""
    conns = []

    async def handle(reader, writer):
        conns.append(writer)
        with contextlib.suppress(Exception):
            await reader.read(1 << 16)
            await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    for w in conns:
        w.close()
    server.close()


@pytest_asyncio.fixture
async def canned_llm():
    """``await canned_llm(text)`` → an OpenAI-compatible server that answers every chat
    completion with ``text`` (``.url``, ``.calls``): a model whose output is known, to
    pin what the generator does with it (the real model is in test_generate_llm.py)."""
    servers = []

    class Canned:
        def __init__(self, text: str):
            self.text = text
            self.calls = 0
            self.url = ""

        async def handle(self, reader, writer):
            with contextlib.suppress(Exception):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.decode("latin-1").split("\r\n"):
                        if line.lower().startswith("content-length:"):
                            length = int(line.split(":", 1)[1])
                    if length:
                        await reader.readexactly(length)
                    self.calls += 1
                    body = json.dumps({
                        "id": f"canned-{self.calls}", "object": "chat.completion",
                        "created": int(time.time()), "model": "smollm2-135m",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": self.text}}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 12,
                                  "total_tokens": 62}}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                                 + body)
                    await writer.drain()
            writer.close()

    async def make(text: str) -> Canned:
        c = Canned(text)
        server = await asyncio.start_server(c.handle, "127.0.0.1", 0)
        servers.append(server)
        c.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        return c

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def generator_worker(stack):
    """Async context manager factory: ``async with generator_worker(llm_api_base=...) as w``;
    ``w.settings``, ``w.metrics`` (the worker's Prometheus collectors)."""
    from generator.main import GeneratorMetrics, serve
    from generator.settings import GeneratorSettings

    class Running:
        def __init__(self, settings, metrics):
            self.settings = settings
            self.metrics = metrics

        def value(self, name: str, **labels) -> float:
            v = self.metrics.registry.get_sample_value(name, labels)
            return v or 0.0

    @contextlib.asynccontextmanager
    async def start(**overrides):
        kw = {"nats_url": stack.nats_url, "redis_url": stack.redis_url, "metrics_port": -1,
              "llm_model": "openai/smollm2-135m", "llm_api_base": "http://127.0.0.1:9/v1",
              "llm_retries": 0, "generator_refresh_min_interval_s": 0.0,
              "generator_refill_on_miss": False, "tip_prompt_version": [],
              "default_prompt_version": None, "generator_fetch_timeout_s": 0.2}
        kw.update(overrides)
        settings = GeneratorSettings(**kw)
        metrics = GeneratorMetrics()
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, ready, stop, metrics))
        done, _ = await asyncio.wait({task, asyncio.create_task(ready.wait())}, timeout=60,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        try:
            yield Running(settings, metrics)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    return start


@pytest.fixture
def gen_request(nc):
    """``await gen_request(payload, timeout=3)`` → reply dict for ``tips.generate``.

    Retries a "no responders" answer for up to 2 s: right after a worker subscribes, a
    busy nats-server can still answer 503 for a moment even though the worker flushed its
    SUB (nats-server#2876). The retried requests never reached a worker.
    """
    from tipsml import subjects as S
    from tipsml.messaging.connection import request_json

    async def call(payload, timeout: float = 3.0) -> dict:
        for _ in range(100):
            r = await request_json(nc, S.TIPS_GENERATE, payload, timeout=timeout)
            err = r.get("error") or {}
            if r.get("ok") is False and err.get("message", "").startswith("no responders"):
                await asyncio.sleep(0.02)
                continue
            return r
        return r

    return call

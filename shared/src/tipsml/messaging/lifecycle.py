"""One worker lifecycle: settings → logging/uvloop/GC → connect → serve → on SIGTERM stop
taking work, let the work in hand finish within ``SHUTDOWN_TIMEOUT_S``, close.

Every worker's ``main.py`` is short wiring around :class:`Worker`::

    async def serve(settings, ready=None, stop=None):
        async with Worker("scorer", settings, ready=ready, stop=stop) as w:
            store = w.closing(StateStore.from_settings(settings))
            nc = await w.connect()
            ...
            await w.service(name=..., endpoints=[(spec, Endpoint(...)), ...])
            w.consume(PullConsumer(...))
            await w.run(metrics_port=port)

    def run():
        run_service(ScorerSettings, serve)

Teardown is one :class:`contextlib.AsyncExitStack`: what was opened first is closed
last. When the stop event fires (SIGINT/SIGTERM, or a test's event), the shutdown
deadline starts (``settings.shutdown_timeout_s``, 8 s by default: under the 10 s compose
and Kubernetes give before SIGKILL) and the stack unwinds in reverse order of set-up:
pull consumers stop fetching and wait for the messages in hand, endpoints stop taking
requests and wait for the ones in flight, the worker's own buffers drain (the decision
log, background refreshes), the NATS connection drains, Redis closes. Each step gets
what is left of the deadline (at most its own share), so the whole stop fits in it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT_S = 8.0


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass


def stop_event() -> asyncio.Event:
    """An event set on SIGINT/SIGTERM (graceful shutdown)."""
    ev = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, ev.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    return ev


def announce(service: str, **info) -> None:
    """One machine-readable ready line on stdout (the launcher and tests wait for it)."""
    print(json.dumps({"ready": service, "pid": os.getpid(), **info}), flush=True)


def tune_gc() -> None:
    """Fewer, later collections: the request path allocates many short-lived objects and
    a generation-0 sweep every 700 allocations shows up in the latency tail."""
    import gc

    gc.collect()
    gc.freeze()  # what start-up imported is never garbage: keep it out of every sweep
    gc.set_threshold(20_000, 20, 50)


def run_main(coro_fn) -> None:
    install_uvloop()
    tune_gc()
    asyncio.run(coro_fn())


def load_settings(settings_cls):
    """``settings_cls()`` from the environment, or one clear line on stderr and exit 2."""
    from tipsml.settings import SettingsError, describe_settings_error

    try:
        return settings_cls()
    except (SettingsError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        print(f"{settings_cls.__name__}: {describe_settings_error(e)}", file=sys.stderr,
              flush=True)
        raise SystemExit(2) from None


def run_service(settings_cls, serve) -> None:
    """The entry point of every worker: settings from the environment (a bad value: a
    clear message and exit status 2), logging, uvloop, GC tuning, then
    ``serve(settings)`` until SIGINT/SIGTERM."""
    settings = load_settings(settings_cls)
    setup_logging(settings.log_level)
    run_main(lambda: serve(settings))


class Worker:
    """A worker's resources on one :class:`AsyncExitStack` (see the module doc)."""

    def __init__(self, name: str, settings, *, ready: asyncio.Event | None = None,
                 stop: asyncio.Event | None = None):
        self.name = name
        self.settings = settings
        self.ready = ready
        self._stop = stop
        self.stop: asyncio.Event | None = None
        self.stack = AsyncExitStack()
        self.nc = None
        self.js = None
        self.service_obj = None
        self.timeout_s = float(getattr(settings, "shutdown_timeout_s",
                                       DEFAULT_SHUTDOWN_TIMEOUT_S))
        self._deadline: float | None = None

    async def __aenter__(self) -> Worker:
        self.stop = self._stop or stop_event()
        await self.stack.__aenter__()
        return self

    async def __aexit__(self, *exc) -> bool:
        self._start_deadline()  # an error during set-up tears down within the deadline too
        t0 = time.monotonic()
        try:
            return await self.stack.__aexit__(*exc)
        finally:
            log.info("%s stopped in %.2fs", self.name, time.monotonic() - t0)

    # ------------------------------------------------------------------ the deadline
    def _start_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s

    def left(self, share: float | None = None) -> float:
        """Seconds this step may take: what is left of the shutdown deadline, at most
        ``share``, at least 0.1 (a step past the deadline still gets a short try)."""
        if self._deadline is None:
            rest = self.timeout_s
        else:
            rest = self._deadline - time.monotonic()
        if share is not None:
            rest = min(rest, share)
        return max(0.1, rest)

    # ------------------------------------------------------------------ resources
    def on_close(self, fn: Callable[..., Any], *args, share: float | None = None,
                 what: str = "") -> None:
        """At shutdown, call ``fn(*args)`` (awaited when it is a coroutine function)
        within ``left(share)`` seconds; a failure or timeout is logged, never raised."""
        label = what or getattr(fn, "__qualname__", repr(fn))

        async def close() -> None:
            try:
                res = fn(*args)
                if inspect.isawaitable(res):
                    await asyncio.wait_for(res, self.left(share))
            except Exception as e:  # noqa: BLE001 - the rest of the teardown goes on
                log.warning("%s: %s did not finish cleanly: %r", self.name, label, e)

        self.stack.push_async_callback(close)

    def closing(self, obj, close: Callable[[Any], Awaitable | None] | None = None,
                share: float | None = None):
        """Register ``obj`` to be closed (``close(obj)``, default ``obj.aclose()`` or
        ``obj.close()``) at shutdown; returns ``obj``."""
        fn = close or getattr(obj, "aclose", None) or obj.close
        if close is not None:
            self.on_close(fn, obj, share=share, what=f"closing {type(obj).__name__}")
        else:
            self.on_close(fn, share=share, what=f"closing {type(obj).__name__}")
        return obj

    def metrics(self, registry) -> int | None:
        """Serve ``registry`` over HTTP on ``METRICS_PORT`` / ``METRICS_ADDR``; the port."""
        from ..metrics import serve

        return serve(registry, self.settings.metrics_port, self.settings.metrics_addr)

    async def connect(self, client_name: str | None = None, **kw):
        """Connect to NATS (reconnecting forever); at shutdown, drain then close."""
        from .connection import connect

        nc = await connect(self.settings, client_name or self.name, **kw)
        self.nc, self.js = nc, nc.jetstream()

        async def close() -> None:
            try:
                await asyncio.wait_for(nc.drain(), self.left(2.0))
            except Exception as e:  # noqa: BLE001 - drain timed out: close hard
                log.debug("%s: NATS drain: %r", self.name, e)
                try:
                    await nc.close()
                except Exception as e2:  # noqa: BLE001 - already closed
                    log.debug("%s: NATS close: %r", self.name, e2)

        self.stack.push_async_callback(close)
        return nc

    async def service(self, *, name: str, version: str, description: str,
                      endpoints: Sequence[tuple[Any, Any]], metadata: dict | None = None,
                      queue_group: str | None = None, idle_share: float = 5.0,
                      fast=None, fast_endpoints: Sequence[str] = ()):
        """Register the NATS Services API service ``name`` with its ``(spec, endpoint)``
        pairs; at shutdown, stop taking requests, let the ones in flight answer (within
        ``idle_share``), then stop the service's control subjects. ``fast`` /
        ``fast_endpoints``: those endpoints subscribe on that connection
        (:func:`tipsml.messaging.endpoint.add_endpoints`)."""
        from .endpoint import add_endpoints
        from .service import start_service

        svc = await start_service(self.nc, name=name, version=version,
                                  description=description, metadata=metadata,
                                  queue_group=queue_group)
        self.service_obj = svc

        async def close() -> None:
            await svc.stop_endpoints()
            await svc.wait_idle(self.left(idle_share))
            await svc.stop()

        self.stack.push_async_callback(close)
        await add_endpoints(svc, endpoints, fast=fast, fast_endpoints=fast_endpoints)
        return svc

    def task(self, coro_fn: Callable[[asyncio.Event], Awaitable[Any]], *, name: str,
             share: float | None = None) -> asyncio.Task:
        """Run ``coro_fn(stop)`` beside the worker; at shutdown, wait for it (it sees the
        stop event) within ``left(share)``, then cancel it."""
        t = asyncio.create_task(coro_fn(self.stop), name=name)

        async def close() -> None:
            try:
                await asyncio.wait_for(asyncio.shield(t), self.left(share))
            except TimeoutError:
                t.cancel()
                log.warning("%s: %s cut short by the shutdown deadline", self.name, name)
            except Exception as e:  # noqa: BLE001 - the task failed: logged, teardown goes on
                log.warning("%s: %s ended with %r", self.name, name, e)

        self.stack.push_async_callback(close)
        return t

    def consume(self, consumer, *, share: float | None = None) -> asyncio.Task:
        """Run a :class:`tipsml.messaging.pull.PullConsumer` until stop; its messages in
        hand get what is left of the deadline (at most ``share``)."""
        return self.task(lambda stop: consumer.run(stop, lambda: self.left(share)),
                         name=f"consumer {consumer.spec.durable}", share=None)

    async def run(self, **announce_info) -> None:
        """Announce readiness, then serve until the stop event; the shutdown deadline
        starts when it fires (the ``async with`` block's exit unwinds the stack)."""
        if self.nc is not None:
            await self.nc.flush()
        announce(self.name, **announce_info)
        if self.ready is not None:
            self.ready.set()
        await self.stop.wait()
        self._start_deadline()
        log.info("%s stopping (deadline %.1fs)", self.name, self.timeout_s)

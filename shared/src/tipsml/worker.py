"""Worker plumbing shared by every service: logging, uvloop, signals, graceful stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys


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


def run_service(settings_cls, serve) -> None:
    """The entry point of every worker: settings from the environment, logging, uvloop,
    GC tuning, then ``serve(settings)`` until SIGINT/SIGTERM."""
    from pydantic import ValidationError

    try:
        settings = settings_cls()
    except ValidationError as e:  # a clear line, not a traceback (e.g. placeholder secrets)
        msgs = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        print(f"{settings_cls.__name__}: {msgs}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    setup_logging(settings.log_level)
    run_main(lambda: serve(settings))

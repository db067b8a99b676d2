"""``signals.>``: record a user's signal, merge the context it carries, refresh the
user's candidates (at most once per ``refresh_min_interval_s``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from tipsml.contract import Context, Signal
from tipsml.keys import ctx_key, lock_key, sig_key

from .cache import SIGNALS_KEPT
from .refresh import Refresher, RefreshResult, TransientError

log = logging.getLogger(__name__)


class SignalProcessor:
    def __init__(self, cfg, redis, refresher: Refresher):
        self.cfg = cfg
        self.r = redis
        self.refresher = refresher

    async def on_signal(self, sig: Signal, progress=None) -> tuple[str, RefreshResult | None]:
        """Record the signal, merge its context, refresh the user's candidates (throttled).

        Returns (outcome, result); outcome is ``refreshed`` | ``throttled``.
        Raises :class:`TransientError` (nak with delay) when Redis or the LLM is down.
        """
        uid = sig.user_id
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.lpush(sig_key(uid), json.dumps({"kind": sig.kind, "ts": sig.ts}))
            pipe.ltrim(sig_key(uid), 0, SIGNALS_KEPT - 1)
            pipe.expire(sig_key(uid), self.cfg.ctx_ttl_s)
            await pipe.execute()
            await self.merge_context(sig)
            if self.cfg.refresh_min_interval_s > 0:
                got = await self.r.set(lock_key(uid), "1", nx=True,
                                       px=int(self.cfg.refresh_min_interval_s * 1000))
                if not got:
                    return "throttled", None
        except Exception as e:  # noqa: BLE001
            raise TransientError(f"redis: {type(e).__name__}: {e}") from None
        try:
            return "refreshed", await self.refresher.refresh(uid, progress=progress)
        except TransientError:
            try:  # let the redelivery (or the next signal) try again at once
                await self.r.delete(lock_key(uid))
            except Exception as e:  # noqa: BLE001
                log.debug("could not release the refresh throttle: %r", e)
            raise

    async def merge_context(self, sig: Signal) -> None:
        p = sig.payload or {}
        upd: dict[str, Any] = {}
        src = p.get("context") if isinstance(p.get("context"), dict) else p
        for k in ("hour_of_day", "day_of_week", "tasks"):
            if k in src:
                upd[k] = src[k]
        prof = p.get("profile_features") if isinstance(p.get("profile_features"), dict) else None
        if not upd and prof is None:
            return
        raw = await self.r.get(ctx_key(sig.user_id))
        d = json.loads(raw) if raw else {}
        ctx = dict(d.get("context") or {})
        ctx.update(upd)
        try:
            ctx = Context.model_validate(ctx).model_dump(exclude_none=True)
        except ValueError:  # a malformed payload part is ignored, the signal still counts
            ctx = d.get("context")
        d.update(context=ctx, stored_at=time.time())
        if prof is not None:
            d["profile_features"] = prof
        await self.r.set(ctx_key(sig.user_id), json.dumps(d), ex=self.cfg.ctx_ttl_s)

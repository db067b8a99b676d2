"""The admin check of the bench verbs: with ``ADMIN_TOKEN`` set, ``bench.run`` and the
queries need header ``Tips-Admin-Token`` with it (on top of the NATS permissions)."""

from __future__ import annotations

from tipsml.contract import ContractError, ErrorCode

ADMIN_HEADER = "Tips-Admin-Token"


def authorised(token: str | None, msg) -> bool:
    return not token or (msg.headers or {}).get(ADMIN_HEADER) == token


def require_admin(token: str | None, msg, what: str) -> None:
    if not authorised(token, msg):
        raise ContractError(ErrorCode.forbidden, f"{what} is admin only")

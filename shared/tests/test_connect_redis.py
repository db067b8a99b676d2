"""tipsml.state.connect_redis: what every worker's Redis client is made of. Pure logic: no
server is needed to build a pool and a connection object."""

from __future__ import annotations

import pytest

from tipsml.state import connect_redis


def _conn_config(client):
    return client.connection_pool.make_connection().maint_notifications_config


def test_maintenance_notification_handshake_is_off_by_default(monkeypatch):
    """redis-py 8 asks every new connection for maintenance notifications (RESP3); Redis
    7.x OSS refuses: a round trip per connection and a reference cycle for nothing."""
    monkeypatch.delenv("REDIS_MAINT_NOTIFICATIONS", raising=False)
    cfg = _conn_config(connect_redis("redis://127.0.0.1:1"))
    assert cfg is None or not cfg.enabled


@pytest.mark.parametrize("mode,want", [("auto", "auto"), ("on", True)])
def test_maintenance_notifications_can_be_turned_on(monkeypatch, mode, want):
    monkeypatch.setenv("REDIS_MAINT_NOTIFICATIONS", mode)
    assert _conn_config(connect_redis("redis://127.0.0.1:1")).enabled == want

"""On `pytest --cluster`: the stack really is a JetStream cluster with R3 streams and a
Redis Cluster of 3 masters + 3 replicas (the cluster set's other tests run on it)."""

import pytest

from tipsdev.cluster import ClusterStack, redis_cmd

pytestmark = [pytest.mark.system, pytest.mark.cluster]


async def test_streams_are_r3_and_redis_has_three_masters_with_replicas(stack, nc, scorer_service,
                                                                     redis_client):
    if not isinstance(stack, ClusterStack):
        pytest.skip("runs on the cluster stack (pytest --cluster)")
    info = await nc.jetstream().stream_info("DECISIONS")
    assert info.config.num_replicas == 3
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    roles = stack.redis_roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["replica"] * 3
    assert type(redis_client).__name__ == "RedisCluster"
    assert "cluster_slots_assigned:16384" in redis_cmd(stack.redis_ports[0], "cluster", "info")

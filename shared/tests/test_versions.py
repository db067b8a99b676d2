"""The prompt-version bandit: its logged propensity is the probability of its choice, and
the rewards attributed to a version are counted once per decision (real redis-server)."""

import numpy as np
import pytest

from tipsml.state import (
    VERSION_SHARDS,
    StateStore,
    decision_key,
    generation_key,
    read_version_stats,
    version_stat_key,
)
from tipsml.versions import VersionBandit, parse_mode

VS = ("v1", "v2-mentor", "v3-few-shot")


def test_mode_parsing_keeps_the_rotation():
    assert parse_mode(["v1", "v2-mentor"]) == ("rotation", ["v1", "v2-mentor"])
    assert parse_mode(["bandit:v1", "v2-mentor"]) == ("bandit", ["v1", "v2-mentor"])
    assert parse_mode([]) == ("rotation", [])


@pytest.mark.parametrize("stats", [
    {},                                                            # nothing learned yet
    {("prioritize", "v1"): (40, 12.0), ("prioritize", "v2-mentor"): (35, 15.0),
     ("prioritize", "v3-few-shot"): (5, 2.5)},                     # uncertain
    {("prioritize", "v1"): (4000, 1200.0), ("prioritize", "v2-mentor"): (3900, 1500.0),
     ("prioritize", "v3-few-shot"): (50, 10.0)},                   # one clear winner
])
def test_logged_propensity_is_the_frequency_of_the_choice(stats):
    b = VersionBandit(VS, epsilon=0.1)
    rng = np.random.default_rng(11)
    n = 12000
    counts = np.zeros(len(VS))
    probs = b.probs(stats, "prioritize")
    for _ in range(n):
        c = b.choose(stats, "prioritize", rng)
        j = VS.index(c.version)
        assert c.propensity == pytest.approx(probs[j], abs=1e-12)
        counts[j] += 1
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    assert probs.min() >= 0.1 / len(VS) - 1e-12  # the floor: OPE weights stay bounded
    # the empirical frequencies match the logged probabilities (4.5 binomial sd)
    sd = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(counts / n - probs) <= 4.5 * sd + 1e-4), (counts / n, probs)


def test_per_arm_and_pooled_statistics():
    stats = {("prioritize", "v1"): (100, 90.0), ("focus_block", "v1"): (100, 5.0),
             ("*", "v1"): (200, 95.0)}
    per_arm = VersionBandit(VS, epsilon=0.0)
    assert per_arm.posterior(stats, "prioritize")[0][0] == pytest.approx(91 / 102)
    assert per_arm.posterior(stats, "focus_block")[0][0] == pytest.approx(6 / 102)
    pooled = VersionBandit(VS, epsilon=0.0, per_arm=False)
    assert pooled.posterior(stats, "prioritize")[0][0] == pytest.approx(96 / 202)


@pytest.mark.system
@pytest.mark.cluster
async def test_reward_is_attributed_to_its_prompt_version_once(redis_client, uid):
    st = StateStore(redis_client)
    await redis_client.delete(*[version_stat_key(s) for s in range(VERSION_SHARDS)])
    import time

    user = f"pv-{uid}"
    recs = []
    for i, (arm, pv) in enumerate([("prioritize", "v2-mentor"), ("prioritize", "v2-mentor"),
                                   ("focus_block", "v1"), ("prioritize", "")]):
        did = f"d{i}-{uid}"
        recs.append({"decision_id": did, "user_id": user, "arm": arm, "policy": "egreedy-v1",
                     "propensity": 0.5, "ts": time.time(), "learners": ["egreedy-v1"],
                     "vectors": {"egreedy-v1": ("", np.ones(7) * 0.1)},
                     "hyper": {"egreedy-v1": st.hyper["egreedy-v1"]}})
        if pv:  # what the generator writes with the tip
            await redis_client.hset(generation_key(did, user),
                                    mapping={"prompt_version": pv, "pv_mode": "bandit",
                                             "pv_p": "0.5"})
    await st.record_decisions(recs)
    for i, r in enumerate([1.0, 0.5, 0.0, 1.0]):
        res = await st.apply_reward(f"e{i}", recs[i]["decision_id"], user, r)
        assert res.outcome == "applied"
        assert (await st.apply_reward(f"e{i}", recs[i]["decision_id"], user, r)).outcome == \
            "duplicate"
    # a crash between the user's step and the version step: the redelivery repairs it
    import zlib

    from tipsml.state import version_marker_key

    did = recs[0]["decision_id"]
    s = zlib.crc32(did.encode()) % VERSION_SHARDS
    await redis_client.delete(version_marker_key(s, did))
    raw = await redis_client.hget(version_stat_key(s), "prioritize\x1fv2-mentor")
    n, sr = np.frombuffer(raw, dtype="<f8")
    await redis_client.hset(version_stat_key(s), "prioritize\x1fv2-mentor",
                            np.array([n - 1, sr - 1.0], dtype="<f8").tobytes())
    again = await st.apply_reward("e0", did, user, 1.0)
    assert again.outcome == "duplicate"
    stats = await read_version_stats(redis_client)
    assert stats[("prioritize", "v2-mentor")] == (2.0, 1.5)
    assert stats[("focus_block", "v1")] == (1.0, 0.0)
    assert stats[("*", "v2-mentor")] == (2.0, 1.5) and stats[("*", "v1")] == (1.0, 0.0)
    assert sum(n for (a, _), (n, _) in stats.items() if a != "*") == 3  # no version: not counted
    assert await redis_client.exists(decision_key(did, user))

"""The promotion gate (in-process mode, paired seeds)."""

import numpy as np

from tipsdev.gate import decide, gate, summary


def test_decide_rules():
    assert decide([0.0, 0.0, 0.0])["verdict"] == "hold"
    assert decide([0.02, 0.021, 0.019, 0.02], min_effect=0.005)["verdict"] == "promote"
    assert decide([-0.02, -0.021, -0.019], min_effect=0.005)["verdict"] == "reject"
    assert decide([0.004, 0.0045, 0.0035], min_effect=0.005)["verdict"] == "hold"
    assert decide([0.01])["verdict"] == "hold"  # one seed: no interval


def test_egreedy_v2_beats_v1_on_default_personas():
    res = gate("egreedy-v2", "egreedy-v1", users=80, rounds=200, seeds=range(5))
    assert res["verdict"] == "promote", summary(res)
    assert res["diff"]["lo"] > 0.005
    assert len(res["per_seed"]) == 5


def test_same_policy_is_never_promoted():
    res = gate("egreedy-v1", "egreedy-v1", users=80, rounds=200, seeds=range(5))
    assert res["verdict"] != "promote", summary(res)
    assert res["diff"]["lo"] <= 0.005
    # the two arms are not bit-identical: the gate measures real noise
    assert np.std([r["diff"] for r in res["per_seed"]]) > 0

"""Model cards: one per policy version, in the MLflow model registry of the local store.

A *policy version* is its policy id (:attr:`tipsml.bandits.Policy.version`): kind +
feature set version + hyper-parameters, e.g.
``egreedy-v2/egreedy/ctx7+prof5-v2/eps=0.1,lambda=1``. The gate (``python -m tipsdev.gate``)
and ``make run`` write one card per policy they evaluated:

* registered model ``tips-policy-<name>``; one model version per policy id (tag
  ``policy_id``): a new id (other features or hyper-parameters) is a new version, the same
  id updates its version's card;
* the card: the version's description (markdown) and tags, and ``card.json`` /
  ``card.md`` artifacts of a run in experiment ``tips-model-cards`` (the version's source);
* contents: inputs (feature schema and version), offline metrics (simulator regret at
  rounds 10/30/100/300 with 95% CIs, OPE estimates from ``bench/results/sim_ope.json``
  when it has the policy as a target), fairness (regret per persona, the worst named),
  rollout history (shadow since, live since — from ``DEFAULT_POLICY`` /
  ``SHADOW_POLICIES`` as seen when the card is written — and every gate verdict), and
  how the policy learns (``SHADOW_LEARN``: a shadow learns from the served arm's reward,
  a deliberate choice, see :data:`SHADOW_LEARNING_NOTE`).

Read them with ``make mlflow-ui`` (Models tab) or :func:`read_card`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

from tipsml.bandits import Policy
from tipsml.features import CONTEXT_FEATURES, PROFILE_SCHEMA, feature_names

EXPERIMENT = "tips-model-cards"
MAX_VERDICTS = 20

SHADOW_LEARNING_NOTE = (
    "Shadow policies learn from the reward of the arm the live policy served "
    "(scorer setting SHADOW_LEARN=true, the default): their arm models are ridge "
    "regressions, which need only (features, served arm, reward) triples, so a shadow "
    "arrives at its promotion already trained on the real traffic — at the price that it "
    "never explores on its own, so its model of arms the live policy rarely serves stays "
    "close to the prior. The source documents' shadows got no reward; this is a deliberate "
    "departure. SHADOW_LEARN=false restores it (shadows then only score and log, for "
    "off-policy evaluation).")


def registered_name(policy: str) -> str:
    return f"tips-policy-{policy.replace('@', '-at-').replace('+', '-')}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hyper_parameters(p: Policy) -> dict:
    hp = {"ridge_lambda": p.lam, "global_model": p.global_model}
    if p.pooled:  # per-user model shrunk toward a shared one: λ above is λ_p, the prior's
        hp.update(pooled=True, shared_ridge_lambda=p.shared_lam)
    if p.kind == "egreedy":
        hp["epsilon"] = p.epsilon
    elif p.kind == "linucb":
        hp["alpha"] = p.alpha
    else:
        hp["v"] = p.v
        hp["propensity"] = p.propensity
        if p.propensity == "mc":
            hp["samples"] = p.samples
    return hp


def inputs(p: Policy) -> dict:
    fs = p.features
    out = {"feature_set": fs.name, "feature_version": fs.version, "dim": fs.dim,
           "features": feature_names(fs), "update_id": p.update_id,
           "context": {n: {"dtype": f.dtype, "freshness": f.freshness, "source": f.source,
                           "fallback": f.fallback} for n, f in CONTEXT_FEATURES.items()}}
    if fs.uses_profile:
        out["profile_schema"] = {n: {"dtype": f.dtype, "ttl_s": f.ttl_s, "source": f.source,
                                     "fallback": f.fallback, "range": [f.lo, f.hi]}
                                 for n, f in PROFILE_SCHEMA.items()}
        out["dwell_encoding"] = ("log1p(dwell_s)/log1p(600), clipped at 10 min"
                                 if fs.profile_encoding == 2 else
                                 "dwell_ms/600000, clipped at 10 min (tiny: 0.007-0.033)")
    return out


def ope_from_results(p: Policy, path: str | Path = "bench/results/sim_ope.json") -> list[dict]:
    """OPE rows of the simulator validation with this policy version as the target (mean
    over seeds); rows of another version of the policy (or of unknown version) are not its."""
    path = Path(path)
    if not path.exists():
        return []
    rows = [r for r in json.loads(path.read_text()).get("rows", [])
            if r.get("target") == p.name and r.get("target_version") == p.version]
    out: dict = {}
    for r in rows:
        out.setdefault(r["logging"], []).append(r)
    res = []
    for lp, rs in out.items():
        d = {"logging": lp, "seeds": [r["seed"] for r in rs], "source": str(path),
             "valid_logging": rs[0].get("valid_logging", True),
             "online_reward": sum(r["online_reward"] for r in rs) / len(rs)}
        for k in ("ips", "snips", "dr"):
            d[k] = sum(r[k]["value"] for r in rs) / len(rs)
        res.append(d)
    return res


def fairness(persona_regret: dict | None) -> dict:
    if not persona_regret:
        return {"note": "no per-persona figures in this evaluation"}
    worst = max(persona_regret, key=lambda n: persona_regret[n]["regret_pct"]["mean"])
    return {"regret_per_persona": persona_regret, "worst_persona": worst,
            "worst_by": "regret as % of the oracle's reward (personas differ in how much "
                        "reward is available)",
            "worst_regret_pct": persona_regret[worst]["regret_pct"]["mean"]}


def build_card(p: Policy, offline: dict, *, settings=None, ope: list | None = None,
               verdict: dict | None = None) -> dict:
    """The card's content (everything but the rollout history, merged at write time)."""
    role = "none"
    if settings is not None:
        if p.name == settings.default_policy:
            role = "live"
        elif p.name in settings.shadow_policies:
            role = "shadow"
    shadow_learn = True
    if settings is not None:
        shadow_learn = bool(getattr(settings, "shadow_learn",
                                    os.environ.get("SHADOW_LEARN", "true").lower()
                                    not in ("0", "false", "no", "off")))
    return {
        "policy": p.name, "policy_id": p.version, "kind": p.kind,
        "hyper_parameters": hyper_parameters(p),
        "inputs": inputs(p),
        "offline_metrics": {"simulator": offline.get("sim", {}), "ope": ope or []},
        "fairness": fairness(offline.get("persona_regret")),
        "role_now": role,
        "learning": {"shadow_learn": shadow_learn, "shadow_learning_note": SHADOW_LEARNING_NOTE},
        "verdict": verdict,
        "written_at": _now(),
    }


def _rollout(prev: dict | None, card: dict) -> dict:
    r = dict(prev or {"shadow_since": None, "live_since": None, "gate_verdicts": []})
    now = card["written_at"]
    if card["role_now"] == "shadow" and not r.get("shadow_since"):
        r["shadow_since"] = now
    if card["role_now"] == "live" and not r.get("live_since"):
        r["live_since"] = now
    if card.get("verdict"):
        r["gate_verdicts"] = (list(r.get("gate_verdicts", [])) + [card["verdict"]])[-MAX_VERDICTS:]
    r["role_at_last_update"] = card["role_now"]
    return r


def _ci(d: dict | None, digits: int = 2) -> str:
    if not d:
        return "n/a"
    if d.get("lo") is None or d["lo"] != d["lo"]:
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def to_markdown(card: dict) -> str:
    sim = card["offline_metrics"]["simulator"]
    lines = [f"# Model card: {card['policy']}", "",
             (f"**Policy id** `{card['policy_id']}` (kind + features + hyper-parameters); "
             f"update id `{card['inputs']['update_id']}`."), "",
             "## Inputs", "",
             (f"Feature set `{card['inputs']['feature_set']}` version "
              f"`{card['inputs']['feature_version']}`, D={card['inputs']['dim']}: "
              + ", ".join(card["inputs"]["features"]) + ".")]
    if "dwell_encoding" in card["inputs"]:
        lines.append(f"Mean dwell encoding: {card['inputs']['dwell_encoding']}. Profile schema: "
                     + ", ".join(f"{n} ({v['dtype']}, TTL {v['ttl_s']} s, fallback {v['fallback']})"
                                 for n, v in card["inputs"]["profile_schema"].items()) + ".")
    lines += ["", "Hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in
                                                  card["hyper_parameters"].items()), "",
              "## Offline metrics", ""]
    if sim:
        lines.append(f"Simulator ({sim.get('config_text', '')}; feedback: {sim.get('feedback')}): "
                     "cumulative regret per user vs the oracle, 95% CI over seeds:")
        lines += ["", "| round | " + " | ".join(sim.get("regret_at", {})) + " |",
                  "|---|" + "---|" * len(sim.get("regret_at", {})),
                  "| regret | "
                  + " | ".join(_ci(v) for v in sim.get("regret_at", {}).values()) + " |",
                  "", f"Mean reward {_ci(sim.get('mean_reward'), 4)}."]
    for o in card["offline_metrics"]["ope"]:
        lines.append(f"- OPE from a {o['logging']} log ({o['source']}, seeds {o['seeds']}): "
                     f"IPS {o['ips']:.3f}, SNIPS {o['snips']:.3f}, DR {o['dr']:.3f} vs online "
                     f"{o['online_reward']:.3f}" + ("" if o["valid_logging"] else
                                                     " (invalid: deterministic logging)"))
    f = card["fairness"]
    lines += ["", "## Fairness", ""]
    if "regret_per_persona" in f:
        lines += ["| persona | regret / user | regret % of oracle |", "|---|---|---|"]
        for n, v in f["regret_per_persona"].items():
            lines.append(f"| {n}{' (worst)' if n == f['worst_persona'] else ''} | "
                         f"{_ci(v['regret'])} | {_ci(v['regret_pct'], 1)} |")
        lines += ["", f"Worst persona: **{f['worst_persona']}** ({f['worst_by']})."]
    else:
        lines.append(f["note"])
    r = card["rollout"]
    lines += ["", "## Rollout history", "",
              (f"Shadow since: {r.get('shadow_since') or 'never'}; live since: "
               f"{r.get('live_since') or 'never'}; role when this card was written: "
               f"{r.get('role_at_last_update')}."), ""]
    for v in r.get("gate_verdicts", []):
        lines.append(f"- {v['at']}: {v['summary']}")
    lines += ["", "## How it learns", "", SHADOW_LEARNING_NOTE,
              f"(SHADOW_LEARN is {'on' if card['learning']['shadow_learn'] else 'off'} here.)"]
    return "\n".join(lines)


def write_card(card: dict, tracking_uri: str | None = None) -> dict:
    """Create or update the registry entry of this policy version; never raises (returns
    {error} instead: a card must not sink a gate)."""
    from tipsdev.sim.tracking import tracking_uri as _uri

    uri = tracking_uri or _uri()
    try:
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow import MlflowClient

        from tipsdev.sim.tracking import _experiment_id

        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        name = registered_name(card["policy"])
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - not registered yet
            client.create_registered_model(
                name, tags={"policy": card["policy"], "kind": card["kind"]},
                description=f"Bandit policy {card['policy']}: one version per policy id.")
        mine = [mv for mv in client.search_model_versions(f"name='{name}'")
                if mv.tags.get("policy_id") == card["policy_id"]]
        prev = None
        if mine:
            mv = max(mine, key=lambda m: int(m.version))
            try:
                prev = json.loads(mv.tags.get("rollout", "null"))
            except ValueError:
                prev = None
        card["rollout"] = _rollout(prev, card)
        md = to_markdown(card)
        eid = _experiment_id(EXPERIMENT, uri)
        run = client.create_run(eid, run_name=f"card {card['policy_id']}",
                                tags={"policy": card["policy"], "policy_id": card["policy_id"]})
        rid = run.info.run_id
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "card.json").write_text(json.dumps(card, indent=1, default=float))
            (Path(d) / "card.md").write_text(md)
            client.log_artifacts(rid, d, "card")
        for t, v in (card["offline_metrics"]["simulator"].get("regret_at") or {}).items():
            client.log_metric(rid, f"regret_at_{t}", float(v["mean"]))
        client.set_terminated(rid, "FINISHED")
        source = f"{run.info.artifact_uri}/card"
        tags = {"policy_id": card["policy_id"], "feature_version":
                card["inputs"]["feature_version"], "update_id": card["inputs"]["update_id"],
                "worst_persona": card["fairness"].get("worst_persona", ""),
                "rollout": json.dumps(card["rollout"]), "card_run_id": rid,
                "shadow_learn": str(card["learning"]["shadow_learn"]).lower()}
        if mine:
            version = mv.version
            client.update_model_version(name, version, description=md)
        else:
            mv = client.create_model_version(name, source, run_id=rid, description=md)
            version = mv.version
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        return {"uri": uri, "name": name, "version": str(version), "run_id": rid,
                "artifact": f"{source}/card.md", "created": not mine}
    except Exception as e:  # noqa: BLE001
        return {"uri": uri, "error": f"{type(e).__name__}: {e}"[:300]}


def read_card(policy: str, tracking_uri: str | None = None) -> dict | None:
    """The newest card of a policy (the card.json of its latest model version)."""
    from mlflow import MlflowClient

    from tipsdev.sim.tracking import tracking_uri as _uri

    uri = tracking_uri or _uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    vs = client.search_model_versions(f"name='{registered_name(policy)}'")
    if not vs:
        return None
    mv = max(vs, key=lambda m: int(m.version))
    with tempfile.TemporaryDirectory() as d:
        local = client.download_artifacts(mv.tags["card_run_id"], "card/card.json", d)
        card = json.loads(Path(local).read_text())
    card["registry"] = {"name": mv.name, "version": mv.version}
    return card

"""Off-policy evaluation from the DECISIONS log joined with the rewards.

Data: for each served decision ``i`` the logged arm ``a_i``, the logging propensity
``p_i`` (the scorer's ``propensity``: probability with which the live policy chose
that arm), the reward ``r_i`` (first feedback event of the decision, through
:data:`tipsml.rewards.REWARD_TABLE`; no feedback → ``--missing`` policy) and the target
policy's action probabilities ``π(·|x_i)``.

Estimators (each with a normal 95% CI; the variance is cluster-robust over users,
because one user's decisions are not independent):

* **IPS**   ``V = 1/n Σ w_i r_i``, ``w_i = π(a_i|x_i) / p_i`` — unbiased, high variance;
* **SNIPS** ``V = Σ w_i r_i / Σ w_i`` — self-normalised: slightly biased, much tighter;
* **DR**    ``V = 1/n Σ [Σ_a π(a|x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i))]`` with
  ``q̂`` a ridge regression per arm, cross-fitted over two halves of the users.

Validity: IPS/DR need every arm the target may choose to have ``p > 0`` under the
logging policy. ε-greedy (p ≥ ε/K) and Thompson sampling (propensity estimated by
Monte Carlo, floored at 1/(M+1)) are valid logging policies. **LinUCB is not**: it is
deterministic (propensity 1 for its arm, 0 for every other), so the log says nothing
about the arms it did not pick — estimates from a LinUCB log are biased and are flagged.

Target probabilities from the log come from the target's own DECISIONS entries — it
must be the live policy or one of ``SHADOW_POLICIES`` when the traffic was logged:
ε-greedy from its logged scores (greedy set) and ε, LinUCB from its UCB scores (argmax).
Thompson targets cannot be reconstructed from scores alone (their posterior widths are
not logged); evaluate them in the simulator (``python -m tipsdev.ope validate``).

CLI::

    python -m tipsdev.ope estimate --target egreedy-v2 [--logging egreedy-v1]   # from NATS_URL
    python -m tipsdev.ope validate                                               # simulator table
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Z95 = 1.959963984540054


@dataclass
class Logged:
    arms: list[str]
    a: np.ndarray          # (n,) logged arm index
    p: np.ndarray          # (n,) logging propensity of the logged arm
    r: np.ndarray          # (n,) reward
    pi: np.ndarray         # (n, K) target action probabilities
    x: np.ndarray | None = None       # (n, d) features for the reward model (DR)
    groups: np.ndarray | None = None  # (n,) user index (clusters for the CI)
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    def weights(self) -> np.ndarray:
        return self.pi[np.arange(self.n), self.a] / self.p


def _se(terms: np.ndarray, groups: np.ndarray | None) -> float:
    """Standard error of mean(terms): cluster-robust when groups are given."""
    n = terms.shape[0]
    c = terms - terms.mean()
    if groups is None:
        return float(c.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    _, inv = np.unique(groups, return_inverse=True)
    sums = np.bincount(inv, weights=c)
    g = sums.shape[0]
    if g < 2:
        return float("nan")
    return float(math.sqrt((sums ** 2).sum() * g / (g - 1)) / n)


def _est(name: str, v: float, se: float, d: Logged, **extra) -> dict:
    return {"estimator": name, "value": float(v), "se": se, "lo": float(v - Z95 * se),
            "hi": float(v + Z95 * se), "n": d.n, **extra}


def ips(d: Logged) -> dict:
    w = d.weights()
    t = w * d.r
    return _est("IPS", t.mean(), _se(t, d.groups), d, ess=float(w.sum() ** 2 / (w ** 2).sum()),
                max_weight=float(w.max()))


def snips(d: Logged) -> dict:
    w = d.weights()
    mw = w.mean()
    v = float((w * d.r).sum() / w.sum()) if w.sum() > 0 else float("nan")
    t = w * (d.r - v) / mw  # linearisation (delta method)
    return _est("SNIPS", v, _se(t, d.groups), d, mean_weight=float(mw))


def _ridge_fit(x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> np.ndarray:
    dim = x.shape[1]
    return np.linalg.solve(x.T @ x + lam * np.eye(dim), x.T @ y)


def reward_model(d: Logged, lam: float = 1.0) -> np.ndarray:
    """q̂(x_i, a) for every i and a: ridge per arm, cross-fitted over two user halves."""
    k = len(d.arms)
    x = d.x if d.x is not None else np.ones((d.n, 1))
    if d.groups is not None:
        ug = np.unique(d.groups)
        half = set(ug[np.random.default_rng(0).permutation(len(ug))[: len(ug) // 2]].tolist())
        fold = np.array([g in half for g in d.groups.tolist()])
    else:
        fold = (np.arange(d.n) % 2) == 0
    q = np.zeros((d.n, k))
    for f in (True, False):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        if not train.any():
            train = test
        for a in range(k):
            m = train & (d.a == a)
            if m.sum() == 0:
                q[test, a] = d.r[train].mean() if train.any() else 0.0
                continue
            theta = _ridge_fit(x[m], d.r[m], lam)
            q[test, a] = x[test] @ theta
    return np.clip(q, 0.0, 1.0)


def dr(d: Logged, q: np.ndarray | None = None) -> dict:
    q = reward_model(d) if q is None else q
    w = d.weights()
    idx = np.arange(d.n)
    t = (d.pi * q).sum(axis=1) + w * (d.r - q[idx, d.a])
    dm = float((d.pi * q).sum(axis=1).mean())
    return _est("DR", t.mean(), _se(t, d.groups), d, direct_method=dm)


def evaluate(d: Logged) -> dict:
    out = {"n": d.n, "ips": ips(d), "snips": snips(d), "dr": dr(d),
           "logged_mean_reward": float(d.r.mean()),
           "min_propensity": float(d.p.min()) if d.n else float("nan")}
    out["support_ok"] = bool(d.info.get("support_ok", True))
    return out


# ---------------------------------------------------------------- from the DECISIONS log

_EPS = re.compile(r"eps=([0-9.eE+-]+)")


def target_probs_from_entry(e: dict, arms: list[str]) -> np.ndarray:
    """π(·|x) of a policy from its own DECISIONS entry (egreedy and linucb): its greedy
    set is the scorer's, arms within :data:`tipsml.bandits.TIE_TOL` of the best score."""
    from tipsml.bandits import TIE_TOL

    ver = e.get("policy_version", "")
    kind = ver.split("/")[1] if ver.count("/") >= 2 else ""
    s = np.array([float(e["scores"].get(a, float("-inf"))) for a in arms])
    top = np.flatnonzero(s >= s.max() - TIE_TOL)
    k = len(arms)
    if kind == "egreedy":
        m = _EPS.search(ver)
        eps = float(m.group(1)) if m else 0.1
        p = np.full(k, eps / k)
        p[top] += (1 - eps) / len(top)
        return p
    if kind == "linucb":
        p = np.zeros(k)
        p[top] = 1.0 / len(top)
        return p
    raise ValueError(f"cannot rebuild the action distribution of {e.get('policy')!r} ({ver!r}) "
                     "from the log; evaluate it in the simulator")


async def _read_stream(js, stream: str, subject: str, batch: int = 1000) -> list[dict]:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    info = await js.stream_info(stream)
    last = info.state.last_seq
    if not info.state.messages:
        return []
    cfg = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                         inactive_threshold=60.0, filter_subject=subject)
    sub = await js.pull_subscribe(subject, stream=stream, config=cfg)
    out: list[dict] = []
    try:
        seq = 0
        while seq < last:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except Exception:  # noqa: BLE001 - nothing more within the timeout
                break
            for m in msgs:
                seq = max(seq, m.metadata.sequence.stream)
                try:
                    out.append(json.loads(m.data))
                except ValueError:
                    continue
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001
            pass
    return out


async def load_from_nats(js, target: str, logging_policy: str | None = None,
                         missing: str = "default", user_prefix: str | None = None,
                         window_s: float | None = None,
                         default_reward: float | None = 0.0) -> Logged:
    """Served decisions (optionally of one live policy) joined with their first reward.

    A decision without a feedback event (``missing``): ``default`` (the default) — if its
    reward window (``window_s``, default ``REWARD_WINDOW_S``) has closed, the reward the
    service applied then (``default_reward``, ``DEFAULT_REWARD``: 0.0; ``None`` = the
    service applies none, so it is dropped), otherwise dropped (still open); ``drop`` —
    dropped, which with a real app (ignored tips send nothing) keeps only reacted-to tips
    and biases every estimate upward; ``zero`` — reward 0."""
    import time as _time

    if window_s is None:
        from tipsml.settings import BaseServiceSettings

        window_s = float(BaseServiceSettings().reward_window_s)
    now = _time.time()
    from scorer.decisionlog import expand_entry
    from tipsml.rewards import reward_of

    dec = [x for m in await _read_stream(js, "DECISIONS", "decisions.>") for x in expand_entry(m)]
    fb = await _read_stream(js, "FEEDBACK", "feedback.>")
    reward: dict[str, float] = {}
    for f in fb:
        did = f.get("decision_id")
        if did in reward:
            continue
        try:
            reward[did] = reward_of(f.get("reaction"), f.get("reward"))
        except (KeyError, ValueError):
            continue
    served, tgt = {}, {}
    for e in dec:
        if user_prefix and not str(e.get("user_id", "")).startswith(user_prefix):
            continue
        if e.get("served"):
            if e.get("fallback") or (logging_policy and e.get("policy") != logging_policy):
                continue
            served[e["decision_id"]] = e
        if e.get("policy") == target:
            tgt[e["decision_id"]] = e
    rows = []
    skipped = {"no_target_entry": 0, "no_reward": 0, "window_open": 0}
    defaults = 0
    for did, e in served.items():
        t = tgt.get(did)
        if t is None:
            skipped["no_target_entry"] += 1
            continue
        if did not in reward:
            if missing == "drop" or (missing == "default" and default_reward is None):
                skipped["no_reward"] += 1
                continue
            if missing == "default":
                if float(e.get("ts", now)) + window_s > now:
                    skipped["window_open"] += 1
                    continue
                r = float(default_reward)
                defaults += 1
            else:
                r = 0.0
        else:
            r = reward[did]
        rows.append((e, t, r))
    if not rows:
        raise ValueError(f"no served decisions with a {target!r} entry and a reward in the log "
                         f"(skipped: {skipped}); is {target} the live policy or a shadow?")
    arms = list(rows[0][0]["arms"])
    a_idx = {a: i for i, a in enumerate(arms)}
    rows = [r for r in rows if list(r[0]["arms"]) == arms]
    a = np.array([a_idx[e["arm"]] for e, _, _ in rows])
    p = np.array([float(e["propensity"]) for e, _, _ in rows])
    r = np.array([x for _, _, x in rows])
    pi = np.stack([target_probs_from_entry(t, arms) for _, t, _ in rows])
    x = np.array([t.get("features") or e.get("features") for e, t, _ in rows], dtype=float)
    users = [e["user_id"] for e, _, _ in rows]
    _, groups = np.unique(users, return_inverse=True)
    lp = {e["policy"] for e, _, _ in rows}
    det = any(pol.startswith("linucb") for pol in lp)
    return Logged(arms, a, p, r, pi, x, groups,
                  {"logging_policies": sorted(lp), "target": target, "skipped": skipped,
                   "default_rewards": defaults, "missing": missing,
                   "support_ok": not det,
                   "warning": "LinUCB logging is deterministic: no support, estimates biased"
                   if det else None})


# ---------------------------------------------------------------- validation in the simulator

def validate_pair(logging_policy: str, target: str, *, users: int = 200, warmup: int = 100,
                  rounds: int = 100, seed: int = 0, overrides: dict | None = None) -> dict:
    """Train ``target`` for ``warmup`` rounds and freeze it; log ``rounds`` more rounds under
    ``logging_policy`` (learning online from scratch); estimate the frozen target offline;
    then run it online on the same rounds (same users and contexts, its own randomness)."""
    from dataclasses import replace

    from tipsdev.sim.inproc import StateBook, policy_rng, run_policy
    from tipsdev.sim.runner import policies_from_env
    from tipsdev.sim.world import make_episode

    reg = policies_from_env([logging_policy, target])
    L, T = reg[logging_policy], reg[target]
    if overrides:  # e.g. {"propensity": "mc"} for the Thompson before/after comparison
        L = replace(L, **{k: v for k, v in overrides.items() if hasattr(L, k)})
        T = replace(T, **{k: v for k, v in overrides.items() if hasattr(T, k)})
    ep = make_episode(seed, users, warmup + rounds)
    warm, test = ep.slice(0, warmup), ep.slice(warmup, warmup + rounds)
    trained = run_policy(warm, T, policy_rng(seed, 101)).state
    logged = run_policy(test, L, policy_rng(seed, 102))
    online = run_policy(test, T, policy_rng(seed, 103), learn=False, init_state=trained)
    # offline: the frozen target's action distribution at every logged context
    book = StateBook(T, test.arms, trained)
    X = test.features(T.features)
    U, R, K = test.n_users, test.rounds, len(test.arms)
    pi = np.zeros((U, R, K))
    prng = np.random.default_rng([seed, 104])
    for u in range(U):
        blobs = book.blobs(test.user_ids[u])
        for t in range(R):
            pi[u, t] = T.selection_probs(list(test.arms), blobs, X[u, t], prng, book.prior())
    true_value = float((pi * test.expected).sum(axis=2).mean())
    d = Logged(list(test.arms), logged.arm.ravel(), logged.propensity.ravel(),
               logged.reward.ravel(), pi.reshape(-1, K), test.x12.reshape(U * R, -1),
               np.repeat(np.arange(U), R),
               {"support_ok": L.kind != "linucb"})
    est = evaluate(d)
    online_v = online.mean_reward
    row = {"logging": logging_policy, "target": target, "seed": seed, "users": users,
           "logging_version": L.version, "target_version": T.version,
           "warmup": warmup, "rounds": rounds, "n": d.n,
           "logged_reward": float(logged.reward.mean()), "online_reward": online_v,
           "online_expected": float(online.expected.mean()), "true_value": true_value,
           "valid_logging": L.kind != "linucb"}
    for k in ("ips", "snips", "dr"):
        e = est[k]
        row[k] = {"value": e["value"], "lo": e["lo"], "hi": e["hi"],
                  "rel_err_pct": 100 * (e["value"] - online_v) / online_v,
                  "within_10pct": abs(e["value"] - online_v) <= 0.1 * online_v}
    return row


DEFAULT_PAIRS = (("egreedy-v1", "egreedy-v2"), ("egreedy-v1", "linucb"),
                 ("egreedy-v1", "thompson"), ("thompson", "egreedy-v2"),
                 ("egreedy-v2", "egreedy-v1"), ("linucb", "egreedy-v2"))


def validation_table(rows: list[dict]) -> str:
    lines = ["| logging → target | seed | n | logged reward | online reward (target run live) "
             "| IPS [95% CI] | SNIPS [95% CI] | DR [95% CI] | within ±10% (IPS/SNIPS/DR) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def cell(k, r=r):
            return (f"{r[k]['value']:.3f} [{r[k]['lo']:.3f}, {r[k]['hi']:.3f}] "
                    f"({r[k]['rel_err_pct']:+.1f}%)")
        ok = "/".join("yes" if r[k]["within_10pct"] else "no" for k in ("ips", "snips", "dr"))
        note = "" if r["valid_logging"] else " ⚠ deterministic logging (invalid)"
        lines.append(f"| {r['logging']} → {r['target']}{note} | {r['seed']} | {r['n']} "
                     f"| {r['logged_reward']:.3f} | "
                     f"{r['online_reward']:.3f} | {cell('ips')} | {cell('snips')} | {cell('dr')} "
                     f"| {ok} |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """Per pair over seeds: mean online value, mean estimate, worst error, seeds within ±10%."""
    pairs: dict = {}
    for r in rows:
        pairs.setdefault((r["logging"], r["target"]), []).append(r)
    lines = ["| logging → target | seeds | online reward | IPS | SNIPS | DR "
             "| within ±10% (IPS / SNIPS / DR) |",
             "|---|---|---|---|---|---|---|"]
    for (lp, tp), rs in pairs.items():
        on = np.mean([r["online_reward"] for r in rs])

        def cell(k, rs=rs, on=on):
            v = np.mean([r[k]["value"] for r in rs])
            worst = max((r[k]["rel_err_pct"] for r in rs), key=abs)
            return f"{v:.3f} (mean err {100 * (v - on) / on:+.1f}%, worst {worst:+.1f}%)"
        ok = " / ".join(f"{sum(r[k]['within_10pct'] for r in rs)}/{len(rs)}"
                        for k in ("ips", "snips", "dr"))
        note = "" if rs[0]["valid_logging"] else " ⚠ invalid: deterministic logging"
        lines.append(f"| {lp} → {tp}{note} | {len(rs)} | {on:.3f} | {cell('ips')} "
                     f"| {cell('snips')} | {cell('dr')} | {ok} |")
    return "\n".join(lines)


def _job(args):
    lp, tp, kw = args
    return validate_pair(lp, tp, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tipsdev.ope", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("estimate", help="estimate a policy from the DECISIONS log (NATS_URL)")
    e.add_argument("--target", required=True)
    e.add_argument("--logging", default=None, help="only decisions served by this policy")
    e.add_argument("--missing", choices=["default", "drop", "zero"], default="default",
                   help="decisions without feedback: the service's default reward once their "
                        "window closed (default; still open: dropped), drop them, or reward 0")
    e.add_argument("--user-prefix", default=None)
    v = sub.add_parser("validate", help="OPE vs online in the simulator, several pairs")
    v.add_argument("--users", type=int, default=200)
    v.add_argument("--warmup", type=int, default=100)
    v.add_argument("--rounds", type=int, default=100)
    v.add_argument("--seeds", default="0", help="comma list of seeds")
    v.add_argument("--pairs", default=",".join(f"{a}:{b}" for a, b in DEFAULT_PAIRS))
    v.add_argument("--out", default="bench/results/sim_ope")
    v.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "estimate":
        return asyncio.run(_estimate_cli(args))
    from concurrent.futures import ProcessPoolExecutor

    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    kw = dict(users=args.users, warmup=args.warmup, rounds=args.rounds)
    with ProcessPoolExecutor() as ex:
        rows = list(ex.map(_job, [(a, b, dict(kw, seed=s)) for s in seeds for a, b in pairs]))
    table = validation_table(rows)
    print(table)
    if len(seeds) > 1:
        print()
        print(summary_table(rows))
    kw["seeds"] = seeds
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"config": kw, "rows": rows}, indent=1))
    _plot(rows, f"{out}.png")
    print(f"wrote {out}.json and {out}.png")
    if not args.no_mlflow:
        from tipsdev.sim.tracking import log_run

        info = log_run("tips-ope", f"ope-validate-{len(seeds)}seeds", params=kw,
                       metrics={f"{r['logging']}__{r['target']}__s{r['seed']}": {
                           k: r[k]["rel_err_pct"] for k in ("ips", "snips", "dr")} for r in rows},
                       artifacts=[f"{out}.json", f"{out}.png"])
        print(f"MLflow: {info.get('run_id') or info.get('error')}")
    valid = [r for r in rows if r["valid_logging"]]
    return 0 if all(r["dr"]["within_10pct"] and r["snips"]["within_10pct"] for r in valid) else 1


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(rows)), 4.4), dpi=120)
    labels = [f"{r['logging']}\n→ {r['target']} (s{r['seed']})" for r in rows]
    xs = np.arange(len(rows))
    ax.scatter(xs, [r["online_reward"] for r in rows], marker="*", s=140, c="k", label="online",
               zorder=3)
    for j, (k, c) in enumerate((("ips", "C0"), ("snips", "C1"), ("dr", "C2"))):
        v = np.array([r[k]["value"] for r in rows])
        lo = np.array([r[k]["lo"] for r in rows])
        hi = np.array([r[k]["hi"] for r in rows])
        ax.errorbar(xs + (j - 1) * 0.18, v, yerr=[v - lo, hi - v], fmt="o", c=c, label=k.upper(),
                    capsize=3)
    for i, r in enumerate(rows):
        ax.fill_between([i - 0.4, i + 0.4], 0.9 * r["online_reward"], 1.1 * r["online_reward"],
                        color="grey", alpha=0.15, lw=0)
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_ylabel("mean reward")
    ax.set_title("OPE estimate (95% CI) vs online value; grey band = ±10%", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _default_reward_env() -> float | None:
    """``DEFAULT_REWARD`` as the feedback consumer reads it (0.0; ``off``/``none``: none)."""
    import os

    v = os.environ.get("DEFAULT_REWARD", "0.0").strip().lower()
    return None if v in ("off", "none", "") else float(v)


async def _estimate_cli(args) -> int:
    import nats

    from tipsml.settings import BaseServiceSettings

    s = BaseServiceSettings()
    nc = await nats.connect(**s.nats_connect_kwargs())
    try:
        d = await load_from_nats(nc.jetstream(), args.target, args.logging, args.missing,
                                 args.user_prefix, default_reward=_default_reward_env())
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        await nc.close()
    res = evaluate(d)
    print(f"target {args.target}; logged by {', '.join(d.info['logging_policies'])}; n = {d.n}; "
          f"logged mean reward {res['logged_mean_reward']:.4f}")
    if d.info.get("warning"):
        print(f"WARNING: {d.info['warning']}")
    for k in ("ips", "snips", "dr"):
        e = res[k]
        print(f"  {e['estimator']:5s} {e['value']:.4f}  95% CI [{e['lo']:.4f}, {e['hi']:.4f}]")
    print(json.dumps({k: res[k] for k in ("ips", "snips", "dr")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

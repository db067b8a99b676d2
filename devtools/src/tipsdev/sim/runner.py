"""Sweeps: policies × seeds in either mode, summarised with CIs over seeds."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from tipsdev.sim.inproc import FeedbackModel, Trace, policy_rng, run_policy
from tipsdev.sim.stats import curve_ci, mean_ci
from tipsdev.sim.world import DEFAULT_PERSONAS, WorldConfig, make_episode
from tipsml.bandits import Policy, build_policies
from tipsml.features import FS_CTX_PROFILE
from tipsml.settings import BaseServiceSettings

DEFAULT_POLICIES = ("egreedy-v1", "egreedy-v2", "linucb", "thompson", "egreedy-pooled",
                    "linucb-pooled", "thompson-pooled")


@dataclass
class SimConfig:
    policies: tuple[str, ...] = DEFAULT_POLICIES
    users: int = 200
    rounds: int = 300
    seeds: tuple[int, ...] = tuple(range(10))
    personas: tuple[str, ...] = DEFAULT_PERSONAS
    tips_per_day: int = 3
    mode: str = "inproc"
    workers: int = 0  # processes for in-process mode (0: one per CPU, at most the jobs)
    # how reactions reach the learner (in-process; NATS mode: the client part only, the
    # default reward is the feedback consumer's DEFAULT_REWARD / REWARD_WINDOW_S)
    client: str = "realistic"
    default_reward: float | None = 0.0
    window: int = 1
    world_name: str = "personas"  # personas (tuning world) | heldout (sim/world2.py)
    extra: dict = field(default_factory=dict)

    def feedback(self) -> FeedbackModel:
        return FeedbackModel(self.client, self.default_reward, self.window)

    def world(self) -> WorldConfig:
        return WorldConfig(personas=tuple(self.personas), tips_per_day=self.tips_per_day)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["policies"], d["seeds"], d["personas"] = (list(self.policies), list(self.seeds),
                                                    list(self.personas))
        return d


def sim_only_policies(reg: dict[str, Policy]) -> dict[str, Policy]:
    """Variants that exist only in the simulator, for comparisons (never served)."""
    return {"egreedy-v2@ctx7+prof5-v1": replace(reg["egreedy-v2"], name="egreedy-v2@ctx7+prof5-v1",
                                                  features=FS_CTX_PROFILE)}


_PARAMS = {"epsilon": float, "alpha": float, "v": float, "lam": float, "shared_lam": float}


def variant(reg: dict[str, Policy], name: str) -> Policy | None:
    """``base[key=value,...]`` → the registered ``base`` with those hyper-parameters
    (epsilon, alpha, v, lam, shared_lam), named ``name`` — for sweeps:
    ``thompson[v=0.1]``, ``egreedy-pooled[lam=25,epsilon=0.05]``."""
    if not name.endswith("]") or "[" not in name:
        return None
    base, _, rest = name[:-1].partition("[")
    if base not in reg:
        return None
    kw = {}
    for part in rest.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in _PARAMS:
            raise SystemExit(f"unknown hyper-parameter {k!r} in {name!r}; known: {sorted(_PARAMS)}")
        kw[k] = _PARAMS[k](v)
    return replace(reg[base], name=name, **kw)


def policies_from_env(names) -> dict[str, Policy]:
    """The scorer's policy registry with the same settings (EPSILON, LINUCB_ALPHA, ... env),
    plus the simulator-only variants of :func:`sim_only_policies` and the
    ``base[key=value]`` variants of :func:`variant` named in ``names``."""
    reg = build_policies(BaseServiceSettings())
    reg.update(sim_only_policies(reg))
    for n in names:
        v = variant(reg, n)
        if v is not None:
            reg[n] = v
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; known: {', '.join(sorted(reg))}")
    return reg


WORLDS = ("personas", "heldout")


def make_world_episode(name: str, seed: int, users: int, rounds: int, world: WorldConfig):
    if name == "heldout":
        from tipsdev.sim.world2 import make_heldout_episode

        return make_heldout_episode(seed, users, rounds, world)
    if name != "personas":
        raise SystemExit(f"unknown world {name!r}; known: {', '.join(WORLDS)}")
    return make_episode(seed, users, rounds, world)


@functools.lru_cache(maxsize=2)
def _episode(seed: int, users: int, rounds: int, world: WorldConfig, name: str = "personas"):
    return make_world_episode(name, seed, users, rounds, world)


def summarise_trace(tr: Trace, personas: list[str] | None = None) -> dict:
    out = {"policy": tr.policy, "seed": tr.seed, "mean_reward": tr.mean_reward,
           "mean_expected": tr.mean_expected,
           "oracle": float(tr.oracle.mean()),
           "regret_curve": tr.regret_curve(),
           "oracle_curve": np.cumsum(tr.oracle.mean(axis=0)),
           "reward_by_round": tr.reward.mean(axis=0),
           "user_mean_reward": tr.reward.mean(axis=1)}
    if personas is not None:  # fairness: final regret per user, averaged per persona
        user_regret = (tr.oracle - tr.expected).sum(axis=1)
        user_oracle = tr.oracle.sum(axis=1)
        out["persona_regret"] = {}
        out["persona_regret_pct"] = {}
        for name in sorted(set(personas)):
            m = np.array([p == name for p in personas])
            out["persona_regret"][name] = float(user_regret[m].mean())
            out["persona_regret_pct"][name] = float(100 * user_regret[m].sum()
                                                    / user_oracle[m].sum())
    if tr.meta.get("updates"):
        out["updates"] = tr.meta["updates"]
    return out


def _job(label: str, policy: str, stream: int, seed: int, users: int, rounds: int,
         world: WorldConfig, feedback: FeedbackModel | None = None,
         world_name: str = "personas") -> dict:
    reg = policies_from_env([policy])
    ep = _episode(seed, users, rounds, world, world_name)
    tr = run_policy(ep, reg[policy], policy_rng(seed, stream), feedback=feedback or FeedbackModel())
    out = summarise_trace(tr, ep.personas)
    out["policy"] = label
    out["uniform"] = float(ep.expected.mean())
    return out


def run_inproc(cfg: SimConfig, progress=None, cohorts: list[tuple] | None = None) -> list[dict]:
    """Every (cohort, seed) in processes. A cohort is (label, policy, RNG stream) or
    (label, policy, RNG stream, FeedbackModel); by default one per policy, with the
    config's feedback model. The world of a seed is the same for every cohort."""
    cohorts = cohorts or [(p, p, i) for i, p in enumerate(cfg.policies)]
    policies_from_env([c[1] for c in cohorts])
    fb = cfg.feedback()
    jobs = [(c[0], c[1], c[2], c[3] if len(c) > 3 else fb, s) for s in cfg.seeds for c in cohorts]
    world = cfg.world()
    n = cfg.workers or min(os.cpu_count() or 1, len(jobs))
    out = []
    if n <= 1:
        for lab, pol, st, f, s in jobs:
            out.append(_job(lab, pol, st, s, cfg.users, cfg.rounds, world, f, cfg.world_name))
            if progress:
                progress(1)
        return out
    with ProcessPoolExecutor(max_workers=n) as ex:
        futs = [ex.submit(_job, lab, pol, st, s, cfg.users, cfg.rounds, world, f, cfg.world_name)
                for lab, pol, st, f, s in jobs]
        for f in as_completed(futs):
            out.append(f.result())
            if progress:
                progress(1)
    return out


async def run_nats_sweep(cfg: SimConfig, nc, progress=None, settle: bool = True,
                         stats=None, cohorts: list[tuple[str, str]] | None = None) -> list[dict]:
    """Every seed through the real workers; all cohorts of a seed run side by side."""
    from tipsdev.sim.natsmode import run_nats

    out = []
    cohorts = cohorts or [(p, p) for p in cfg.policies]
    for s in cfg.seeds:
        ep = make_world_episode(cfg.world_name, s, cfg.users, cfg.rounds, cfg.world())
        traces = await run_nats(nc, ep, cohorts, progress=progress, settle=settle,
                                stats=stats, client=cfg.client)
        for label, tr in traces.items():
            d = summarise_trace(tr, ep.personas)
            d["policy"] = label
            d["uniform"] = float(ep.expected.mean())
            out.append(d)
    return out


def aggregate(rows: list[dict], cfg: SimConfig) -> dict:
    """Per policy: CIs over seeds of reward, expected reward, final regret; curves."""
    res: dict = {"config": cfg.to_dict(), "policies": {}}
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r["seed"], r)
    res["oracle"] = mean_ci([by_seed[s]["oracle"] for s in sorted(by_seed)])
    res["uniform"] = mean_ci([by_seed[s]["uniform"] for s in sorted(by_seed)])
    res["feedback"] = cfg.feedback().label if cfg.mode == "inproc" else (
        f"{cfg.client} client through NATS (default reward: the feedback consumer's)")
    for p in cfg.policies:
        rs = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["seed"])
        if not rs:
            continue
        curves = np.stack([r["regret_curve"] for r in rs])
        m, lo, hi = curve_ci(curves)
        res["policies"][p] = {
            "seeds": [r["seed"] for r in rs],
            "mean_reward": mean_ci([r["mean_reward"] for r in rs]),
            "mean_expected": mean_ci([r["mean_expected"] for r in rs]),
            "regret": mean_ci(curves[:, -1]),
            "regret_pct_of_oracle": mean_ci([100 * (r["oracle"] - r["mean_expected"]) / r["oracle"]
                                             for r in rs]),
            "reward_by_seed": [r["mean_reward"] for r in rs],
            "expected_by_seed": [r["mean_expected"] for r in rs],
            "regret_curve": {"mean": m.tolist(), "lo": lo.tolist(), "hi": hi.tolist()},
            "regret_at": regret_at(curves),
        }
        if all("oracle_curve" in r for r in rs):
            oc = np.stack([r["oracle_curve"] for r in rs])
            res["policies"][p]["regret_pct_at"] = regret_pct_at(curves, oc)
            if curves.shape[1] > 50:
                res["policies"][p]["regret_pct_last50"] = regret_pct_last(curves, oc, 50)
        if all("persona_regret" in r for r in rs):
            res["policies"][p]["persona_regret"] = persona_regret(rs)
    return res


CHECKPOINTS = (10, 30, 100, 300)


def regret_at(curves: np.ndarray, rounds=CHECKPOINTS) -> dict:
    """Cumulative regret per user after the given rounds (95% t-interval over seeds)."""
    return {str(t): mean_ci(curves[:, t - 1]) for t in rounds if t <= curves.shape[1]}


def regret_pct_at(curves: np.ndarray, oracle_curves: np.ndarray, rounds=CHECKPOINTS) -> dict:
    """Cumulative regret by round t as a share (%) of the oracle's cumulative reward by t
    (95% t-interval over seeds): the cold-start figures."""
    return {str(t): mean_ci(100 * curves[:, t - 1] / oracle_curves[:, t - 1])
            for t in rounds if t <= curves.shape[1]}


def regret_pct_last(curves: np.ndarray, oracle_curves: np.ndarray, n: int = 50) -> dict:
    """Regret over the last ``n`` rounds as % of the oracle's reward over them."""
    T = curves.shape[1]
    if T <= n:
        return mean_ci(100 * curves[:, -1] / oracle_curves[:, -1])
    return mean_ci(100 * (curves[:, -1] - curves[:, T - n - 1])
                   / (oracle_curves[:, -1] - oracle_curves[:, T - n - 1]))


def persona_regret(rows: list[dict]) -> dict:
    """Per persona: final regret per user and as % of the oracle's reward (CIs over seeds;
    a persona no user of a seed has — small held-out runs — counts over the other seeds)."""
    names = sorted(set().union(*(r["persona_regret"] for r in rows)))
    return {n: {"regret": mean_ci([r["persona_regret"][n] for r in rows
                                   if n in r["persona_regret"]]),
                "regret_pct": mean_ci([r["persona_regret_pct"][n] for r in rows
                                       if n in r["persona_regret_pct"]])}
            for n in names}


def run_rows(cfg: SimConfig, progress=None, cohorts=None) -> list[dict]:
    """Rows (one per cohort × seed) in the configured mode. Cohorts: (label, policy, stream)."""
    if cfg.mode == "inproc":
        return run_inproc(cfg, progress, cohorts)
    return asyncio.run(_nats_main(cfg, progress,
                                  [(c[0], c[1]) for c in cohorts] if cohorts else None))


def run(cfg: SimConfig, progress=None) -> dict:
    t0 = time.perf_counter()
    rows = run_rows(cfg, progress)
    res = aggregate(rows, cfg)
    res["elapsed_s"] = time.perf_counter() - t0
    return res


async def _nats_main(cfg: SimConfig, progress=None, cohorts=None) -> list[dict]:
    from tipsdev.sim.services import Services

    async with Services.from_env_or_embedded(log_dir=cfg.extra.get("log_dir")) as svc:
        return await run_nats_sweep(cfg, svc.nc, progress, cohorts=cohorts)

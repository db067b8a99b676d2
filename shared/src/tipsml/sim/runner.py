"""Sweeps: policies × seeds in either mode, summarised with CIs over seeds."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import numpy as np

from ..bandits import Policy, build_policies
from ..settings import BaseServiceSettings
from .inproc import Trace, policy_rng, run_policy
from .stats import curve_ci, mean_ci
from .world import DEFAULT_PERSONAS, WorldConfig, make_episode

DEFAULT_POLICIES = ("egreedy-v1", "egreedy-v2", "linucb", "thompson")


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
    extra: dict = field(default_factory=dict)

    def world(self) -> WorldConfig:
        return WorldConfig(personas=tuple(self.personas), tips_per_day=self.tips_per_day)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["policies"], d["seeds"], d["personas"] = list(self.policies), list(self.seeds), list(self.personas)
        return d


def policies_from_env(names) -> dict[str, Policy]:
    """The scorer's policy registry with the same settings (EPSILON, LINUCB_ALPHA, ... env)."""
    reg = build_policies(BaseServiceSettings())
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; known: {', '.join(sorted(reg))}")
    return reg


@functools.lru_cache(maxsize=2)
def _episode(seed: int, users: int, rounds: int, world: WorldConfig):
    return make_episode(seed, users, rounds, world)


def summarise_trace(tr: Trace) -> dict:
    return {"policy": tr.policy, "seed": tr.seed, "mean_reward": tr.mean_reward,
            "mean_expected": tr.mean_expected,
            "oracle": float(tr.oracle.mean()),
            "regret_curve": tr.regret_curve(),
            "reward_by_round": tr.reward.mean(axis=0),
            "user_mean_reward": tr.reward.mean(axis=1)}


def _job(label: str, policy: str, stream: int, seed: int, users: int, rounds: int,
         world: WorldConfig) -> dict:
    reg = policies_from_env([policy])
    ep = _episode(seed, users, rounds, world)
    tr = run_policy(ep, reg[policy], policy_rng(seed, stream))
    out = summarise_trace(tr)
    out["policy"] = label
    out["uniform"] = float(ep.expected.mean())
    return out


def run_inproc(cfg: SimConfig, progress=None,
               cohorts: list[tuple[str, str, int]] | None = None) -> list[dict]:
    """Every (cohort, seed) in processes. A cohort is (label, policy, RNG stream); by
    default one per policy. The world of a seed is the same for every cohort."""
    cohorts = cohorts or [(p, p, i) for i, p in enumerate(cfg.policies)]
    policies_from_env([c[1] for c in cohorts])
    jobs = [(lab, pol, st, s) for s in cfg.seeds for lab, pol, st in cohorts]
    world = cfg.world()
    n = cfg.workers or min(os.cpu_count() or 1, len(jobs))
    out = []
    if n <= 1:
        for lab, pol, st, s in jobs:
            out.append(_job(lab, pol, st, s, cfg.users, cfg.rounds, world))
            if progress:
                progress(1)
        return out
    with ProcessPoolExecutor(max_workers=n) as ex:
        futs = [ex.submit(_job, lab, pol, st, s, cfg.users, cfg.rounds, world)
                for lab, pol, st, s in jobs]
        for f in as_completed(futs):
            out.append(f.result())
            if progress:
                progress(1)
    return out


async def run_nats_sweep(cfg: SimConfig, nc, progress=None, settle: bool = True,
                         stats=None, cohorts: list[tuple[str, str]] | None = None) -> list[dict]:
    """Every seed through the real workers; all cohorts of a seed run side by side."""
    from .natsmode import run_nats

    out = []
    cohorts = cohorts or [(p, p) for p in cfg.policies]
    for s in cfg.seeds:
        ep = make_episode(s, cfg.users, cfg.rounds, cfg.world())
        traces = await run_nats(nc, ep, cohorts, progress=progress, settle=settle,
                                stats=stats)
        for label, tr in traces.items():
            d = summarise_trace(tr)
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
        }
    return res


def run_rows(cfg: SimConfig, progress=None, cohorts=None) -> list[dict]:
    """Rows (one per cohort × seed) in the configured mode. Cohorts: (label, policy, stream)."""
    if cfg.mode == "inproc":
        return run_inproc(cfg, progress, cohorts)
    return asyncio.run(_nats_main(cfg, progress, [(c[0], c[1]) for c in cohorts] if cohorts else None))


def run(cfg: SimConfig, progress=None) -> dict:
    t0 = time.perf_counter()
    rows = run_rows(cfg, progress)
    res = aggregate(rows, cfg)
    res["elapsed_s"] = time.perf_counter() - t0
    return res


async def _nats_main(cfg: SimConfig, progress=None, cohorts=None) -> list[dict]:
    from .services import Services

    async with Services.from_env_or_embedded(log_dir=cfg.extra.get("log_dir")) as svc:
        return await run_nats_sweep(cfg, svc.nc, progress, cohorts=cohorts)

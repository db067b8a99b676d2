"""Thompson sampling's propensity: computed (quadrature) vs estimated (Monte Carlo).

    make thompson        # = python bench/thompson_propensity.py
    python bench/thompson_propensity.py --quick

1. Accuracy. Posteriors (μ_a = θ̂_a·x, σ_a = v·√(xᵀA_a⁻¹x)) taken from real simulator
   states (``thompson`` played in-process, 60 users × 120 rounds; 200 decisions sampled
   across rounds, so early wide and late narrow posteriors are both in) plus a few
   adversarial ones (widths 100× apart, exact ties). For each: P(argmax) by
   :func:`tipsml.bandits.thompson_probs` against 10⁶ draws; the same for a plain
   Gauss–Hermite rule in each arm's own variable (32 nodes — the textbook route, shown
   because it is *not* accurate enough here), and for the former M=256 estimate (its
   error and the bias it puts on an IPS weight 1/p̂).
2. Cost, µs per call (K = 5 arms): ``thompson_probs`` vs the former 256-draw estimate,
   and a whole ``Policy.choose`` of each kind; median of 3 repeats of 2,000 calls (this
   2-core box is shared: the spread is printed).
3. OPE of Thompson against its online value before (``THOMPSON_PROPENSITY=mc``) and after
   (``exact``), exactly as ``make ope`` does (target trained 100 rounds and frozen, 300
   users × 150 logged rounds), for Thompson as the logging policy (thompson →
   egreedy-v2, seeds 0–9: this is where its propensity enters IPS) and as the target
   (egreedy-v1 → thompson, seeds 0, 1, 2).

Writes ``bench/results/thompson_propensity.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from tipsdev.ope import validate_pair
from tipsdev.sim.inproc import StateBook, policy_rng, run_policy
from tipsdev.sim.runner import policies_from_env
from tipsdev.sim.stats import mean_ci
from tipsdev.sim.world import make_episode
from tipsml.bandits import pack, thompson_probs

DRAWS = 1_000_000
TOLERANCE = 0.002  # max |exact − MC(10⁶)| allowed; MC's own sd is ≤ 0.0005


def gauss_hermite(mean, sd, nodes=32):
    """P(argmax) by Gauss–Hermite in each arm's own variable (for comparison only)."""
    from tipsml.bandits import norm_cdf

    t, w = np.polynomial.hermite.hermgauss(nodes)
    w = w / np.sqrt(np.pi)
    k = len(mean)
    sd = np.maximum(sd, 1e-12)
    xs = mean[:, None] + (np.sqrt(2) * sd)[:, None] * t[None, :]
    cdf = norm_cdf((xs[:, :, None] - mean[None, None, :]) / sd[None, None, :])
    cdf[np.arange(k), :, np.arange(k)] = 1.0
    p = np.prod(cdf, axis=2) @ w
    return p / p.sum()


def monte_carlo(mean, sd, n, rng):
    counts = np.zeros(len(mean))
    for _ in range(max(n // 250_000, 1)):
        m = min(n, 250_000)
        d = mean + sd * rng.standard_normal((m, len(mean)))
        counts += np.bincount(d.argmax(axis=1), minlength=len(mean))
    return counts / counts.sum()


def posteriors(n: int = 200, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    pol = policies_from_env(["thompson"])["thompson"]
    ep = make_episode(seed, 60, 120)
    # snapshots of the state at several rounds: play, and record (mean, sd) on the way
    rng = np.random.default_rng([seed, 5])
    picks = sorted(zip(rng.integers(0, 60, n), rng.integers(0, 120, n)), key=lambda p: p[1])
    out = []
    for t_stop in sorted({t for _, t in picks}):
        sub = ep.slice(0, t_stop)
        state = run_policy(sub, pol, policy_rng(seed, 9)).state if t_stop else {}
        book = StateBook(pol, ep.arms, state)
        for u, t in picks:
            if t != t_stop:
                continue
            blobs = [pack(v) for v in book.get(ep.user_ids[u])]
            _, b, ainv = pol.stack(blobs)
            x = ep.x7[u, t]
            uu = ainv @ x
            mean = np.einsum("kd,kd->k", uu, b)
            sd = pol.v * np.sqrt(np.maximum(np.einsum("kd,d->k", uu, x), 0.0))
            out.append((mean, sd))
    return out


def accuracy(quick: bool) -> dict:
    cases = posteriors(40 if quick else 200)
    adversarial = [
        (np.array([0.3, 0.31, 0.2, 0.5, 0.0]), np.array([0.3, 0.003, 0.05, 0.3, 0.001])),
        (np.full(5, 0.3), np.full(5, 0.1)),
        (np.full(5, 0.3), np.array([1e-3, 0.1, 0.2, 0.3, 0.01])),
    ]
    rng = np.random.default_rng(123)
    draws = 200_000 if quick else DRAWS
    rows = []
    for i, (mean, sd) in enumerate(cases + adversarial):
        mc = monte_carlo(mean, sd, draws, rng)
        ex = thompson_probs(mean, sd)
        gh = gauss_hermite(mean, sd)
        # the former estimate: 256 draws, floored at 1/257, many times
        m256 = np.stack([np.maximum(monte_carlo(mean, sd, 256, rng), 1 / 257) for _ in range(200)])
        with np.errstate(divide="ignore"):
            w_bias = np.where(ex > 0.01, (1 / m256).mean(axis=0) * ex - 1, np.nan)
        rows.append({"case": "adversarial" if i >= len(cases) else "simulator",
                     "sd_ratio": float(sd.max() / max(sd.min(), 1e-12)),
                     "err_exact": float(np.abs(ex - mc).max()),
                     "err_gh32": float(np.abs(gh - mc).max()),
                     "err_mc256_sd": float(m256.std(axis=0).max()),
                     "ips_weight_bias_mc256": float(np.nanmax(w_bias)) if np.isfinite(w_bias).any() else None})
    sim = [r for r in rows if r["case"] == "simulator"]
    adv = [r for r in rows if r["case"] == "adversarial"]
    mc_sd = 0.5 / np.sqrt(draws)
    return {
        "draws": draws, "tolerance": TOLERANCE, "mc_sd_bound": mc_sd,
        "cases": len(rows),
        "simulator": {"n": len(sim),
                      "sd_ratio_median": float(np.median([r["sd_ratio"] for r in sim])),
                      "sd_ratio_max": float(max(r["sd_ratio"] for r in sim)),
                      "max_err_exact": max(r["err_exact"] for r in sim),
                      "max_err_gh32": max(r["err_gh32"] for r in sim),
                      "max_sd_mc256": max(r["err_mc256_sd"] for r in sim),
                      "median_ips_weight_bias_mc256_pct": 100 * float(np.nanmedian(
                          [r["ips_weight_bias_mc256"] or np.nan for r in sim]))},
        "adversarial": adv,
    }


def _timeit(fn, n=2000, reps=3) -> dict:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ts.append((time.perf_counter() - t0) / n * 1e6)
    return {"median_us": statistics.median(ts), "min_us": min(ts), "max_us": max(ts)}


def cost() -> dict:
    from dataclasses import replace

    mean, sd = posteriors(3)[-1]
    rng = np.random.default_rng(0)

    def mc256():
        d = mean + sd * rng.standard_normal((256, 5))
        return np.bincount(d.argmax(axis=1), minlength=5)

    pol = policies_from_env(["thompson"])["thompson"]
    ep = make_episode(0, 2, 40)
    state = run_policy(ep, pol, policy_rng(0, 1)).state
    blobs = [pack(v) for v in StateBook(pol, ep.arms, state).get(ep.user_ids[0])]
    x = ep.x7[0, 10]
    arms = list(ep.arms)
    exact = pol
    mc = replace(pol, propensity="mc")
    eg = policies_from_env(["egreedy-v1"])["egreedy-v1"]
    return {
        "thompson_probs (exact, K=5)": _timeit(lambda: thompson_probs(mean, sd)),
        "256-draw estimate (former)": _timeit(mc256),
        "Policy.choose thompson exact": _timeit(lambda: exact.choose(arms, blobs, x, rng)),
        "Policy.choose thompson mc": _timeit(lambda: mc.choose(arms, blobs, x, rng)),
        "Policy.choose egreedy (reference)": _timeit(lambda: eg.choose(arms, blobs, x, rng)),
    }


def _ope_job(args):
    lp, tp, mode, kw = args
    row = validate_pair(lp, tp, overrides={"propensity": mode}, **kw)
    row["propensity_mode"] = mode
    return row


def ope(quick: bool, workers: int) -> list[dict]:
    kw = {"users": 100, "warmup": 50, "rounds": 60} if quick else {"users": 300, "warmup": 100,
                                                                     "rounds": 150}
    # Thompson as the logging policy is where the propensity enters IPS: 10 seeds there
    pairs = {("thompson", "egreedy-v2"): (0,) if quick else tuple(range(10)),
             ("egreedy-v1", "thompson"): (0,) if quick else (0, 1, 2)}
    jobs = [(lp, tp, mode, dict(kw, seed=s)) for mode in ("mc", "exact")
            for (lp, tp), seeds in pairs.items() for s in seeds]
    with ProcessPoolExecutor(max_workers=workers or None) as ex:
        return list(ex.map(_ope_job, jobs))


def ope_table(rows: list[dict]) -> str:
    lines = [("| logging → target | Thompson propensity | seeds | online reward | IPS (mean err, worst) | "
             "SNIPS (mean err, worst) | DR (mean err, worst) |"), "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["logging"], r["target"], r["propensity_mode"]), []).append(r)
    for (lp, tp, mode), rs in groups.items():
        on = np.mean([r["online_reward"] for r in rs])

        def cell(k, rs=rs, on=on):
            v = np.mean([r[k]["value"] for r in rs])
            errs = np.array([r[k]["rel_err_pct"] for r in rs])
            worst = max(errs, key=abs)
            if len(errs) >= 5:  # mean of the per-seed errors with its 95% t-interval
                ci = mean_ci(errs)
                return (f"{v:.3f} (mean err {ci['mean']:+.1f}% [{ci['lo']:+.1f}, {ci['hi']:+.1f}], "
                        f"worst {worst:+.1f}%)")
            return f"{v:.3f} (mean err {errs.mean():+.1f}%, worst {worst:+.1f}%)"
        label = "M=256 draws (before)" if mode == "mc" else "exact (after)"
        lines.append(f"| {lp} → {tp} | {label} | {len(rs)} | {on:.3f} | {cell('ips')} | "
                     f"{cell('snips')} | {cell('dr')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-ope", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "thompson_propensity"))
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.render_only:
        res = json.loads(Path(f"{args.out}.json").read_text())
        Path(f"{args.out}.md").write_text(report(res) + "\n")
        print(report(res))
        return 0
    t0 = time.perf_counter()
    res = {"accuracy": accuracy(args.quick), "cost_us": cost()}
    if not args.skip_ope:
        res["ope"] = ope(args.quick, args.workers)
    res["elapsed_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1, default=float))
    md = report(res)
    Path(f"{out}.md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {out}.json and {out}.md ({res['elapsed_s']:.0f} s)")
    return 0


def report(res: dict) -> str:
    a = res["accuracy"]
    s = a["simulator"]
    lines = [
        "#### Accuracy (P(argmax) vs " + f"{a['draws']:,} draws)", "",
        (f"{s['n']} posteriors from simulator states (σ ratio between arms: median "
        f"{s['sd_ratio_median']:.1f}, max {s['sd_ratio_max']:.1f}) and "
        f"{len(a['adversarial'])} adversarial ones. Tolerance {a['tolerance']} (the 10⁶-draw "
        f"reference's own sd ≤ {a['mc_sd_bound']:.4f})."), "",
        "| method | max abs error, simulator posteriors | max abs error, adversarial |",
        "|---|---|---|",
        (f"| quadrature (`thompson_probs`, now) | {s['max_err_exact']:.5f} | "
        f"{max(r['err_exact'] for r in a['adversarial']):.5f} |"),
        (f"| Gauss–Hermite, 32 nodes per arm (textbook, not used) | {s['max_err_gh32']:.5f} | "
        f"{max(r['err_gh32'] for r in a['adversarial']):.5f} |"),
        (f"| 256 draws (before; sd of one estimate) | {s['max_sd_mc256']:.4f} | "
        f"{max(r['err_mc256_sd'] for r in a['adversarial']):.4f} |"),
        "", (f"Bias of an IPS weight 1/p̂ under the 256-draw estimate (median over simulator "
        f"posteriors, arms with p > 0.01): {s['median_ips_weight_bias_mc256_pct']:+.1f}%."), "",
        "#### Cost per call (µs; median [min, max] of 3 × 2,000 calls, shared 2-core box)", "",
        "| call | µs |", "|---|---|"]
    for k, v in res["cost_us"].items():
        lines.append(f"| {k} | {v['median_us']:.1f} [{v['min_us']:.1f}, {v['max_us']:.1f}] |")
    if "ope" in res:
        lines += ["", "#### OPE of Thompson vs its online value, before and after", "",
                  ope_table(res["ope"])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

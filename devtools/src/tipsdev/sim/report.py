"""Tables and figures of a simulation result (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tipsdev.sim.stats import fmt_ci


def regret_plot(res: dict, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = res["config"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    styles = ["-", "--", "-.", ":"]
    for i, (name, p) in enumerate(res["policies"].items()):
        c = p["regret_curve"]
        x = np.arange(1, len(c["mean"]) + 1)
        ax.plot(x, c["mean"], label=name, lw=1.8, ls=styles[i % len(styles)])
        ax.fill_between(x, c["lo"], c["hi"], alpha=0.2)
    ax.set_xlabel("round (tip opportunity per user)")
    ax.set_ylabel("cumulative expected regret per user")
    ax.set_title(title or (f"Regret vs oracle — {cfg['users']} users × {cfg['rounds']} rounds, "
                           f"{len(cfg['seeds'])} seeds ({cfg['mode']}), 95% CI"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def regret_table(res: dict) -> str:
    cfg = res["config"]
    lines = [
        f"{cfg['users']} users × {cfg['rounds']} rounds × {len(cfg['seeds'])} seeds, "
        + ("held-out world (two-persona mixtures of nurse, founder, teacher, retiree, "
           "support; drifting tastes)" if cfg.get("world_name") == "heldout"
           else f"personas: {', '.join(cfg['personas'])}") + f"; mode: {cfg['mode']}; "
        f"feedback: {res.get('feedback', 'explicit ignored')}; "
        f"95% t-intervals over seeds. Oracle E[r] = {fmt_ci(res['oracle'])}, "
        f"uniform random E[r] = {fmt_ci(res['uniform'])}.",
        "",
        "| policy | mean reward (realised) | mean E[r] | regret / user at T | regret % of oracle |",
        "|---|---|---|---|---|",
    ]
    for name, p in res["policies"].items():
        lines.append(f"| {name} | {fmt_ci(p['mean_reward'])} | {fmt_ci(p['mean_expected'])} | "
                     f"{fmt_ci(p['regret'], 2)} | {fmt_ci(p['regret_pct_of_oracle'], 1)} |")
    cold = cold_start_table(res)
    if cold:
        lines += ["", cold]
    return "\n".join(lines)


def cold_start_table(res: dict) -> str:
    """Cumulative regret by rounds 10 / 30 / 100 / 300 as % of the oracle's reward by
    then (95% t-intervals over seeds), and over the last 50 rounds."""
    pols = {n: p for n, p in res["policies"].items() if "regret_pct_at" in p}
    if not pols:
        return ""
    rounds = list(next(iter(pols.values()))["regret_pct_at"])
    last = all("regret_pct_last50" in p for p in pols.values())
    lines = ["Cumulative regret as % of the oracle's reward, by round (cold start):", "",
             "| policy | " + " | ".join(f"by round {t}" for t in rounds)
             + (" | last 50 rounds |" if last else " |"),
             "|---|" + "---|" * (len(rounds) + int(last))]
    for name, p in pols.items():
        cells = [fmt_ci(p["regret_pct_at"][t], 1) for t in rounds]
        if last:
            cells.append(fmt_ci(p["regret_pct_last50"], 1))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(res: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=_default))
    return path


def _default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))

"""Tables and figures of docs/results/language.md from finished `cram train --preset lm` runs.

    python docs/results/language_analysis.py RUN... --png docs/results/language_utilization.png

Run it from the folder the runs were trained in (the runs record their corpus path as given to
--data). For each run it reads metrics.jsonl and the last checkpoint, scores the checkpoint on the
run's own validation windows (the ones every evaluation used) with
cramkit.gpu.tasks.text.attention_by_class, and prints markdown: the Pareto table, the attention
use over training, and where attention goes. Writes the JSON of everything to --json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cramkit.gpu.run.load import load_checkpoint
from cramkit.gpu.tasks.text import TextTask, attention_by_class, eval_positions


def pair_fraction(route: torch.Tensor | None, pattern: str, window: int) -> float:
    """Query-key pairs computed by the attention layer over those of dense causal attention at the
    same positions: routed layers (route (N, T) in [0, 1]) pay t + 1 keys at each routed position
    t; a W layer pays min(t + 1, window) everywhere; no attention layer: 0."""
    if route is not None:
        t = torch.arange(1, route.shape[1] + 1, dtype=torch.float64)
        return float((route.double() * t).sum() / (t.sum() * route.shape[0]))
    if "W" in pattern:
        return None  # filled by the caller from the sequence length
    return 0.0


def window_pairs(seq_len: int, window: int) -> float:
    t = torch.arange(1, seq_len + 1, dtype=torch.float64)
    return float(t.clamp_max(window).sum() / t.sum())


def describe(run: Path) -> dict:
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ck = load_checkpoint(run)
    cfg = ck.cfg
    task = TextTask(cfg.text.data, seq_len=cfg.text.seq_len, val_frac=cfg.text.val_frac,
                    eval_batches=cfg.text.eval_batches, eval_batch_size=cfg.train.batch_size)  # fmt: skip
    where = attention_by_class(ck.model, task)
    ev = eval_positions(ck.model, task.eval_windows())
    pattern = cfg.model.pattern
    pairs = pair_fraction(ev["route"], pattern, cfg.model.window)
    if pairs is None:
        pairs = window_pairs(cfg.text.seq_len, cfg.model.window)
    last = metrics[-1]
    return {
        "run": str(run), "router": cfg.router.name, "pattern": pattern, "tau": cfg.router.tau,
        "budget": cfg.router.budget, "window": cfg.model.window, "steps": last["step"],
        "params": sum(p.numel() for p in ck.model.parameters()),
        "bpb": last["bpb"], "rho_all": last.get("rho_all"), "pair_frac": pairs, "wall_s": last["wall_s"],
        "curve": [{k: m.get(k) for k in ("step", "bpb", "rho_all", "train_attn_frac", "rho_by_class")}
                  for m in metrics],
        "where": where,
    }  # fmt: skip


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(rows: list[dict]) -> str:
    out = ["| run | pattern | router | budget | params | bpb | rho_all (positions attending) | query-key pairs / dense | wall s |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: r["bpb"]):
        budget = r["budget"] if r["router"] in ("stride", "random", "learned-static") else None
        if "A" not in r["pattern"]:
            router = f"- (window {r['window']})" if "W" in r["pattern"] else "-"
        else:
            router = r["router"] + (f" (tau {r['tau']})" if r["router"] == "cram" else "")
        out.append(f"| {Path(r['run']).name} | {r['pattern']} | {router} | {_f(budget)} | {r['params']} "
                   f"| {r['bpb']:.3f} | {_f(r['rho_all'])} | {r['pair_frac']:.3f} | {r['wall_s']:.0f} |")  # fmt: skip
    for r in rows:
        if r["rho_all"] is None:
            continue
        out += ["", f"### {Path(r['run']).name}: attention use over training", "",
                "| step | bpb | rho_all | train_attn_frac |", "|---|---|---|---|"]  # fmt: skip
        for m in r["curve"]:
            out.append(f"| {m['step']} | {m['bpb']:.3f} | {_f(m['rho_all'])} | {_f(m['train_attn_frac'])} |")
        for table, title in (("by_class", "class of the byte at the position (last byte read)"),
                             ("by_next_class", "class of the byte being predicted"),
                             ("by_word_pos", "letters of the current word read so far (0 = not in a word)")):  # fmt: skip
            out += ["", f"{Path(r['run']).name}, by {title}:", "",
                    "| group | positions | share | rho | share of attention | bpb |", "|---|---|---|---|---|---|"]  # fmt: skip
            for g in r["where"][table]:
                out.append(f"| {g['group']} | {g['n']} | {_f(g['share'])} | {_f(g['rho'])} | {_f(g['attn_share'])} "
                           f"| {_f(g['bpb'])} |")  # fmt: skip
    return "\n".join(out)


def figure(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(rows):
        c = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        pts = [m for m in r["curve"] if m["step"] > 0]
        name = Path(r["run"]).name
        ax3.plot([m["step"] for m in pts], [m["bpb"] for m in pts], "-", color=c, label=name)
        if r["rho_all"] is not None and r["router"] in ("cram", "learned-static"):
            ax1.plot([m["step"] for m in pts], [m["rho_all"] for m in pts], "-o", ms=3, color=c, label=f"{name} rho_all")
            ax1.plot([m["step"] for m in pts], [m["train_attn_frac"] for m in pts], ":", color=c,
                     label=f"{name} train_attn_frac")
        if r["router"] == "cram" and r["rho_all"] is not None and r is rows[0]:
            for cls in pts[0]["rho_by_class"]:
                ax2.plot([m["step"] for m in pts], [m["rho_by_class"][cls] for m in pts], "-o", ms=3, label=cls)
            ax2.set_title(f"{name}: rho by byte class")
    ax1.set_title("attention use (validation windows)")
    ax1.set_xscale("log")
    ax2.set_xscale("log")
    ax3.set_xscale("log")
    ax3.set_ylim(top=min(5.0, ax3.get_ylim()[1]))
    ax3.set_title("validation bits per byte")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--png", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [describe(Path(r)) for r in a.runs]
    print(markdown(rows))
    if a.png:
        figure(rows, a.png)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

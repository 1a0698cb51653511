"""Tables of docs/results/language.md, "Subword study (issue 18 part 7)", from committed JSON.

    python docs/results/language_study.py --collect RUN...   # run folders -> data/language-study.json
    python docs/results/language_study.py                    # that JSON -> the markdown tables

Runs are named ``<scale>_<label>_s<seed>`` (e.g. ``pA_dense_s0``): ``scale`` groups the runs of one
model size and schedule, ``label`` the router. ``--collect`` reads each run's config.toml,
metrics.jsonl (every evaluation's loss, bits per byte and attention use per recall class, computed
by the text task on its fixed validation windows) and summary.json; nothing is recomputed from
checkpoints. The default mode needs only the standard library: it prints

- the scale search: per scale, dense and SSM-only (``none``) on recall tokens per seed, the gap
  dense - SSM-only, the spread between seeds, and whether the gap exceeds twice the spread;
- the study at each scale with more routers: per router the mean over seeds of bpb (with a 95 %
  Student-t interval), bpb on recall tokens and the rest, attention use overall and on recall
  tokens, and the share of the attended positions that are recall tokens;
- paired differences (same seed) of every router's bpb against CRAM's, with a 95 % t interval;
- per router, bpb on a held-out corpus (RUN/eval-web.json: ``cram eval RUN --data FILE --json``);
- per run, the redundancy headline along its checkpoints (RUN/redundancy.json:
  ``cram redundancy RUN --json``);
- where attention helps (RUN/eval.json: ``cram eval RUN --json``);
- every run with its settings.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

JSON = Path(__file__).parent / "data" / "language-study.json"
#: two-sided 95 % Student-t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
FINAL = ("val_loss", "bpb", "recall_share", "bpb_recall", "bpb_other", "val_loss_recall", "val_loss_other",
         "rho_all", "rho_recall", "rho_other", "attn_share_recall")  # fmt: skip
EVAL = ("windows", "tokens", "bpb", "rho_all", "recall_share", "bpb_recall", "bpb_other", "attn_share_recall", "need_share",
        "need_share_recall", "need_share_other", "gain_mean", "gain_precision", "gain_recall", "gain_attended",
        "gain_skipped")  # fmt: skip
CURVE = ("step", "bpb", "bpb_recall", "bpb_other", "rho_all", "rho_recall", "attn_share_recall")
REDUNDANCY = ("step", "headline", "headline_ci", "r2_p1", "mean_ablation_dnll")


def parse_name(name: str) -> tuple[str, str, int]:
    """``<scale>_<label>_s<seed>`` -> (scale, label, seed)."""
    head, _, seed = name.rpartition("_s")
    scale, _, label = head.partition("_")
    if not seed.isdigit() or not label:
        raise SystemExit(f"run name {name!r} is not <scale>_<label>_s<seed>")
    return scale, label, int(seed)


def describe(run: Path) -> dict:
    cfg = tomllib.loads((run / "config.toml").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary = json.loads((run / "summary.json").read_text())
    scale, label, seed = parse_name(run.name)
    last = metrics[-1]
    m, r, t, x = cfg["model"], cfg["router"], cfg["train"], cfg["text"]
    settings = {
        "tokenizer": x["tokenizer"], "seq_len": x["seq_len"], "eval_batches": x["eval_batches"],
        "pattern": m["pattern"], "d_model": m["d_model"], "n_heads": m["n_heads"], "window": m["window"],
        "router": r["name"], "target": r["target"], "tau": r["tau"], "delta": r["delta"], "budget": r["budget"],
        "steps": t["steps"], "batch_size": t["batch_size"], "lr": t["lr"], "seed": t["seed"],
    }  # fmt: skip
    return {"run": run.name, "scale": scale, "label": label, "seed": seed, "settings": settings,
            "final": {k: last.get(k) for k in FINAL}, "step": last["step"], "wall_s": summary["wall_s"],
            "val_jumps": summary.get("val_jumps"),
            "curve": [{k: e.get(k) for k in CURVE} for e in metrics if "bpb" in e],
            "eval": _eval_row(run / "eval.json"), "eval_web": _eval_row(run / "eval-web.json"),
            "redundancy": _redundancy(run / "redundancy.json"), **_checkpoint_facts(run)}  # fmt: skip


def _checkpoint_facts(run: Path) -> dict:
    """Parameters of the model and tokens of the corpus, from the run's last checkpoint (torch and
    cramkit are needed for --collect only)."""
    from cramkit.gpu.run.load import load_checkpoint

    ck = load_checkpoint(run)
    return {"params": sum(p.numel() for p in ck.model.parameters()), "text_tokens": ck.meta.get("text_tokens"),
            "vocab": ck.meta.get("vocab_size")}  # fmt: skip


def _eval_row(path: Path) -> dict | None:
    """``cram eval RUN --json`` saved as RUN/eval.json (the whole validation split, with the
    counterfactual gain of attention per position) or RUN/eval-web.json (``--data`` the held-out
    corpus), when it was made: its first row's scalars."""
    if not path.is_file():
        return None
    row = json.loads(path.read_text())["rows"][0]
    return {k: row.get(k) for k in EVAL}


def _redundancy(path: Path) -> dict | None:
    """``cram redundancy RUN --json`` saved as RUN/redundancy.json (every checkpoint of the run on
    the same corpus): the corpus, its TEST tokens, the trend and one row per checkpoint."""
    if not path.is_file():
        return None
    t = json.loads(path.read_text())
    first = t["checkpoints"][0]
    return {"corpus": Path(first["data"]["corpus"]).name, "window": first["data"]["window"],
            "test_tokens": first["data"]["tokens"]["test"], "budget": first["headline"]["budget"],
            "trend": t["trend"], "rows": [{k: r.get(k) for k in REDUNDANCY} for r in t["trajectory"]]}  # fmt: skip


def collect(runs: list[str]) -> None:
    rows = [describe(Path(r)) for r in runs]
    JSON.parent.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    print(f"wrote {JSON} ({len(rows)} runs)")


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def mean_ci(xs: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95 % Student-t interval (None for one value)."""
    if len(xs) < 2:
        return xs[0], None
    return statistics.fmean(xs), T95[len(xs) - 1] * statistics.stdev(xs) / math.sqrt(len(xs))


def ci_text(xs: list[float], fmt: str = "{:.4f}") -> str:
    """The mean of ``xs`` and its 95 % half-width (none for one value), as a table cell."""
    mu, ci = mean_ci(xs)
    return fmt.format(mu) + ("" if ci is None else f" ± {ci:.4f}")


def avg(dicts: list[dict], key: str) -> float | None:
    """The mean of ``key`` over the dicts that have a value for it (None when none has)."""
    vals = [d[key] for d in dicts if d.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def spread(xs: list[float]) -> float:
    return max(xs) - min(xs)


def by(rows: list[dict], scale: str, label: str) -> dict[int, dict]:
    return {r["seed"]: r for r in rows if r["scale"] == scale and r["label"] == label}


def scale_table(rows: list[dict]) -> list[str]:
    out = ["| scale | settings | seed | dense bpb recall | SSM-only bpb recall | gap (SSM-only - dense) "
           "| dense bpb other | SSM-only bpb other | dense bpb | SSM-only bpb |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    verdicts = []
    for scale in dict.fromkeys(r["scale"] for r in rows):
        dense, none = by(rows, scale, "dense"), by(rows, scale, "none")
        seeds = sorted(set(dense) & set(none))
        if not seeds:
            continue
        s = dense[seeds[0]]["settings"]
        desc = (f"{s['tokenizer']}, T {s['seq_len']}, d {s['d_model']}, {s['n_heads']} heads, "
                f"{s['steps']} steps x {s['batch_size']}, lr {s['lr']}; {dense[seeds[0]].get('params')} parameters, "
                f"corpus {dense[seeds[0]].get('text_tokens')} tokens")  # fmt: skip
        gaps = []
        for seed in seeds:
            d, n = dense[seed]["final"], none[seed]["final"]
            gaps.append(n["bpb_recall"] - d["bpb_recall"])
            out.append(f"| {scale} | {desc} | {seed} | {d['bpb_recall']:.4f} | {n['bpb_recall']:.4f} | {gaps[-1]:+.4f} "
                       f"| {d['bpb_other']:.4f} | {n['bpb_other']:.4f} | {d['bpb']:.4f} | {n['bpb']:.4f} |")  # fmt: skip
        if len(seeds) >= 2:
            sp = max(spread([dense[k]["final"]["bpb_recall"] for k in seeds]),
                     spread([none[k]["final"]["bpb_recall"] for k in seeds]))  # fmt: skip
            met = min(gaps) > 2 * sp
            verdicts.append(f"- {scale}: gap on recall tokens {min(gaps):+.4f} to {max(gaps):+.4f} bpb "
                            f"(mean {statistics.fmean(gaps):+.4f}); seed spread (largest of dense's and SSM-only's "
                            f"range over seeds) {sp:.4f}; target gap > 2 x spread = {2 * sp:.4f}: "
                            f"{'met' if met else 'missed'}")  # fmt: skip
            allg = [none[k]["final"]["bpb"] - dense[k]["final"]["bpb"] for k in seeds]
            sp_all = max(spread([dense[k]["final"]["bpb"] for k in seeds]), spread([none[k]["final"]["bpb"] for k in seeds]))
            verdicts.append(f"- {scale}, all tokens: gap {min(allg):+.4f} to {max(allg):+.4f} bpb; seed spread {sp_all:.4f}; "
                            f"2 x spread = {2 * sp_all:.4f}")  # fmt: skip
        else:
            verdicts.append(f"- {scale}: one seed, gap on recall tokens {gaps[0]:+.4f} bpb (no spread)")
    return out + [""] + verdicts + ["", "The gap on recall tokens (SSM-only - dense, bpb) at each evaluation from step 100:", ""] \
        + gap_curves(rows)  # fmt: skip


def gap_curves(rows: list[dict]) -> list[str]:
    """One table per scale (scales differ in their evaluation steps)."""
    out = []
    for scale in dict.fromkeys(r["scale"] for r in rows):
        dense, none = by(rows, scale, "dense"), by(rows, scale, "none")
        header = False
        for seed in sorted(set(dense) & set(none)):
            d = {c["step"]: c["bpb_recall"] for c in dense[seed]["curve"]}
            n = {c["step"]: c["bpb_recall"] for c in none[seed]["curve"]}
            steps = [k for k in d if k in n and k >= 100]
            if not header:
                out += ([""] if out else []) + [
                    "| scale | seed | " + " | ".join(f"step {k}" for k in steps) + " |",
                    "|---|---|" + "---|" * len(steps)]  # fmt: skip
                header = True
            out.append(f"| {scale} | {seed} | " + " | ".join(f"{n[k] - d[k]:+.4f}" for k in steps) + " |")
    return out


def study_table(rows: list[dict], scale: str) -> list[str]:
    labels = list(dict.fromkeys(r["label"] for r in rows if r["scale"] == scale))
    out = ["| router | seeds | bpb (mean, 95 % CI) | bpb recall | bpb other | rho_all | rho on recall | rho on other "
           "| share of attention on recall tokens | recall share of positions |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label in labels:
        rs = list(by(rows, scale, label).values())
        fin = [r["final"] for r in rs]
        out.append(f"| {label} | {','.join(str(r['seed']) for r in rs)} | {ci_text([f['bpb'] for f in fin])} "
                   f"| {_f(avg(fin, 'bpb_recall'), '{:.4f}')} | {_f(avg(fin, 'bpb_other'), '{:.4f}')} "
                   f"| {_f(avg(fin, 'rho_all'))} | {_f(avg(fin, 'rho_recall'))} | {_f(avg(fin, 'rho_other'))} "
                   f"| {_f(avg(fin, 'attn_share_recall'))} | {_f(avg(fin, 'recall_share'))} |")  # fmt: skip
    return out


#: a static router's runs at the gain target's attention use are labelled ``<router>-mg``: they pair
#: with ``cram-mgain``, the others with ``cram`` (each compared at its own matched budget)
MATCHED_SUFFIX = "-mg"


def _pairs_with(label: str, ref: str) -> bool:
    """Whether ``label``'s runs are compared with ``ref``'s: against a CRAM run, the unrouted ends,
    the other CRAM runs and the static routers at its attention use; against anything else, all."""
    if label == ref:
        return False
    if ref not in ("cram", "cram-mgain") or label in ("dense", "none", "cram", "cram-mgain"):
        return True
    return label.endswith(MATCHED_SUFFIX) == (ref == "cram-mgain")


def paired_table(rows: list[dict], scale: str, ref: str) -> list[str]:
    base = by(rows, scale, ref)
    out = [f"| router | seeds paired with {ref} | bpb - {ref} bpb (mean, 95 % CI) | per seed |", "|---|---|---|---|"]
    for label in dict.fromkeys(r["label"] for r in rows if r["scale"] == scale):
        if not _pairs_with(label, ref):
            continue
        other = by(rows, scale, label)
        seeds = sorted(set(base) & set(other))
        if not seeds:
            continue
        diffs = [other[k]["final"]["bpb"] - base[k]["final"]["bpb"] for k in seeds]
        out.append(f"| {label} | {','.join(map(str, seeds))} | {ci_text(diffs, '{:+.4f}')} "
                   f"| {' / '.join(f'{d:+.4f}' for d in diffs)} |")  # fmt: skip
    return out


def _lift(e: dict) -> float | None:
    """How much likelier an attended position is to need attention than any position (gain
    precision / need share; 1 = chance); None where the router never attended or nothing needs it."""
    if not e.get("need_share") or e.get("gain_precision") is None:
        return None
    return e["gain_precision"] / e["need_share"]


def gain_table(rows: list[dict]) -> list[str]:
    out = ["| run | windows | bpb | rho_all | share of attention on recall | need share (gain > delta) "
           "| need on recall / other | gain precision (attended with gain > delta) | gain recall (needed and attended) "
           "| precision / need share | mean gain attended / skipped (nats) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        e = r.get("eval")
        if not e or e.get("need_share") is None:
            continue
        lift = _lift(e)
        out.append(f"| {r['run']} | {e['windows']} | {e['bpb']:.4f} | {_f(e['rho_all'])} | {_f(e['attn_share_recall'])} "
                   f"| {_f(e['need_share'])} | {_f(e['need_share_recall'])} / {_f(e['need_share_other'])} "
                   f"| {_f(e['gain_precision'])} | {_f(e['gain_recall'])} | {_f(lift, '{:.2f}')} "
                   f"| {_f(e['gain_attended'], '{:.4f}')} / {_f(e['gain_skipped'], '{:.4f}')} |")  # fmt: skip
    return out if len(out) > 2 else []


def heldout_table(rows: list[dict], scale: str) -> list[str]:
    """Per router, the held-out corpus (``cram eval RUN --data``) beside the validation split."""
    out = ["| router | seeds | validation bpb | held-out bpb (mean, 95 % CI) | held-out bpb recall | held-out bpb "
           "other | held-out bpb - SSM-only's (paired by seed, 95 % CI) | held-out recall share | rho_all "
           "| share of attention on recall tokens | need share (gain > delta) | gain precision / need share |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    none = {seed: r["eval_web"]["bpb"] for seed, r in by(rows, scale, "none").items() if r.get("eval_web")}
    for label in dict.fromkeys(r["label"] for r in rows if r["scale"] == scale):
        rs = [r for r in by(rows, scale, label).values() if r.get("eval_web")]
        if not rs:
            continue
        ev = [{**r["eval_web"], "lift": _lift(r["eval_web"])} for r in rs]
        diffs = [r["eval_web"]["bpb"] - none[r["seed"]] for r in rs if r["seed"] in none]
        paired = ci_text(diffs, "{:+.4f}") if diffs and label != "none" else "-"
        out.append(f"| {label} | {','.join(str(r['seed']) for r in rs)} "
                   f"| {statistics.fmean(r['final']['bpb'] for r in rs):.4f} | {ci_text([e['bpb'] for e in ev])} "
                   f"| {_f(avg(ev, 'bpb_recall'), '{:.4f}')} | {_f(avg(ev, 'bpb_other'), '{:.4f}')} | {paired} "
                   f"| {_f(avg(ev, 'recall_share'))} | {_f(avg(ev, 'rho_all'))} | {_f(avg(ev, 'attn_share_recall'))} "
                   f"| {_f(avg(ev, 'need_share'))} | {_f(avg(ev, 'lift'), '{:.2f}')} |")  # fmt: skip
    return out if len(out) > 2 else []


def redundancy_table(rows: list[dict]) -> list[str]:
    """Per run, the redundancy headline (share of attention outputs replaceable by the ridge
    prediction within the dNLL budget, 95 % bootstrap CI) and R^2 at each checkpoint."""
    out = []
    for r in rows:
        red = r.get("redundancy")
        if not red:
            continue
        if not out:
            out = [f"Corpus {red['corpus']} (TEST {red['test_tokens']} tokens, windows of {red['window']}), "
                   f"budget {red['budget']} nats/token. Each cell: headline fraction [95 % CI] / R^2 of the "
                   "ridge predictor.", "",
                   "| run | " + " | ".join(f"step {x['step']}" for x in red["rows"]) + " | trend per checkpoint |",
                   "|---|" + "---|" * (len(red["rows"]) + 1)]  # fmt: skip
        cells = [f"{x['headline']:.3f} [{x['headline_ci'][0]:.3f}, {x['headline_ci'][1]:.3f}] / {x['r2_p1']:.2f}"
                 for x in red["rows"]]  # fmt: skip
        out.append(f"| {r['run']} | " + " | ".join(cells) + f" | {_f(red['trend'], '{:+.4f}')} |")
    return out


def runs_table(rows: list[dict]) -> list[str]:
    out = ["| run | router | target / budget | steps | bpb | bpb recall | bpb other | rho_all | attn share recall "
           "| bpb at each evaluation (every 2nd) | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        s, f = r["settings"], r["final"]
        if s["router"] == "cram":
            how = f"{s['target']} " + (f"tau {s['tau']}" if s["target"] == "error" else f"delta {s['delta']}")
        elif s["router"] in ("random", "stride", "learned-static"):
            how = f"budget {s['budget']}"
        elif "W" in s["pattern"]:
            how = f"pattern {s['pattern']}, window {s['window']}"
        else:
            how = "-"
        curve = " ".join(f"{c['bpb']:.2f}" for c in r["curve"][::2])
        out.append(f"| {r['run']} | {s['router']} | {how} | {r['step']} | {f['bpb']:.4f} | {_f(f['bpb_recall'], '{:.4f}')} "
                   f"| {_f(f['bpb_other'], '{:.4f}')} | {_f(f['rho_all'])} | {_f(f['attn_share_recall'])} | {curve} "
                   f"| {r['wall_s']:.0f} |")  # fmt: skip
    return out


def tables(data: dict) -> str:
    rows = data["runs"]
    out = ["### Scale search: dense hybrid against SSM-only on recall tokens", ""] + scale_table(rows)
    for scale in dict.fromkeys(r["scale"] for r in rows):
        labels = {r["label"] for r in rows if r["scale"] == scale}
        if labels - {"dense", "none"}:
            out += ["", f"### Routers at scale {scale}", ""] + study_table(rows, scale)
            if "cram" in labels:
                out += ["", f"Paired by seed against CRAM at scale {scale}:", ""] + paired_table(rows, scale, "cram")
            if "none" in labels:
                out += ["", f"Paired by seed against SSM-only at scale {scale}:", ""] + paired_table(rows, scale, "none")
            if "cram-mgain" in labels and any(x.endswith(MATCHED_SUFFIX) for x in labels):
                out += ["", f"Paired by seed against CRAM with the gain target at scale {scale} (static routers at "
                        "its attention use):", ""] + paired_table(rows, scale, "cram-mgain")  # fmt: skip
    for scale in dict.fromkeys(r["scale"] for r in rows):
        held = heldout_table(rows, scale)
        if held:
            out += ["", f"### Held-out corpus at scale {scale} (`cram eval RUN --data web.txt --json`)", ""] + held
    red = redundancy_table(rows)
    if red:
        out += ["", "### Redundancy along training (`cram redundancy RUN --json`)", ""] + red
    gains = gain_table(rows)
    if gains:
        out += ["", "### Where attention helps (`cram eval RUN --json`, the whole validation split)", ""] + gains
    out += ["", "### Every run", ""] + runs_table(rows)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", nargs="+", metavar="RUN", help="read these run folders and write the JSON")
    a = ap.parse_args(argv)
    if a.collect:
        collect(a.collect)
        return
    if not JSON.is_file():
        sys.exit(f"{JSON} does not exist: run with --collect RUN... first")
    print(tables(json.loads(JSON.read_text())))


if __name__ == "__main__":
    main()

"""Markdown tables for docs/results/{model-speed,kernels}.md from `cram bench ... --json` outputs.

Usage (from the repository root, any Python 3, no dependencies):

    python3 docs/results/data/tables.py model docs/results/data/model-speed-cuda.json
    python3 docs/results/data/tables.py kernels docs/results/data/kernels-cuda.json

Every number in the printed tables is read from the JSON file; nothing is typed in by hand.
JSON of `cram bench model` runs since issue 23 (rows with width, vocabulary and FLOPs per token) get
the tables of :func:`model_tables_flops`: per size and mode, µs and MFLOP per token, every speed-up
over the plain hybrid and over CRAM ρ=1 beside its FLOP-predicted ratio and their quotient, CRAM's
FLOPs by part, and the crossover T measured and predicted by FLOPs.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction

ORDER = ("cram", "dense", "none", "ssm", "transformer")


def rho_text(rho: float | None) -> str:
    if rho is None:
        return "-"
    f = Fraction(rho).limit_denominator(4096)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def num(v: float) -> str:
    """Two decimals below 10, one decimal from 10 on."""
    return f"{v:.2f}" if v < 10 else (f"{v:.1f}")


def label(model: str, rho: float | None) -> str:
    return model if rho is None else f"{model} ρ={rho_text(rho)}"


def _row_key(c: dict) -> tuple:
    return (ORDER.index(c["model"]), -(c["rho"] or 0))


def model_tables(data: dict, modes: tuple[str, ...] = ("train", "prefill", "decode")) -> str:
    cases = data["cases"]
    if cases and "width" in cases[0]:  # a run with sizes and FLOPs (issue 23)
        return model_tables_flops(data)
    out = []
    for mode in modes:
        rows = [c for c in cases if c["mode"] == mode]
        if not rows:
            continue
        ts = sorted({c["T"] for c in rows})
        keys = sorted({(_row_key(c), c["model"], c["rho"]) for c in rows})
        head = "| model | " + " | ".join(f"T={t}" for t in ts) + " |"
        sep = "|---" * (len(ts) + 1) + "|"

        def cell(model, rho, t, rows=rows):
            return next((c for c in rows if c["model"] == model and c["rho"] == rho and c["T"] == t), None)

        dense = {t: (cell("dense", None, t) or {}).get("us_per_token") for t in ts}
        for title, fmt in (
            ("µs per token", lambda c, t: "-" if c is None or c["us_per_token"] is None else num(c["us_per_token"])),
            ("speed-up over dense (dense µs / model µs)",
             lambda c, t, dense=dense: "-" if c is None or c["us_per_token"] is None or dense[t] is None
             else f"{dense[t] / c['us_per_token']:.2f}×"),
            ("peak MB", lambda c, t: "-" if c is None or c["peak_mb"] is None else f"{c['peak_mb']:.1f}"),
        ):
            out += [f"**{mode}: {title}**", "", head, sep]
            for _, model, rho in keys:
                out.append(f"| {label(model, rho)} | " + " | ".join(fmt(cell(model, rho, t), t) for t in ts) + " |")
            out.append("")
    targets = data.get("targets") or []
    if targets:
        out += target_rows(targets, "**issue #9 targets, as computed by the benchmark from this run**")
    cross = data.get("crossover") or []
    if cross:
        out += ["**crossover (smallest measured T from which routed cram is the fastest model with attention)**", "",
                "| mode | crossover T | routed cram fastest at T |", "|---|---|---|"]
        for c in cross:
            wins = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in c["wins"].items()) or "-"
            out.append(f"| {c['mode']} | {c['T'] if c['T'] is not None else 'none'} | {wins} |")
        out.append("")
    return "\n".join(out)


NEW_ORDER = ("cram", "hybrid", "cram-rho1", "none", "ssm", "transformer")
NEW_NAMES = {"hybrid": "plain hybrid", "cram-rho1": "CRAM ρ=1", "none": "none (floor)"}
PARTS = ("backbone", "attention", "memory", "router", "readouts")


def new_label(model: str, rho: float | None) -> str:
    if model == "cram" and rho is not None:
        return f"cram ρ={rho_text(rho)}"
    return NEW_NAMES.get(model, model)


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num and den else None


def linear_crossover(points: dict[str, dict[int, float]]) -> float | None:
    """FLOPs per token are a + b·T for each model (attention is the only term that grows with T):
    fit each from its two largest measured T and return the T from which ``cram`` costs less than
    every rival, or None (never, or fewer than two T). ``points``: model -> {T: FLOPs per token}."""
    lines = {}
    for model, pts in points.items():
        ts = sorted(pts)
        if len(ts) < 2:
            return None
        t0, t1 = ts[-2], ts[-1]
        b = (pts[t1] - pts[t0]) / (t1 - t0)
        lines[model] = (pts[t1] - b * t1, b)
    ac, bc = lines.pop("cram")
    worst = 0.0
    for a, b in lines.values():
        if bc >= b:  # cram's cost grows at least as fast as the rival's
            if ac < a:
                continue  # cheaper at every T
            return None  # the gap never closes
        worst = max(worst, (ac - a) / (b - bc))
    return worst


def model_tables_flops(data: dict) -> str:
    """Tables of a run with sizes and FLOPs (see the module docstring)."""
    cases = [dict(c, model="cram-rho1" if c["model"] == "dense" else c["model"]) for c in data["cases"]]
    out = []
    sizes = sorted({(c["width"], c["vocab"]) for c in cases})
    layers = sorted({c.get("layers") for c in cases if c.get("layers")})
    cross_rows = []
    for width, vocab in sizes:
        at = [c for c in cases if (c["width"], c["vocab"]) == (width, vocab)]
        for mode in ("train", "prefill", "decode"):
            rows = [c for c in at if c["mode"] == mode]
            if not rows:
                continue
            ts = sorted({c["T"] for c in rows})
            keys = sorted({(NEW_ORDER.index(c["model"]), -(c["rho"] or 0), c["model"], c["rho"]) for c in rows})
            head = "| model | " + " | ".join(f"T={t}" for t in ts) + " |"
            sep = "|---" * (len(ts) + 1) + "|"
            where = f"width {width}, vocabulary {vocab}" + (f", {layers[0]} blocks" if len(layers) == 1 else "")

            def cell(model, rho, t, rows=rows):
                return next((c for c in rows if c["model"] == model and c["rho"] == rho and c["T"] == t), None)

            def base(model, t, key, rows=rows):
                c = cell(model, None, t)
                return None if c is None else c.get(key)

            def time_cell(c, t):
                if c is None or c["us_per_token"] is None:
                    return "-" if c is None or not c.get("note") else "skipped"
                mf = "-" if c.get("flops_per_token") is None else f"{c['flops_per_token'] / 1e6:.3g}"
                return f"{num(c['us_per_token'])} µs · {mf} MF"

            def ratio_cell(c, t, baseline):
                if c is None or c["us_per_token"] is None:
                    return "-"
                meas = _ratio(base(baseline, t, "us_per_token"), c["us_per_token"])
                pred = _ratio(base(baseline, t, "flops_per_token"), c.get("flops_per_token"))
                q = _ratio(meas, pred)
                return (f"{'-' if meas is None else f'{meas:.2f}×'} / {'-' if pred is None else f'{pred:.2f}×'} "
                        f"({'-' if q is None else f'{q:.2f}'})")

            tables = [(f"{mode}, {where}: µs and MFLOP per token", time_cell)]
            for b in ("hybrid", "cram-rho1"):
                if any(c["model"] == b for c in rows):
                    tables.append((f"{mode}, {where}: speed-up over the {NEW_NAMES[b]}, measured / FLOP-predicted "
                                   "(measured ÷ predicted)", lambda c, t, b=b: ratio_cell(c, t, b)))
            if any(c["peak_mb"] is not None for c in rows):
                tables.append((f"{mode}, {where}: peak MB",
                               lambda c, t: "-" if c is None or c["peak_mb"] is None else f"{c['peak_mb']:.1f}"))
            for title, fmt in tables:
                out += [f"**{title}**", "", head, sep]
                for _, _, model, rho in keys:
                    out.append(f"| {new_label(model, rho)} | " + " | ".join(fmt(cell(model, rho, t), t) for t in ts) + " |")
                out.append("")
            parts = [c for c in rows if c.get("flop_parts")]
            if parts:
                out += [f"**{mode}, {where}: CRAM MFLOP per token by part**", "",
                        "| model | T | " + " | ".join(PARTS) + " | total |", "|---" * (len(PARTS) + 3) + "|"]
                for c in sorted(parts, key=lambda c: (NEW_ORDER.index(c["model"]), -(c["rho"] or 0), c["T"])):
                    p = c["flop_parts"]
                    out.append(f"| {new_label(c['model'], c['rho'])} | {c['T']} | "
                               + " | ".join(f"{p.get(k, 0.0) / 1e6:.3g}" for k in PARTS)
                               + f" | {c['flops_per_token'] / 1e6:.3g} |")
                out.append("")
            cross = {}
            for key in ("us_per_token", "flops_per_token"):
                wins = {}
                for t in ts:
                    crams = [c for c in rows if c["model"] == "cram" and c["T"] == t and c.get(key) is not None]
                    routed = [c for c in crams if c["rho"] < 1] or crams
                    rivals = [base(m, t, key) for m in ("hybrid", "transformer")]
                    rivals = [r for r in rivals if r is not None]
                    if routed and rivals:
                        wins[t] = min(c[key] for c in routed) < min(rivals)
                found = None
                for t in sorted(wins, reverse=True):
                    if not wins[t]:
                        break
                    found = t
                cross[key] = "not measured" if not wins else ("none" if found is None else f"T={found}")
                cross[key + "_wins"] = ", ".join(f"{t}: {'yes' if w else 'no'}" for t, w in wins.items()) or "-"
            crams = [c for c in rows if c["model"] == "cram" and c.get("flops_per_token")]
            est = None
            if crams:
                rho = min(c["rho"] for c in crams)
                pts = {"cram": {c["T"]: c["flops_per_token"] for c in crams if c["rho"] == rho}}
                for m in ("hybrid", "transformer"):
                    got = {c["T"]: c["flops_per_token"] for c in rows if c["model"] == m and c.get("flops_per_token")}
                    if got:
                        pts[m] = got
                est = linear_crossover(pts) if len(pts) > 1 else None
                est_text = "-" if len(pts["cram"]) < 2 or len(pts) < 2 else (
                    "never" if est is None else f"T ≈ {max(est, 0):.0f} (ρ={rho_text(rho)})")
            else:
                est_text = "-"
            cross_rows.append(f"| {width} | {vocab} | {mode} | {cross['us_per_token']} | {cross['us_per_token_wins']} | "
                              f"{cross['flops_per_token']} | {cross['flops_per_token_wins']} | {est_text} |")
    if cross_rows:
        out += ["**crossover: the smallest T from which routed cram (best ρ < 1) is cheaper than both the plain hybrid "
                "and the transformer at every larger measured T, by measured time and by FLOPs**", "",
                "(last column: FLOPs per token fitted as a + b·T from the two largest T, the T beyond which the "
                "smallest ρ is cheaper than both)", "",
                "| width | vocabulary | mode | measured | cheaper at T (measured) | FLOP-predicted | cheaper at T (FLOPs) "
                "| FLOP crossover, linear fit |",
                "|---|---|---|---|---|---|---|---|", *cross_rows, ""]
    targets = data.get("targets") or []
    if targets and any(t["ratio"] is not None for t in targets):
        out += target_rows(targets, "**issue #9 targets (width 64, vocabulary 256), as computed by the benchmark from this run**")
    return "\n".join(out)


def target_rows(targets: list[dict], title: str) -> list[str]:
    """The benchmark's computed targets as a markdown table under ``title`` (then a blank line)."""
    out = [title, "", "| target | ratio | bound | met? |", "|---|---|---|---|"]
    for t in targets:
        ratio = "not measured" if t["ratio"] is None else f"{t['ratio']:.2f}×"
        met = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
        bound = ("≥ " if t["kind"] == "min" else "≤ ") + f"{t['bound']:g}×"
        out.append(f"| {t['target']} | {ratio} | {bound} | {met} |")
    return out + [""]


def kernel_table(data: dict) -> str:
    out = ["| op | T | ρ | dtype | algorithm | ms | baseline | baseline ms | speed-up | FLOP limit |",
           "|----|---|---|-------|-----------|----|----------|-------------|----------|------------|"]
    for c in data["cases"]:
        flop = "-" if c.get("flop_limit") is None else f"{c['flop_limit']:.1f}"
        out.append(f"| {c['op']} | {c['T']} | {rho_text(c['rho'])} | {c.get('dtype', '-')} | {c['algorithm']} | "
                   f"{c['ms']:.2f} | {c['baseline']} | {c['baseline_ms']:.2f} | {c['speedup']:.2f}× | {flop} |")
    return "\n".join(out) + "\n"


def machine_line(data: dict) -> str:
    m = data["machine"]
    keys = ("date", "device", "gpu", "platform", "cpu_count", "torch_threads", "python", "torch", "triton",
            "load_average_1min", "omp_wait_policy")
    line = "machine: " + ", ".join(f"{k} {m[k]}" for k in keys if m.get(k) is not None)
    if m.get("elapsed_s") is not None:
        line += f", wall {m['elapsed_s']:.0f} s"
    return line


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("model", "kernels"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in argv[1:]:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        print(f"<!-- generated by docs/results/data/tables.py {argv[0]} {path} -->")
        print(machine_line(data) + "\n")
        print(model_tables(data) if argv[0] == "model" else kernel_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

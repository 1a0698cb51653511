"""Render the "compiled decode step" tables of docs/results/model-speed.md from the JSON that
``cram bench model --modes decode --json`` wrote (issue 22). Every number printed is computed here
from the JSON; nothing is typed by hand.

    python3 docs/results/data/decode_compiled.py docs/results/data/decode-compiled-w64.json [...]
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction

RHO = 1 / 64


def _rho(r):
    if r is None:
        return ""
    f = Fraction(r).limit_denominator(1024)
    return f" ρ={f}" if f else " ρ=0 (never attends)"


def _us(cases, model, t_len, rho=None):
    for c in cases:
        if c["model"] == model and c["T"] == t_len and c["us_per_token"] is not None:
            if rho is None or (c["rho"] is not None and abs(c["rho"] - rho) < 1e-12):
                return c["us_per_token"]
    return None


def render(path: str) -> str:
    data = json.load(open(path))
    cfg, machine = data["config"], data["machine"]
    cases = [c for c in data["cases"] if c["mode"] == "decode"]
    ts = sorted({c["T"] for c in cases})
    rows = sorted({(c["model"], c["rho"]) for c in cases}, key=lambda k: (k[0] != "cram", k[0], -(k[1] or 0)))
    sizes = cfg.get("sizes") or [[cfg.get("d_model"), None]]  # newer bench JSON: (width, vocab) pairs
    width = ", ".join(str(w) for w, _ in sizes)
    out = [f"`{path}`: width {width}, pattern {cfg.get('pattern')}, {cfg.get('decode_steps')} decode steps, "
           f"{cfg.get('repeats')} repeats, {'compiled step' if cfg.get('compiled', False) else 'eager step'}, "
           f"date {machine.get('date')}", "",
           "µs per token (median of the repeats):", "",
           "| model | " + " | ".join(f"T={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]  # fmt: skip
    for model, rho in rows:
        cells = [_us(cases, model, t, rho) for t in ts]
        out.append(f"| {model}{_rho(rho)} | " + " | ".join("–" if v is None else f"{v:.1f}" for v in cells) + " |")
    methods = sorted({c["method"].split("; ", 1)[-1] for c in cases if c["method"]})
    out += ["", "Steps: " + "; ".join(methods[:6]), ""]
    out += ["Decode at ρ=1/64: the measured row (1 of its 64 timed steps attends) "
            "and the expectation `fixed + (ρ=1 − fixed)/64` from the never-attending and always-attending rows; "
            "speed-up = hybrid µs / cram µs:", "",
            "| T | cram ρ=1/64 measured | expected | hybrid (S+G) | speed-up measured | speed-up expected | "
            "dense hybrid (S+A, ρ=1) | transformer |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in ts:
        meas, fixed, full = _us(cases, "cram", t, RHO), _us(cases, "cram", t, 0.0), _us(cases, "cram", t, 1.0)
        hyb, dense, tr = _us(cases, "hybrid", t), _us(cases, "dense", t), _us(cases, "transformer", t)
        exp = None if fixed is None or full is None else fixed + (full - fixed) * RHO
        f = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        r = lambda a, b: "–" if a is None or b is None else f"{a / b:.2f}×"  # noqa: E731
        out.append(f"| {t} | {f(meas)} | {f(exp)} | {f(hyb)} | {r(hyb, meas)} | {r(hyb, exp)} | {f(dense)} | {f(tr)} |")
    big = max(ts)
    hyb, meas = _us(cases, "hybrid", big), _us(cases, "cram", big, RHO)
    fixed = [_us(cases, "cram", t, 0.0) for t in ts]
    out += ["", f"Issue 22 targets in this run: decode at T={big}, ρ=1/64 against the plain hybrid: "
            f"{'–' if hyb is None or meas is None else f'{hyb / meas:.2f}×'} (target ≥ 8×); fixed cost (ρ=0 row): "
            + ", ".join("–" if v is None else f"{v:.1f} µs" for v in fixed)
            + " at T=" + ", ".join(map(str, ts)) + " (target ≤ 40 µs at width 64)."]  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print("\n".join(render(p) for p in sys.argv[1:]))

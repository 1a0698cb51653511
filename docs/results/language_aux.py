"""Tables of docs/results/language.md, "The layer's own losses" (issue 24), from run folders.

    python docs/results/language_aux.py runs/k0_dense_noaux runs/k0_dense_iso25 ... [--json out.json]

Per run: the run's router and loss settings (from its config.toml), the final validation bits per
byte (text runs) or acc_r / acc_e / rho_q (SRCD runs), rho_all, the jump guard's flagged steps and
the wall time; bpb at a few intermediate steps shows the curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CURVE_STEPS = (100, 200, 400)


def losses(r: dict, t: dict, aux_off: bool) -> str:
    if r.get("name") == "none":
        return "- (SSM only)"
    if aux_off:
        return "task loss alone"
    return f"{r.get('aux_grad', 'shared')}, share {r.get('aux_share', 1.0)}" + (", clip apart" if t.get("clip_apart") else "")


def row(folder: Path) -> dict:
    cfg = tomllib.loads((folder / "config.toml").read_text())
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics = [m for m in metrics if "event" not in m]
    last = metrics[-1]
    r, t = cfg.get("router", {}), cfg.get("train", {})
    aux_off = all(float(t.get(k, 1.0)) == 0.0 for k in ("epi_weight", "sem_weight", "distill_weight"))
    out = {"run": folder.name, "data": Path(cfg.get("text", {}).get("data", "")).name or cfg.get("task"),
           "seed": t.get("seed"), "router": r.get("name"), "tau": r.get("tau"),
           "losses": losses(r, t, aux_off),
           "step": last["step"], "bpb": last.get("bpb"), "rho_all": last.get("rho_all"),
           "acc_r": last.get("acc_r"), "acc_e": last.get("acc_e"), "rho_q": last.get("rho_q"),
           "val_jumps": [m["step"] for m in metrics if m.get("val_jump")], "wall_s": last.get("wall_s")}  # fmt: skip
    by_step = {m["step"]: m for m in metrics}
    out["curve"] = {s: by_step[s].get("bpb") for s in CURVE_STEPS if s in by_step}
    return out


def fmt(v, nd=3) -> str:
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"),
                    help="largest difference of val_loss between two runs over their common evaluations")  # fmt: skip
    args = ap.parse_args()
    if args.compare:
        a, b = ({m["step"]: m["val_loss"] for m in map(json.loads, (f / "metrics.jsonl").read_text().splitlines())
                 if "val_loss" in m} for f in args.compare)  # fmt: skip
        common = sorted(set(a) & set(b))
        print(f"{len(common)} common evaluations; max |val_loss difference| = "
              f"{max(abs(a[s] - b[s]) for s in common):.3g} nats")  # fmt: skip
    if not args.runs:
        return
    rows = [row(f) for f in args.runs]
    print("| run | data | seed | router | losses | bpb | rho_all | bpb at " + " / ".join(map(str, CURVE_STEPS))
          + " | val_jumps | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["bpb"] is None:
            continue
        router = r["router"] + (f" (tau {r['tau']})" if r["router"] == "cram" else "")
        curve = " / ".join(fmt(r["curve"].get(s)) for s in CURVE_STEPS)
        print(f"| {r['run']} | {r['data']} | {r['seed']} | {router} | {r['losses']} | {fmt(r['bpb'], 4)} | "
              f"{fmt(r['rho_all'])} | {curve} | {r['val_jumps']} | {fmt(r['wall_s'], 0)} |")  # fmt: skip
    srcd = [r for r in rows if r["bpb"] is None]
    if srcd:
        print("\n| run | losses | step | acc_r | acc_e | rho_q | rho_all | wall s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in srcd:
            print(f"| {r['run']} | {r['losses']} | {r['step']} | {fmt(r['acc_r'])} | {fmt(r['acc_e'])} | "
                  f"{fmt(r['rho_q'])} | {fmt(r['rho_all'])} | {fmt(r['wall_s'], 0)} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Prefill through the routed step (issue 22, docs/results/model-speed.md): routed CRAM against the
plain hybrid, three ways, each one ``cram bench model --modes prefill`` run (cram at the forced
rho and the hybrid interleaved repeat by repeat, FLOPs counted by gpu/bench/flops.py):

- ``compiled``: the sync-free routed prefill under ``torch.compile`` (the bench's default);
- ``uncompiled``: the same prefill run eagerly;
- ``eager``: ``model.prefill`` (the bench's ``--eager``).

``run`` times all six cases (two models x three ways) interleaved repeat by repeat in one process
at each T (the bench's ``time_cases``), so the three ways are compared under the same load; the
older JSON files (``"variants"``: one bench run per way, one after the other) print too.

    # run (pinned, 1 thread), writing the JSON:
    python docs/results/data/prefill_routed.py run OUT.json --t 4096,16384 --width 64 --repeats 5
    # print the tables from the JSON (every number computed here):
    python3 docs/results/data/prefill_routed.py table OUT.json
    # where the time goes: torch.profiler over one compiled prefill of each model
    python docs/results/data/prefill_routed.py profile --t 16384 --width 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone

RHO = 1 / 64
VARIANTS = {"compiled": {"compiled": True, "fast_prefill": True}, "uncompiled": {"compiled": False, "fast_prefill": True},
            "eager": {"compiled": False, "fast_prefill": False}}  # fmt: skip


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(out: str, t_values, width: int, repeats: int) -> None:
    """Every (model, way) case interleaved at each T; FLOPs counted per case after the timing."""
    import dataclasses

    import torch

    from cramkit.gpu.bench.common import routed_mask
    from cramkit.gpu.bench.measure import time_cases
    from cramkit.gpu.bench.model import (
        Case,
        ModelBenchConfig,
        _prefill_case,
        build_models,
        count_case,
    )
    from cramkit.gpu.bench.prefill_case import prefill_case

    torch.set_num_threads(1)
    cfg = ModelBenchConfig(t_values=tuple(t_values), rhos=(RHO,), models=("cram", "hybrid"), modes=("prefill",),
                           threads=1, repeats=repeats, sizes=((width, 256),), memory=False, device="cpu")  # fmt: skip
    models = build_models(cfg, "cpu")
    for m in models.values():
        m.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    doc = {"command": " ".join(sys.argv), "config": dataclasses.asdict(cfg), "rows": [], "load": [_uptime()]}
    warm: set[str] = set()
    for t_len in sorted(t_values):
        tokens = torch.randint(0, 256, (1, t_len), generator=gen)
        route = routed_mask(1, t_len, RHO, gen)
        cases = []
        for name, model in models.items():
            r = route if name == "cram" else None
            for way in VARIANTS:
                if way == "eager":
                    setup, fn, method = _prefill_case(name, model, tokens, r)
                    plain = None
                else:
                    setup, fn, method, plain = prefill_case(model, tokens, r, compiled=way == "compiled")
                cases.append(Case("prefill", f"{name}/{way}", None, setup, fn, t_len, method, model, r, plain))
        ms = time_cases(cases, repeats, "cpu", warm)
        for case in cases:
            name, way = case.model.split("/")
            doc["rows"].append({"model": name, "way": way, "T": t_len, "us_per_token": ms[case.label] * 1e3 / t_len,
                                "flops_per_token": count_case(case).total / t_len, "method": case.method})  # fmt: skip
        doc["load"].append(_uptime())
        print(f"T={t_len} done", flush=True)
    doc["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)


def run_apart(out: str, t_values, width: int, repeats: int) -> None:
    """The first runs' method: one bench run per way, one after the other."""
    import dataclasses

    import torch

    from cramkit.gpu.bench.model import ModelBenchConfig
    from cramkit.gpu.bench.model import run as bench

    torch.set_num_threads(1)
    doc = {"command": " ".join(sys.argv), "variants": {}}
    for name, kw in VARIANTS.items():
        cfg = ModelBenchConfig(t_values=tuple(t_values), rhos=(RHO,), models=("cram", "hybrid"), modes=("prefill",),
                               threads=1, repeats=repeats, sizes=((width, 256),), memory=False, device="cpu", **kw)  # fmt: skip
        before = _uptime()
        res = bench(cfg)
        doc["variants"][name] = {"load_before": before, "load_after": _uptime(), "config": dataclasses.asdict(cfg),
                                 "machine": res.machine, "cases": res.cases,
                                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip
        print(name, "done", flush=True)
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)


def _case(cases, model, t_len):
    return next(c for c in cases if c["model"] == model and c["T"] == t_len)


def table(path: str) -> str:
    doc = json.load(open(path))
    if "rows" in doc:
        return table_interleaved(path, doc)
    variants = doc["variants"]
    eager = variants.get("eager")
    ts = sorted({c["T"] for v in variants.values() for c in v["cases"]})
    out = [f"`{path}`: `{doc['command']}`", ""]
    for name, v in variants.items():
        out.append(f"- {name}: {v['date']}; load `{v['load_before']}` / `{v['load_after']}`")
    out += ["", "µs per token (median) and MFLOP per token; speed-up = hybrid µs / cram µs; predicted = hybrid FLOPs / "
            "cram FLOPs of the same run; quotient = measured / predicted; ideal = against the FLOPs of routed attention "
            "over exactly the causal pairs and the memory at the non-routed rows only (the eager run's count):", "",
            "| prefill | T | cram µs | hybrid µs | cram MFLOP | hybrid MFLOP | speed-up measured | predicted | quotient | quotient (ideal) |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, v in variants.items():
        for t_len in ts:
            c, h = _case(v["cases"], "cram", t_len), _case(v["cases"], "hybrid", t_len)
            meas = h["us_per_token"] / c["us_per_token"]
            pred = h["flops_per_token"] / c["flops_per_token"]
            ideal = ""
            if eager is not None:
                ce, he = _case(eager["cases"], "cram", t_len), _case(eager["cases"], "hybrid", t_len)
                ideal = f"{meas / (he['flops_per_token'] / ce['flops_per_token']):.2f}"
            out.append(f"| {name} | {t_len} | {c['us_per_token']:.2f} | {h['us_per_token']:.2f} | "
                       f"{c['flops_per_token'] / 1e6:.4f} | {h['flops_per_token'] / 1e6:.4f} | {meas:.2f}× | {pred:.2f}× | "
                       f"{meas / pred:.2f} | {ideal} |")  # fmt: skip
    out += ["", "Methods: " + "; ".join(sorted({f"{c['model']}: {c['method']}" for v in variants.values()
                                                for c in v["cases"]}))]  # fmt: skip
    return "\n".join(out)


def table_interleaved(path: str, doc: dict) -> str:
    rows = doc["rows"]
    ts = sorted({r["T"] for r in rows})
    pick = {(r["model"], r["way"], r["T"]): r for r in rows}
    out = [f"`{path}`: `{doc['command']}`, {doc['date']}; load (`uptime`, before and after each T): "
           + " / ".join(f"`{u}`" for u in doc["load"]), "",
           "µs per token (median of the interleaved repeats) and MFLOP per token; speed-up = hybrid µs / cram µs "
           "(the same way); predicted = hybrid FLOPs / cram FLOPs; quotient = measured / predicted; quotient (ideal) "
           "= against the eager prefill's FLOPs (routed attention over exactly the causal pairs, the memory at the "
           "non-routed rows only):", "",
           "| prefill | T | cram µs | hybrid µs | cram MFLOP | hybrid MFLOP | speed-up measured | predicted | quotient | quotient (ideal) |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for way in VARIANTS:
        for t_len in ts:
            c, h = pick[("cram", way, t_len)], pick[("hybrid", way, t_len)]
            ce, he = pick[("cram", "eager", t_len)], pick[("hybrid", "eager", t_len)]
            meas = h["us_per_token"] / c["us_per_token"]
            pred = h["flops_per_token"] / c["flops_per_token"]
            ideal = he["flops_per_token"] / ce["flops_per_token"]
            out.append(f"| {way} | {t_len} | {c['us_per_token']:.2f} | {h['us_per_token']:.2f} | "
                       f"{c['flops_per_token'] / 1e6:.4f} | {h['flops_per_token'] / 1e6:.4f} | {meas:.2f}× | {pred:.2f}× | "
                       f"{meas / pred:.2f} | {meas / ideal:.2f} |")  # fmt: skip
    out += ["", "Methods: " + "; ".join(f"{r['model']} T={r['T']}: {r['method']}" for r in rows if r["way"] != "eager")]
    return "\n".join(out)


def profile(t_len: int, width: int) -> None:
    import torch
    from torch.profiler import profile as torch_profile

    from cramkit.gpu.bench.common import routed_mask
    from cramkit.gpu.bench.model import ModelBenchConfig, build_models
    from cramkit.gpu.bench.prefill_case import prefill_case

    torch.set_num_threads(1)
    cfg = ModelBenchConfig(t_values=(t_len,), rhos=(RHO,), models=("cram", "hybrid"), sizes=((width, 256),), device="cpu")
    models = build_models(cfg, "cpu")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (1, t_len), generator=gen)
    route = routed_mask(1, t_len, RHO, gen)
    print(_uptime())
    for name, model in models.items():
        model.eval()
        setup, timed, method, _ = prefill_case(model, tokens, route if name == "cram" else None, compiled=True)
        timed(setup())
        args = setup()
        with torch_profile() as prof:
            timed(args)
        print(f"{name} (T={t_len}, width {width}; {method})")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    print(_uptime())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("run", "run-apart", "table", "profile"))
    ap.add_argument("path", nargs="?")
    ap.add_argument("--t", default="4096,16384")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    t_values = [int(x) for x in a.t.split(",")]
    if a.what == "run":
        run(a.path, t_values, a.width, a.repeats)
    elif a.what == "run-apart":
        run_apart(a.path, t_values, a.width, a.repeats)
    elif a.what == "table":
        print(table(a.path))
    else:
        profile(t_values[0], a.width)


if __name__ == "__main__":
    main()

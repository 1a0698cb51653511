"""One adapter per claim: the library calls the individual commands make, numbers out.

Each ``*_step(ctx)`` function calls the same library function as the command named in its
docstring and returns a JSON-able dict of what it measured (read from the library's return
value). They are kept thin and apart so that each can be re-pointed at its command's
``run(config, progress) -> Result`` (issue #11) without touching the orchestration
(:mod:`cramkit.gpu.reproduce.runner`) or the verdicts (:mod:`cramkit.gpu.reproduce.report`).

Training runs live in ``DIR/runs/<name>``; :func:`ensure_run` resumes an interrupted one from its
last checkpoint (``cram train --resume``) and reuses a finished one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cramkit import runs as R
from cramkit.gpu.reproduce.scales import Scale
from cramkit.io import atomic_write_text

GPT2_ENV = "CRAM_GPT2_DIR"


@dataclass(frozen=True)
class Context:
    """What a step may read: the output folder, the scale, the GPT-2 folder (or None), and the
    progress callback already bound to the step's stage (``tick(done, total)``)."""

    out: Path
    scale: Scale
    gpt2: str | None
    tick: Callable[[float, float], None]

    @property
    def runs(self) -> Path:
        return self.out / "runs"


# ------------------------------------------------------------------------------------------------
# training runs (cram train)
# ------------------------------------------------------------------------------------------------


def run_config(scale: Scale, *, router: str | None = None, seed: int = 0, preset: str | None = None,
               sets: tuple[str, ...] | None = None):
    """The RunConfig ``cram train --preset P --set ...`` builds for one run of this scale."""
    from cramkit.gpu.run.config import load_config

    extra = [f"train.seed={seed}", f"train.world_seed={seed}"]
    if router is not None:
        extra.append(f'router.name="{router}"')
    return load_config(None, [*(scale.train_sets if sets is None else sets), *extra], preset=preset or scale.preset)


def ensure_run(run_dir: Path, cfg, tick: Callable[[float, float], None]) -> dict[str, Any]:
    """``cram train --out run_dir`` with ``cfg``: reuse a finished run, resume an interrupted one
    (``--resume``), and start over when the folder holds a run of another configuration."""
    from cramkit.gpu.run.train import train

    config_file = run_dir / R.CONFIG
    if config_file.is_file() and config_file.read_text(encoding="utf-8") != cfg.to_toml():
        shutil.rmtree(run_dir)  # a run of an older configuration of this step: start over
    steps = cfg.train.steps

    def on_eval(m: dict) -> None:
        tick(m["step"], steps)

    if (run_dir / R.SUMMARY).is_file() and (run_dir / R.LAST).is_file():  # finished: read it back
        summary = json.loads((run_dir / R.SUMMARY).read_text(encoding="utf-8"))
        lines = R.metrics_path(run_dir).read_text(encoding="utf-8").splitlines()
        metrics = [json.loads(line) for line in lines if line.strip()]
    else:  # resume from the last checkpoint (cram train --resume), or start
        resume = run_dir if (run_dir / R.LAST).is_file() else None
        result = train(None if resume else cfg, None if resume else run_dir, resume=resume, on_eval=on_eval)
        summary, metrics = result.summary, result.metrics
    tick(steps, steps)
    return {"dir": str(run_dir), "summary": summary, "metrics": metrics}


def _srcd_runs(ctx: Context, routers: tuple[str, ...]) -> dict[tuple[str, int], dict]:
    """Train (or reuse) the cram router and ``routers`` for every seed of the scale."""
    out = {}
    names = [(r, s) for r in ("cram", *routers) for s in ctx.scale.seeds]
    for i, (router, seed) in enumerate(names):
        cfg = run_config(ctx.scale, router=router, seed=seed)
        out[(router, seed)] = ensure_run(ctx.runs / f"{router}-seed{seed}", cfg,
                                         lambda d, t, i=i: ctx.tick(i + d / max(t, 1), len(names)))
    return out


def cram_run_dirs(ctx: Context) -> list[Path]:
    """The cram router's run folders, one per seed (trained or resumed as needed)."""
    return [Path(r["dir"]) for r in _srcd_runs(ctx, ()).values()]


# ------------------------------------------------------------------------------------------------
# static-bound (cram bound)
# ------------------------------------------------------------------------------------------------


def static_bound_step(ctx: Context) -> dict[str, Any]:
    """``cram bound``: :func:`cramkit.sim.boundcheck.run` with the scale's BoundConfig."""
    from cramkit.sim.boundcheck import BoundConfig, run

    res = run(BoundConfig(**ctx.scale.bound), lambda _stage, done, total: ctx.tick(done, total)).to_json()
    cr = res["stream"]["cr"]
    k = "CR_2" if "CR_2" in cr else sorted(cr)[0]
    static = {n: r for n, r in res["routers"].items() if r["static"] and r["held"]}
    example = "RAND_0.5" if "RAND_0.5" in static else sorted(static)[0]
    ctl = res["controls"]
    return {
        "criteria": res["criteria"],
        "controls_pass": all(c["pass"] for c in ctl.values()),
        "controls_matched": sum(c["pass"] for c in ctl.values()),
        "controls_total": len(ctl),
        "static_held": len(static),
        "static_passed": sum(r["pass"] for r in static.values()),
        "example": {"router": example, **{f: static[example][f] for f in ("slope", "ci", "bound")}},
        "stream": {"K": int(k.split("_")[1]), "cr_cum": cr[k]["A_rec_cum_T"], "oracle_cum": res["stream"]["oracle_A_rec_cum_T"],
                   "T": res["stream"]["T"], "streams": res["config"]["seeds"]},  # fmt: skip
        "seeds": res["config"]["seeds"],
    }


# ------------------------------------------------------------------------------------------------
# accuracy-budget (cram train + cram eval)
# ------------------------------------------------------------------------------------------------


def accuracy_budget_step(ctx: Context) -> dict[str, Any]:
    """``cram train`` for the cram router and the scale's static baselines (matched budget, the
    preset's ``router.budget``), then ``cram eval --split iid`` and ``--split fresh``:
    :func:`cramkit.gpu.run.eval.evaluate_checkpoints`."""
    from cramkit.gpu.run.eval import evaluate_checkpoints

    runs = _srcd_runs(ctx, ctx.scale.baselines)
    keep = ("router", "acc", "acc_r", "acc_e", "rho_q", "rho_all", "phi", "phi_model", "E_rec", "rec_total",
            "epi_total", "n_sequences", "floor_rho_q")  # fmt: skip
    rows = {}
    for split in ("iid", "fresh"):
        paths = [str(Path(r["dir"]) / R.LAST) for r in runs.values()]
        res = evaluate_checkpoints(paths, split, sequences=ctx.scale.eval_sequences)
        rows[split] = [{"seed": seed, **{k: row.get(k) for k in keep}} for (_r, seed), row in zip(runs, res["rows"])]
    return {"rows": rows, "seeds": list(ctx.scale.seeds), "baselines": list(ctx.scale.baselines),
            "eval_sequences": ctx.scale.eval_sequences}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# attention-fall and gamma (cram fit-gamma on the cram runs)
# ------------------------------------------------------------------------------------------------


def attention_fall_step(ctx: Context) -> dict[str, Any]:
    """The cram runs' metrics.jsonl (E_rec, rho_all over training) and ``cram fit-gamma RUNS``'s
    transition (:func:`cramkit.theory.fit.analysis.run`, no bootstrap)."""
    from cramkit.theory.fit.analysis import FitConfig, run

    runs = list(_srcd_runs(ctx, ()).values())
    cfg = run_config(ctx.scale)
    fit = run(FitConfig(runs=tuple(r["dir"] for r in runs), models=("M1", "M2", "M5", "M6"), resamples=0,
                        with_human=False)).to_json()
    curves = [{"seed": s, "step": [m["step"] for m in r["metrics"]], "E_rec": [m.get("E_rec") for m in r["metrics"]],
               "rho_all": [m.get("rho_all") for m in r["metrics"]]} for s, r in zip(ctx.scale.seeds, runs)]  # fmt: skip
    tr = fit["transition"]
    return {
        "curves": curves,
        "reduction_rho_all": [r["summary"].get("reduction_rho_all") for r in runs],
        "reduction_rho_q": [r["summary"].get("reduction_rho_q") for r in runs],
        "transition_step": [r["summary"].get("transition_step") for r in runs],
        "task_ratio": cfg.srcd.n / cfg.srcd.m_e,
        "task_ratio_q": (cfg.srcd.m_r + cfg.srcd.m_e) / cfg.srcd.m_e,
        "fit": {k: tr[k] for k in ("t_c", "W", "W_model", "delta_aic_logistic_vs_power", "sharp", "reason")},
        "seeds": list(ctx.scale.seeds),
    }


def gamma_step(ctx: Context) -> dict[str, Any]:
    """``cram fit-gamma RUNS`` with the bundled human reference:
    :func:`cramkit.theory.fit.analysis.run`."""
    from cramkit.theory.fit.analysis import FitConfig, run

    dirs = [str(p) for p in cram_run_dirs(ctx)]
    ctx.tick(0, 1)
    res = run(FitConfig(runs=tuple(dirs), models=tuple(ctx.scale.fit["models"]), resamples=ctx.scale.fit["resamples"],
                        with_human=True)).to_json()
    ctx.tick(1, 1)
    m1 = next(f for f in res["fits"] if f["model"] == res["primary_model"])
    g = res["gamma"] or {}
    alpha = run_config(ctx.scale).srcd.alpha
    return {
        "best_model": res["best_model"],
        "primary_model": res["primary_model"],
        "gamma": g.get("value"),
        "gamma_ci": g.get("ci"),
        "gamma_at_bound": bool(m1["params"]["gamma"]["at_bound"]) if "gamma" in m1["params"] else None,
        "resamples": g.get("n_resamples"),
        "sharp": res["transition"]["sharp"],
        "human": [{"dataset": h["dataset"], "a": h["a"]} for h in res["human_reference"]],
        "alpha": alpha,
        "predicted_gamma": 1 - 1 / alpha if alpha > 1 else None,
        "seeds": list(ctx.scale.seeds),
    }


# ------------------------------------------------------------------------------------------------
# transfer (cram transfer)
# ------------------------------------------------------------------------------------------------


def transfer_step(ctx: Context) -> dict[str, Any]:
    """``cram transfer RUNS/cram-seed0/last.safetensors``: :func:`cramkit.gpu.transfer.transfer_report`."""
    from cramkit.gpu.transfer import TransferConfig, transfer_report

    ckpt = cram_run_dirs(ctx)[0] / R.LAST
    n_splits = 1 + len(ctx.scale.transfer["overlaps"]) * 2

    def progress(stage: str, done: float, total: float) -> None:
        ctx.tick(min(done / max(total, 1), 1.0), 1.0)

    res = transfer_report(ckpt, TransferConfig(**ctx.scale.transfer), progress)
    rows = [{k: r.get(k) for k in ("s", "s_eff", "R", "R_ci", "R_pred_slots", "acc")} for r in res["transfer"]]
    return {"rows": rows, "guard": {k: res["guard"].get(k) for k in ("ok", "R0", "R0_ci", "acc0", "acc_iid")},
            "conflict": [{k: c.get(k) for k in ("s", "acc_shared")} for c in res["conflict"]],
            "iid_R": res["iid"]["R"], "sequences": res["sequences"], "splits": n_splits,
            "seeds": [ctx.scale.seeds[0]]}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# redundancy (cram redundancy)
# ------------------------------------------------------------------------------------------------


def _redundancy_config(ctx: Context):
    from cramkit.gpu.redundancy import RedundancyConfig

    return RedundancyConfig(**ctx.scale.redundancy)


def _gpt2(ctx: Context) -> dict[str, Any]:
    """``cram redundancy GPT2_DIR`` when a local GPT-2 folder was given, else why not."""
    from cramkit.errors import CramError
    from cramkit.gpu.redundancy import measure_path

    if not ctx.gpt2:
        return {"measured": False, "reason": f"no local GPT-2: give --gpt2 DIR or set {GPT2_ENV} (weights are never downloaded)"}
    try:
        res = measure_path(ctx.gpt2, config=_redundancy_config(ctx))
    except (CramError, ImportError) as exc:
        return {"measured": False, "reason": f"GPT-2 at {ctx.gpt2} could not be measured: {exc}"}
    h = res["headline"]
    return {"measured": True, "dir": ctx.gpt2, "fraction": h["fraction"], "ci": h["ci"],
            "budget_binding": h.get("budget_binding"), "tau": h.get("tau")}  # fmt: skip


def _text_corpus(ctx: Context) -> tuple[Path, Path]:
    """The bundled redundancy corpus split by document: every other document to train the small
    text model on, the rest held out for the measurement."""
    from cramkit.gpu.redundancy.corpus import read_documents

    docs = read_documents(None)
    sep = "\n<|endoftext|>\n"  # the corpus reader's document separator
    train_path, held_path = ctx.out / "data" / "text_train.txt", ctx.out / "data" / "text_heldout.txt"
    atomic_write_text(train_path, sep.join(d for i, d in enumerate(docs) if i % 2))
    atomic_write_text(held_path, sep.join(d for i, d in enumerate(docs) if not i % 2))
    return train_path, held_path


def redundancy_step(ctx: Context) -> dict[str, Any]:
    """GPT-2 when given (:func:`cramkit.gpu.redundancy.measure_path` on the folder), then a small
    byte-level model trained here (``cram train --task text``) measured over its checkpoints
    (``cram redundancy RUN --text HELDOUT``: the trajectory)."""
    from cramkit.gpu.redundancy import measure_path

    gpt2 = _gpt2(ctx)
    train_path, held_path = _text_corpus(ctx)
    sets = (*ctx.scale.text_sets, f'text.data="{train_path}"')
    cfg = run_config(ctx.scale, preset="text", sets=sets)
    run = ensure_run(ctx.runs / "text", cfg, lambda d, t: ctx.tick(0.5 * d / max(t, 1), 1.0))
    res = measure_path(run["dir"], text=str(held_path), tokenizer="bytes", config=_redundancy_config(ctx),
                       progress=lambda stage, d, t: ctx.tick(0.5 + 0.5 * min(d / max(t, 1), 1.0), 1.0))  # fmt: skip
    traj = [{k: r[k] for k in ("step", "headline", "headline_ci", "mean_ablation_dnll", "budget_binding")}
            for r in res["trajectory"]]  # fmt: skip
    return {"gpt2": gpt2, "text_model": {"trajectory": traj, "trend": res["trend"],
            "bpb": run["summary"].get("bpb")}, "seeds": [0]}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# compute (cram bench)
# ------------------------------------------------------------------------------------------------


def bench_model_summary(rows: list[dict], t_len: int, rho: float, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Per-token speedups of routed cram (forced ``rho``) at context ``t_len`` (and ``size``, width
    and vocabulary, when the rows have sizes) from ``cram bench model`` rows: against the plain
    hybrid in each mode with the FLOP-predicted ratio beside each, against CRAM rho=1 (``dense``)
    as before, and the training step against the no-attention floor and the transformer."""
    def at(r):
        return r["T"] == t_len and (size is None or (r.get("width"), r.get("vocab")) == tuple(size))

    alias = {"dense": "cram-rho1"}
    us = {(r["mode"], alias.get(r["model"], r["model"]), r["rho"]): r["us_per_token"] for r in rows if at(r)}
    fl = {(r["mode"], alias.get(r["model"], r["model"]), r["rho"]): r.get("flops_per_token") for r in rows if at(r)}

    def ratio(mode: str, base: str, table=us) -> float | None:
        a, b = table.get((mode, "cram", rho)), table.get((mode, base, None))
        return b / a if a and b else None

    floor = us.get(("train", "none", None))
    cram_train = us.get(("train", "cram", rho))
    out = {"T": t_len, "rho": rho, "speedup": ratio("train", "cram-rho1"), "prefill_speedup": ratio("prefill", "cram-rho1"),
           "decode_speedup": ratio("decode", "cram-rho1"), "vs_transformer": ratio("train", "transformer"),
           "over_floor": cram_train / floor if cram_train and floor else None}  # fmt: skip
    if size is not None:
        out["width"], out["vocab"] = size
    for mode in ("train", "prefill", "decode"):
        out[f"{mode}_vs_hybrid"] = ratio(mode, "hybrid")
        out[f"{mode}_vs_hybrid_flops"] = ratio(mode, "hybrid", fl)
    return out


def _bench_sizes(rows: list[dict], bcfg) -> list[dict[str, Any]]:
    return [bench_model_summary(rows, max(bcfg.t_values), min(bcfg.rhos), size) for size in bcfg.sizes]


def compute_step(ctx: Context) -> dict[str, Any]:
    """``cram bench kernels``: :func:`cramkit.gpu.bench.bench_kernels`; and ``cram bench model``
    at width 64 and at a real width when the scale asks for them."""
    from cramkit.errors import CramError
    from cramkit.gpu.bench import bench_kernels

    kw = dict(ctx.scale.bench)
    res = bench_kernels(**kw, progress=lambda _stage, d, t: ctx.tick(d, t))
    cases = res["cases"]
    att = [c for c in cases if c["op"] == "routed_attention" and c["baseline"] == "sdpa_dense"]
    steps = [c for c in cases if c["op"] == "model_step" and c["rho"] < 1]
    kernel = min(att, key=lambda c: (c["rho"], -c["T"])) if att else None
    model = min(steps, key=lambda c: c["rho"]) if steps else None
    pick = ("T", "rho", "ms", "baseline_ms", "speedup")
    out = {"kernel": {k: kernel[k] for k in pick} if kernel else None,
           "model_step": {k: model[k] for k in pick} if model else None,
           "machine": res["machine"], "bench_model": None, "bench_model_sizes": [],
           "bench_model_reason": "not measured: needs cram bench model"}  # fmt: skip
    from cramkit.gpu.bench.model import ModelBenchConfig
    from cramkit.gpu.bench.model import run as bench_model_run

    for which in ("bench_model", "bench_model_real"):
        settings = getattr(ctx.scale, which, None)
        if not settings:
            continue
        try:
            bcfg = ModelBenchConfig(**settings)
            rows = bench_model_run(bcfg, lambda _stage, d, t: ctx.tick(d, t)).to_json()["cases"]
        except CramError as exc:
            out["bench_model_reason"] = f"not measured: cram bench model could not run ({exc})"
            continue
        sizes = _bench_sizes(rows, bcfg)
        out["bench_model_sizes"] += sizes
        if which == "bench_model":
            out["bench_model"] = sizes[0]
            out["bench_model_reason"] = None
    return out


# ------------------------------------------------------------------------------------------------
# the table the runner uses
# ------------------------------------------------------------------------------------------------


def _settings(*fields: str) -> Callable[[Scale, str | None], dict]:
    def settings(scale: Scale, gpt2: str | None) -> dict:
        return {f: getattr(scale, f) for f in fields}

    return settings


def _scale_and_gpt2(scale: Scale, gpt2: str | None) -> dict:
    return {**{f: getattr(scale, f) for f in ("text_sets", "redundancy")}, "gpt2": gpt2}


_TRAIN = ("preset", "train_sets", "seeds")


@dataclass(frozen=True)
class Step:
    """One claim's step: the settings its cache key hashes, and the adapter that measures it."""

    claim: str
    settings: Callable[[Scale, str | None], dict]
    run: Callable[[Context], dict]


STEPS: Mapping[str, Step] = {
    "static-bound": Step("static-bound", _settings("bound"), static_bound_step),
    "accuracy-budget": Step("accuracy-budget", _settings(*_TRAIN, "baselines", "eval_sequences"), accuracy_budget_step),
    "attention-fall": Step("attention-fall", _settings(*_TRAIN), attention_fall_step),
    "gamma": Step("gamma", _settings(*_TRAIN, "fit"), gamma_step),
    "transfer": Step("transfer", _settings(*_TRAIN, "transfer"), transfer_step),
    "redundancy": Step("redundancy", _scale_and_gpt2, redundancy_step),
    "compute": Step("compute", _settings("bench", "bench_model", "bench_model_real"), compute_step),
}

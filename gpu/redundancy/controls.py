"""The patched TEST passes and the controls built on them (docs/redundancy.md, "Controls"):

* C5, patching: ``o_t <- o_hat_t`` at the flagged positions of all layers jointly, for each
  ``tau`` of the sweep with the oracle flags ``e_t < tau``; the headline is the largest flagged
  fraction whose ΔNLL stays within the budget, with a bootstrap CI over TEST documents that redoes
  the choice of ``tau`` in each resample; optionally each layer alone at the headline ``tau``;
  and two references: every position patched by the patch predictor, and by the constant;
* C6, the deployable gate: the same sweep with the logistic gates' online flags;
* C7, cost: predictor and gate FLOPs against the attention FLOPs they replace.

Every pass shares one :class:`PatchContext`; each control returns its own part of the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cramkit.gpu.redundancy.corpus import Split, batches
from cramkit.gpu.redundancy.engine import run
from cramkit.gpu.redundancy.passes import Gates, Predictors, Setup, Tally, eligible, features
from cramkit.theory.stats import percentile_ci, resample_indices

# flag(batch index, layer index in Setup.layers, layer, x (B, T, d)) -> (B, T) bool
FlagFn = Callable[[int, int, int, torch.Tensor], torch.Tensor]


@dataclass
class PatchContext:
    """What every patched pass needs: the setup, the TEST split, the fitted predictors and gates,
    and the clean TEST pass (its NLL and the patch predictor's oracle error per batch)."""

    s: Setup
    split: Split
    preds: Predictors
    gates: Gates
    test: Tally
    done: int = 0  # patched passes of the sweeps finished (progress)

    @property
    def L(self) -> int:
        return len(self.s.layers)

    @property
    def n_sweep_runs(self) -> int:
        return len(self.s.cfg.sweep_taus) * (2 if self.gates else 1)

    def oracle(self, tau: float) -> FlagFn:
        return lambda bi, li, ly, x: self.test.e_store[bi][:, :, li] < tau

    def gate(self, tau: float) -> FlagFn:
        return lambda bi, li, ly, x: self.gates[ly][tau].proba(x) >= 0.5

    @staticmethod
    def everywhere(bi, li, ly, x) -> torch.Tensor:
        return torch.ones(x.shape[:2], dtype=torch.bool)


@dataclass
class PatchRun:
    """Per-document sums of one patched pass (flagged layer-positions, ΔNLL, NLL count and clean
    NLL) and its attention FLOPs saved and in total, for C7."""

    flagged: np.ndarray
    dnll: np.ndarray
    nll_n: np.ndarray
    nll_base: np.ndarray
    saved: float = 0.0
    total_attn: float = 0.0
    n_flag: int = 0

    def summary(self, doc_elig: np.ndarray, L: int) -> tuple[float, float, float | None]:
        """(flagged fraction, ΔNLL per token, ΔNLL relative to the clean NLL)."""
        frac = self.flagged.sum() / max(doc_elig.sum() * L, 1)
        n = self.nll_n.sum()
        dn = self.dnll.sum() / n if n else float("nan")
        base = self.nll_base.sum() / n if n else float("nan")
        return float(frac), float(dn), float(dn / base) if base and math.isfinite(base) else None

    def cost(self, pred_cost: float, gate_cost: float, doc_elig: np.ndarray, L: int) -> dict:
        """C7 for this pass: attention FLOPs saved, and saved net of predictor and gate FLOPs."""
        tot = self.total_attn
        spent = self.n_flag * pred_cost + doc_elig.sum() * L * gate_cost
        return {"saved_fraction": self.saved / tot if tot else None,
                "net_saving": (self.saved - spent) / tot if tot else None}  # fmt: skip


def patched_pass(ctx: PatchContext, flag: FlagFn, *, only_layer: int | None = None,
                 predictor: str | None = None) -> PatchRun:  # fmt: skip
    """One TEST pass with ``o_t <- o_hat_t`` where ``flag`` is True (at eligible positions of the
    measured layers, or of ``only_layer``); ``predictor`` overrides the patch predictor."""
    s = ctx.s
    nd = len(ctx.test.doc_ids)
    out = PatchRun(np.zeros(nd), np.zeros(nd), np.zeros(nd), np.zeros(nd))
    layers = [only_layer] if only_layer is not None else s.layers
    for bi, (tok, valid, bdocs, _s) in enumerate(batches(ctx.split, s.cfg.batch_windows)):
        m = eligible(valid, s.cfg.min_pos)
        flags: dict[int, torch.Tensor] = {}
        patch = _patch_fn(ctx, flag, bi, m, flags, only_layer, predictor or s.cfg.patch_predictor)
        P = run(s.adapter, tok, patch=patch)
        rows = np.array([ctx.test.doc_ids[int(x)] for x in bdocs])
        _add_nll(out, P.nll, ctx.test.nll_clean[bi], valid, m, rows)
        _add_flops(out, s.adapter, m, flags, rows, layers, s.layers)
    return out


def _patch_fn(ctx, flag: FlagFn, bi: int, m, flags: dict, only_layer, pp: str):
    """The engine's patch callable for batch ``bi``; records each layer's flags in ``flags``."""
    s = ctx.s

    def patch(layer, x, o):
        if layer not in s.layers or (only_layer is not None and layer != only_layer):
            return None
        li = s.layers.index(layer)
        f = flag(bi, li, layer, x) & m
        flags[li] = f
        if not bool(f.any()):
            return None
        feats = features(pp, x, s.cfg.local_window)[f]
        o_hat = ctx.preds[layer][pp].predict(feats) @ s.adapter.w_o(layer) + s.adapter.b_o(layer)
        o = o.clone()
        o[f] = o_hat
        return o

    return patch


def _add_nll(out: PatchRun, nll, nll_clean, valid, m, rows) -> None:
    """ΔNLL against the clean pass at eligible positions that predict a valid next token."""
    ok = m.clone()
    ok[:, :-1] &= valid[:, 1:]
    ok[:, -1] = False
    delta = (nll - nll_clean).double()
    for b in range(nll.shape[0]):
        out.dnll[rows[b]] += float(delta[b][ok[b]].sum())
        out.nll_n[rows[b]] += int(ok[b].sum())
        out.nll_base[rows[b]] += float(nll_clean[b][ok[b]].double().sum())


def _add_flops(out: PatchRun, adapter, m, flags: dict, rows, layers: list[int], measured: list[int]) -> None:
    """Attention FLOPs of the batch (8d^2 + 4dt per position and layer, t the keys the layer reads
    there) and those the flagged positions save (4d^2 + 4dt), docs/theory.md §1. ``flags`` is
    keyed by the index into ``measured``; ``layers`` are the layers this pass may patch."""
    B, T = m.shape
    d = adapter.d_model
    keys = {ly: adapter.n_keys(ly, T)[None].expand(B, T) for ly in layers}
    for ly in layers:
        out.total_attn += float(((8 * d * d + 4 * d * keys[ly])[m]).sum())
    for li, f in flags.items():
        for b in range(B):
            out.flagged[rows[b]] += int(f[b].sum())
        out.saved += float(((4 * d * d + 4 * d * keys[measured[li]])[f]).sum())
        out.n_flag += int(f.sum())


def sweep_headline(runs: list[PatchRun], doc_elig: np.ndarray, L: int, budget: float, n_res: int, seed: int):
    """Largest fraction with ΔNLL <= budget over the sweep, with a document bootstrap CI.

    Returns the (fraction, ΔNLL, relative ΔNLL) of every run, the index of the best (None when
    none meets the budget) and the CI (None without resamples or with fewer than 2 documents)."""
    pts = [r.summary(doc_elig, L) for r in runs]
    ok = [i for i, (f, dn, _) in enumerate(pts) if dn <= budget]
    best = max(ok, key=lambda i: pts[i][0]) if ok else None
    ci = None
    nd = doc_elig.shape[0]
    if n_res and nd >= 2:
        idx = resample_indices(nd, n_res, seed)
        fl = np.stack([r.flagged for r in runs], 1)  # (docs, S)
        dn = np.stack([r.dnll for r in runs], 1)
        f_b = fl[idx].sum(1) / np.maximum(doc_elig[idx].sum(1) * L, 1)[:, None]  # (R, S)
        d_b = dn[idx].sum(1) / np.maximum(runs[0].nll_n[idx].sum(1), 1)[:, None]
        ci = list(percentile_ci(np.where(d_b <= budget, f_b, 0.0).max(1)))
    return pts, best, ci


def _sweep(ctx: PatchContext, flag_for: Callable[[float], FlagFn]) -> list[PatchRun]:
    runs = []
    for t in ctx.s.cfg.sweep_taus:
        runs.append(patched_pass(ctx, flag_for(t)))
        ctx.done += 1
        ctx.s.progress("patch (C5)", ctx.done, ctx.n_sweep_runs)
    return runs


@dataclass
class C5:
    """What the patching control returns: the headline, the ``c5_patching`` section, the
    headline tau (the smallest swept tau when none is feasible) and the oracle sweep rows."""

    headline: dict
    section: dict
    tau_star: float
    sweep: list[dict]
    pred_cost: float


def c5_patching(ctx: PatchContext) -> C5:
    """Control C5 and the headline (see the module doc)."""
    cfg, sweep, doc_elig, L = ctx.s.cfg, ctx.s.cfg.sweep_taus, ctx.test.doc_elig, ctx.L
    oracle = _sweep(ctx, ctx.oracle)
    pts, best, ci = sweep_headline(oracle, doc_elig, L, cfg.budget, cfg.bootstrap, cfg.seed + 101)
    pred_cost = ctx.preds[ctx.s.layers[0]][cfg.patch_predictor].flops_per_token
    rows = [{"tau": t, "fraction": f, "dnll": dn, "dnll_rel": rel, **r.cost(pred_cost, 0.0, doc_elig, L)}
            for t, (f, dn, rel), r in zip(sweep, pts, oracle)]  # fmt: skip
    head, tau_star = _headline(pts, best, ci, sweep)
    head.update({"predictor": cfg.patch_predictor, "budget": cfg.budget, "flags": "oracle (e_t < tau)",
                 "n_test_docs": int(doc_elig.shape[0])})  # fmt: skip
    section = {"predictor": cfg.patch_predictor, "budget": cfg.budget, "sweep": rows,
               "per_layer": per_layer_patching(ctx, tau_star) if cfg.per_layer_patch else None}  # fmt: skip
    section["everywhere"] = everywhere_references(ctx)
    # if mean-ablating every attention output fits the budget, the budget does not constrain
    # anything and the headline says more about the budget than about redundancy
    head["budget_binding"] = section["everywhere"]["p0_everywhere"]["dnll"] > cfg.budget
    return C5(head, section, tau_star, rows, pred_cost)


def _headline(pts, best, ci, sweep) -> tuple[dict, float]:
    if best is None:
        return {"fraction": 0.0, "ci": ci, "dnll": None, "dnll_rel": None, "tau": None, "feasible": False,
                "capped": False}, min(sweep)  # fmt: skip
    tau = sweep[best]
    # capped: the largest tau tried still met the budget, so the headline is a lower bound
    return {"fraction": pts[best][0], "ci": ci, "dnll": pts[best][1], "dnll_rel": pts[best][2], "tau": tau,
            "feasible": True, "capped": tau == max(sweep)}, tau  # fmt: skip


def per_layer_patching(ctx: PatchContext, tau: float) -> list[dict]:
    """Each measured layer patched alone with the oracle flags at ``tau``."""
    out = []
    for li, ly in enumerate(ctx.s.layers):
        f, dn, rel = patched_pass(ctx, ctx.oracle(tau), only_layer=ly).summary(ctx.test.doc_elig, 1)
        out.append({"layer": ly, "tau": tau, "fraction": f, "dnll": dn, "dnll_rel": rel})
        ctx.s.progress("patch per layer", li + 1, ctx.L)
    return out


def everywhere_references(ctx: PatchContext) -> dict[str, dict]:
    """How much the model uses attention at all: every eligible position of every measured layer
    replaced by the patch predictor, and by the constant (mean ablation)."""
    refs = {}
    for name in (ctx.s.cfg.patch_predictor, "p0"):
        f, dn, rel = patched_pass(ctx, ctx.everywhere, predictor=name).summary(ctx.test.doc_elig, ctx.L)
        refs[f"{name}_everywhere"] = {"fraction": f, "dnll": dn, "dnll_rel": rel}
        ctx.s.progress("patch references", len(refs), 2)
    return refs


def c6_gate(ctx: PatchContext, pred_cost: float) -> dict | None:
    """Control C6: the sweep with the gates' online flags, and their agreement with the oracle."""
    if not ctx.gates:
        return None
    cfg, sweep, doc_elig, L = ctx.s.cfg, ctx.s.cfg.sweep_taus, ctx.test.doc_elig, ctx.L
    runs = _sweep(ctx, ctx.gate)
    pts, best, ci = sweep_headline(runs, doc_elig, L, cfg.budget, cfg.bootstrap, cfg.seed + 202)
    gate_cost = gate_flops(ctx)
    rows = []
    for si, (t, (f, dn, rel), r) in enumerate(zip(sweep, pts, runs)):
        rows.append({"tau": t, "fraction": f, "dnll": dn, "dnll_rel": rel, **_gate_agreement(ctx.test, si, L),
                     **r.cost(pred_cost, gate_cost, doc_elig, L)})  # fmt: skip
    head = {
        "fraction": pts[best][0] if best is not None else 0.0,
        "ci": ci,
        "dnll": pts[best][1] if best is not None else None,
        "tau": sweep[best] if best is not None else None,
        "feasible": best is not None,
        "capped": best is not None and sweep[best] == max(sweep),
    }
    return {"what": "logistic gate g(x) >= 0.5 trained on VAL to predict 1[e_t < tau], applied online",
            "sweep": rows, "headline": head}  # fmt: skip


def gate_flops(ctx: PatchContext) -> float | None:
    return next(iter(ctx.gates[ctx.s.layers[0]].values())).flops_per_token if ctx.gates else None


def _gate_agreement(test: Tally, si: int, L: int) -> dict:
    """Precision and recall of the gate at sweep tau ``si`` against the oracle flags, and its AUC
    (mean over layers)."""
    ga = test.gate
    tp, fp, fn = ga["tp"][:, si].sum(), ga["fp"][:, si].sum(), ga["fn"][:, si].sum()
    aucs = [a for a in (binned_auc(ga["pos"][li, si], ga["neg"][li, si]) for li in range(L)) if a is not None]
    return {"precision": float(tp / (tp + fp)) if tp + fp else None,
            "recall": float(tp / (tp + fn)) if tp + fn else None,
            "auc": float(np.mean(aucs)) if aucs else None}  # fmt: skip


def c7_cost(ctx: PatchContext, c5: C5, c6: dict | None) -> dict:
    """Control C7 at the headline tau: predictor and gate FLOPs, net attention-FLOP saving."""
    ref = next((s for s in c5.sweep if s["tau"] == c5.tau_star), c5.sweep[0])
    gate_row = next((s for s in c6["sweep"] if s["tau"] == c5.tau_star), {}) if c6 else None
    return {
        "d": ctx.s.adapter.d_model,
        "predictor_flops_per_token": c5.pred_cost,
        "gate_flops_per_token": gate_flops(ctx),
        "attention_flops_per_token": "8 d^2 + 4 d t (t = number of keys); skipping saves 4 d^2 + 4 d t",
        "tau": c5.tau_star,
        "net_saving_oracle": ref["net_saving"],
        "net_saving_gate": gate_row.get("net_saving") if gate_row is not None else None,
    }


def binned_auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """AUC from score histograms of positives and negatives (ties count one half)."""
    n1, n0 = pos.sum(), neg.sum()
    if n1 == 0 or n0 == 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(((below + 0.5 * neg) * pos).sum() / (n1 * n0))

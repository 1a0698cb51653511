"""How much of a transformer's attention output is predictable from the state it reads
(docs/redundancy.md).

:func:`measure_redundancy` runs the whole measurement on a loaded model and a corpus:

1. FIT pass: stream ``x = LN1(h)``, the per-head outputs ``z`` and the layer outputs ``o`` at
   every layer; accumulate ridge moments (P1, P-local, and P1 on shuffled pairs for control C2)
   and keep a capped sample for the MLP (P2).
2. VAL pass: the same moments, used to choose ``lambda`` and to stop the MLP early.
3. Gate pass (C6, optional): on VAL, the oracle error of the patch predictor, to train per-layer
   logistic gates for each threshold ``tau`` of the sweep.
4. TEST clean pass: centred and raw relative errors per token, layer, head, predictor and
   position bucket (C1, C2, C4), the CDF, R^2 and centred cosine, the context-swap distance
   (C3) and the gates' agreement with the oracle flags.
5. TEST patched passes (C5, C6, C7): see :mod:`cramkit.gpu.redundancy.controls`.

The passes live in :mod:`~cramkit.gpu.redundancy.passes`, the descriptive sections of the
result in :mod:`~cramkit.gpu.redundancy.assembly`, the patching controls in
:mod:`~cramkit.gpu.redundancy.controls`. Positions ``t < min_pos`` are excluded from the fits,
the fractions and ΔNLL (C4) and reported per position bucket.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from cramkit.errors import CramError
from cramkit.gpu.redundancy import assembly
from cramkit.gpu.redundancy.adapters import LoadedModel, check_finite_model
from cramkit.gpu.redundancy.config import PREDICTORS, RedundancyConfig
from cramkit.gpu.redundancy.controls import PatchContext, c5_patching, c6_gate, c7_cost
from cramkit.gpu.redundancy.corpus import Split, read_documents, split_corpus
from cramkit.gpu.redundancy.passes import (
    Setup,
    clean_test_pass,
    fit_predictors,
    gate_pass,
    moments_pass,
)
from cramkit.gpu.redundancy.results import RedundancyResult
from cramkit.gpu.redundancy.semantic import cram_layer_rows
from cramkit.progress import Progress, report_to


class _Clock:
    """Seconds per stage (``stage_s`` in the result) and in total (``timing_s``)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self.last, 2)
        self.last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 2)


@torch.no_grad()
def measure_redundancy(
    loaded: LoadedModel,
    text: str | None = None,
    config: RedundancyConfig | None = None,
    progress: Progress | None = None,
) -> RedundancyResult:
    """Run the measurement of the module doc on one loaded model (see docs/redundancy.md)."""
    ad = loaded.adapter
    cfg = (config or RedundancyConfig()).resolve(ad.d_model)
    check_finite_model(loaded)
    clock = _Clock()
    torch.manual_seed(cfg.seed)
    window = cfg.window or min(1024, ad.n_ctx)
    if window > ad.n_ctx:
        raise CramError(f"window {window} exceeds the model's context of {ad.n_ctx} tokens")
    layers = list(range(ad.n_layers)) if cfg.layers is None else sorted(set(cfg.layers))
    if any(not 0 <= ly < ad.n_layers for ly in layers) or not layers:
        raise CramError(f"layers must be in 0..{ad.n_layers - 1}, got {cfg.layers}")
    splits = _splits(loaded, text, cfg, window)
    s = Setup(ad, loaded.path, cfg, layers, report_to(progress))
    rng = torch.Generator().manual_seed(cfg.seed)

    fit = moments_pass(s, splits["fit"], rng, "FIT", second=False)
    clock.lap("fit_pass")
    val = moments_pass(s, splits["val"], rng, "VAL", second=True)
    clock.lap("val_pass")
    preds, fit_info = fit_predictors(s, fit, val)
    del fit, val
    clock.lap("fit_predictors")
    gates = gate_pass(s, splits["val"], preds) if cfg.gate else {}
    clock.lap("gate_training")
    test = clean_test_pass(s, splits["test"], preds, gates)
    assembly.check_positions(test, cfg.min_pos)
    rows = assembly.layer_rows(test, cfg, layers, fit_info)
    for row in rows:  # which block and which kind of attention each measured layer is
        row["kind"], row["block"] = ad.layer_kind(row["layer"]), ad.layer_block(row["layer"])
    overall = assembly.overall(test, cfg, rows)
    clock.lap("test_pass")

    ctx = PatchContext(s, splits["test"], preds, gates, test)
    c5 = c5_patching(ctx)
    c6 = c6_gate(ctx, c5.pred_cost)
    c7 = c7_cost(ctx, c5, c6)
    for row, alone in zip(rows, c5.section["per_layer"] or []):
        row["patch_alone"] = alone
    clock.lap("patching")
    cram_rows = cram_layer_rows(s, splits["test"], preds, test)  # A layers: own memory and route
    for row in rows:
        row.update(cram_rows.get(row["layer"], {}))
    clock.lap("cram_reference")
    return RedundancyResult(
        model=_model_section(loaded),
        data=_data_section(text, window, splits, test.n_elig),
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        layers_measured=layers,
        overall=overall,
        layers=rows,
        controls={**assembly.descriptive_controls(test, cfg, overall), "c5_patching": c5.section,
                  "c6_gate": c6, "c7_cost": c7},  # fmt: skip
        cdf=assembly.error_cdf(test),
        headline=c5.headline,
        timing_s=clock.total(),
        stage_s=clock.stages,
    )


def _splits(loaded: LoadedModel, text: str | None, cfg: RedundancyConfig, window: int) -> dict[str, Split]:
    """The corpus read, tokenized and split by document into FIT, VAL and TEST windows."""
    splits = split_corpus(read_documents(text), loaded.encode, bos_id=loaded.bos_id, window=window,
                          max_tokens=cfg.max_tokens, seed=cfg.seed)  # fmt: skip
    if any(max(w.tokens) >= loaded.adapter.vocab_size for sp in splits.values() for w in sp.windows):
        raise CramError("the tokenizer produced ids beyond the model's vocabulary")
    return splits


def _model_section(loaded: LoadedModel) -> dict:
    ad = loaded.adapter
    return {"path": loaded.path, "source": loaded.source, "n_layers": ad.n_layers, "n_heads": ad.n_heads,
            "d_model": ad.d_model, "tokenizer": loaded.tokenizer, "step": loaded.step,
            "layer_kinds": [ad.layer_kind(ly) for ly in range(ad.n_layers)]}  # fmt: skip


def _data_section(text: str | None, window: int, splits: dict[str, Split], n_elig) -> dict:
    return {
        "corpus": str(text) if text is not None else "bundled default corpus",
        "window": window,
        "tokens": {k: sp.n_tokens for k, sp in splits.items()},
        "documents": {k: len(sp.docs) for k, sp in splits.items()},
        "eligible_test_positions": int(n_elig[0]),
    }


__all__ = ["PREDICTORS", "RedundancyConfig", "measure_redundancy"]

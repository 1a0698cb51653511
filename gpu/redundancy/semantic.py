"""Reference rows for CRAM retrieval (``A``) layers (docs/redundancy.md, "cram checkpoints").

A CRAM layer carries its own predictor of the episodic output: the semantic memory ``M(x_t)``,
trained (consolidation loss) to predict ``a_t`` from the state alone. :func:`cram_layer_rows`
scores it on TEST exactly as the fitted predictors are scored (centred error
``‖a_t − M(x_t)‖² / ‖a_t − ā‖²`` with ``ā`` the FIT mean, positions ``t >= min_pos``), and splits
the patch predictor's redundant fraction by the layer's own route: does the router attend where
``a_t`` is *not* predictable from the state? One more clean TEST forward; nothing is fitted.
"""

from __future__ import annotations

import numpy as np
import torch

from cramkit.gpu.redundancy.assembly import key as tau_key
from cramkit.gpu.redundancy.corpus import Split, batches
from cramkit.gpu.redundancy.passes import Predictors, Setup, Tally, ratio


def _empty(nt: int) -> dict:
    return {"n": 0, "below": np.zeros(nt), "num": 0.0, "den": 0.0, "routed": 0,
            "p_r": np.zeros(nt), "p_u": np.zeros(nt)}  # fmt: skip


@torch.no_grad()
def cram_layer_rows(s: Setup, split: Split, preds: Predictors, test: Tally) -> dict[int, dict]:
    """Per measured ``A`` layer: ``semantic_memory`` (``pi``, ``r2``, ``n``) and ``route``
    (``routed`` fraction, and ``pi_routed`` / ``pi_skipped``: the patch predictor's π at the
    positions the router attends / skips). Empty when no A layer is measured."""
    ad, taus = s.adapter, s.cfg.taus
    cram = [(li, ly) for li, ly in enumerate(s.layers) if ad.layer_kind(ly) == "A"]
    if not cram:
        return {}
    acc = {ly: _empty(len(taus)) for _, ly in cram}
    for bi, (tok, valid, _docs, _s) in enumerate(batches(split, s.cfg.batch_windows)):
        P = s.forward(tok, "TEST")
        m = valid & (torch.arange(tok.shape[1])[None] >= s.cfg.min_pos)
        for li, ly in cram:
            _accumulate(s, acc[ly], P, m, test.e_store[bi][:, :, li], ly, preds)
    return {ly: _row(acc[ly], taus) for _, ly in cram}


def _accumulate(s: Setup, a: dict, P, m: torch.Tensor, e_patch: torch.Tensor, ly: int, preds: Predictors) -> None:
    c = s.consts[ly]
    o_bar = preds[ly]["p0"].z_mean @ c.w + c.b
    x, o = P.xs[ly], P.os[ly]
    mem = s.adapter.semantic_memory(ly, x)
    e = ratio(((o - mem) ** 2).sum(-1), ((o - o_bar) ** 2).sum(-1))[m].numpy()
    route = s.adapter.route(ly, x)[m].numpy()
    ep = e_patch[m].numpy()
    a["n"] += e.size
    a["routed"] += int(route.sum())
    a["num"] += float(((o - mem) ** 2).sum(-1)[m].sum())
    a["den"] += float(((o - o_bar) ** 2).sum(-1)[m].sum())
    for ti, t in enumerate(s.cfg.taus):
        a["below"][ti] += (e < t).sum()
        a["p_r"][ti] += (ep[route] < t).sum()
        a["p_u"][ti] += (ep[~route] < t).sum()


def _row(a: dict, taus) -> dict:
    n, r = a["n"], a["routed"]
    key = [tau_key(t) for t in taus]

    def frac(cnt, den):
        return {k: (float(cnt[i] / den) if den else None) for i, k in enumerate(key)}

    return {
        "semantic_memory": {"pi": frac(a["below"], n), "r2": 1.0 - a["num"] / a["den"] if a["den"] > 0 else None,
                            "n": n},
        "route": {"routed": r / n if n else None, "pi_routed": frac(a["p_r"], r), "pi_skipped": frac(a["p_u"], n - r)},
    }  # fmt: skip

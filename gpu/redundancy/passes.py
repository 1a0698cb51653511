"""The forward passes of the redundancy measurement over FIT, VAL and TEST (docs/redundancy.md).

Every pass shares one :class:`Setup` (the model, the resolved options, the measured layers and
their output-projection constants, the progress callback):

* :func:`moments_pass` (FIT, VAL): ridge moments for P1, P-local and the shuffled control C2, and
  a capped sample of rows for the MLP P2;
* :func:`fit_predictors`: every predictor of every measured layer from the FIT and VAL moments;
* :func:`gate_pass` (VAL, control C6): the patch predictor's oracle error, then one logistic gate
  per layer and threshold;
* :func:`clean_test_pass` (TEST): per-token errors of every predictor, accumulated into
  :class:`Tally` by layer, head, document and position bucket, with the context-swap control
  C3 and the gates' agreement with the oracle flags.

Positions ``t < min_pos`` are excluded from fits and counts (control C4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cramkit.errors import CramError
from cramkit.gpu.redundancy.adapters import LMAdapter
from cramkit.gpu.redundancy.config import RedundancyConfig
from cramkit.gpu.redundancy.corpus import Split, batches
from cramkit.gpu.redundancy.engine import Pass, attention_output, run, swapped_context_z
from cramkit.gpu.redundancy.predictors import (
    ConstantPredictor,
    Gate,
    Moments,
    Predictor,
    fit_ridge,
    lagged,
    train_gate,
    train_mlp,
)
from cramkit.progress import Progress

CDF_EDGES = np.round(np.arange(-4.0, 1.0001, 0.1), 2)  # log10 of the error
GATE_BINS = 200

Predictors = dict[int, dict[str, Predictor]]  # layer -> predictor name -> predictor
Gates = dict[int, dict[float, Gate]]  # layer -> tau -> gate


class LayerConsts:
    """Per-layer constants: W_O, b_O, the metric M = W_O W_O^T and its per-head blocks."""

    def __init__(self, adapter: LMAdapter, layer: int):
        self.w = adapter.w_o(layer).detach().float()
        self.b = adapter.b_o(layer).detach().float()
        self.M = self.w.double() @ self.w.double().T
        H, hd = adapter.n_heads, adapter.head_dim
        self.Mh = torch.stack(
            [self.M[h * hd : (h + 1) * hd, h * hd : (h + 1) * hd] for h in range(H)]
        ).float()
        self.H, self.hd = H, hd


@dataclass
class Setup:
    """What every pass shares: the model and where it came from, the resolved options, the
    measured layers with their constants, and the progress callback."""

    adapter: LMAdapter
    path: str
    cfg: RedundancyConfig
    layers: list[int]
    progress: Progress
    consts: dict[int, LayerConsts] = field(init=False)

    def __post_init__(self):
        self.consts = {ly: LayerConsts(self.adapter, ly) for ly in self.layers}

    def forward(self, tok: torch.Tensor, stage: str) -> Pass:
        """A clean forward with capture; a model that produces NaN or inf is refused by name."""
        P = run(self.adapter, tok, capture=True)
        if not bool(torch.isfinite(P.nll).all()):
            raise CramError(
                f"the model in {self.path} produces NaN or inf on the {stage} text (corrupt or "
                "diverged weights?); there is nothing to measure"
            )
        return P

    def n_batches(self, split: Split) -> int:
        return math.ceil(len(split.windows) / self.cfg.batch_windows)


def eligible(valid: torch.Tensor, min_pos: int) -> torch.Tensor:
    """Valid positions at or after ``min_pos`` (control C4)."""
    pos = torch.arange(valid.shape[1])[None]
    return valid & (pos >= min_pos)


def features(name: str, x: torch.Tensor, w: int) -> torch.Tensor:
    """The predictor's input: the state itself, or for P-local the window ``x_t .. x_{t-w}``."""
    return lagged(x, w) if name == "plocal" else x


def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0/0 = 0 (a constant output predicted exactly)."""
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.where(num > 0, torch.inf, 0.0))


def layer_errors(pred: Predictor, feats, z, o, c: LayerConsts, o_bar, z_bar):
    """Centred/raw relative error, centred cosine and per-head centred error for rows of one layer
    (plus the numerator and centred denominator behind R^2)."""
    zh = pred.predict(feats)  # (N, d)
    oh = zh @ c.w + c.b
    num = ((o - oh) ** 2).sum(-1)
    den_c = ((o - o_bar) ** 2).sum(-1)
    den_r = (o**2).sum(-1)
    a, b = oh - o_bar, o - o_bar
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
    u = (z - zh).view(-1, c.H, c.hd)
    uc = (z - z_bar).view(-1, c.H, c.hd)
    num_h = torch.einsum("nhi,hij,nhj->nh", u, c.Mh, u)
    den_h = torch.einsum("nhi,hij,nhj->nh", uc, c.Mh, uc)
    return ratio(num, den_c), ratio(num, den_r), cos, ratio(num_h, den_h), num, den_c


# ------------------------------------------------------------------------------ FIT and VAL


@dataclass
class Captured:
    """Streamed statistics of one split: ridge moments of x (``mom``, targets ``z`` and the
    shuffled ``zs``), of the lagged window (``loc``, P-local) and sampled rows for P2."""

    mom: dict[int, Moments]
    loc: dict[int, Moments]
    samples: dict[int, tuple[torch.Tensor, torch.Tensor]]


def moments_pass(s: Setup, split: Split, rng: torch.Generator, stage: str, *, second: bool) -> Captured:
    """Stream ``split`` once, accumulating :class:`Captured` (``second`` also sums z z^T, for VAL)."""
    cfg, d, w = s.cfg, s.adapter.d_model, s.cfg.local_window
    mom = {ly: Moments(d) for ly in s.layers}
    loc = {ly: Moments((w + 1) * d) for ly in s.layers} if "plocal" in cfg.predictors else {}
    cap = cfg.mlp_tokens if stage == "FIT" else max(16, cfg.mlp_tokens // 4)
    keep_p = min(1.0, cap / max(1, split.n_tokens))
    rows = {ly: ([], []) for ly in s.layers} if "p2" in cfg.predictors else {}
    for bi, (tok, valid, _docs, _s) in enumerate(batches(split, cfg.batch_windows)):
        P = s.forward(tok, stage)
        m = eligible(valid, cfg.min_pos)
        n = int(m.sum())
        perm = torch.randperm(n, generator=rng)  # C2: pair x with z of another position of the batch
        keep = torch.rand(n, generator=rng) < keep_p
        for ly in s.layers:
            x = P.xs[ly][m]
            z = P.zs[ly].flatten(-2)[m]
            mom[ly].add(x, {"z": z, "zs": z[perm]}, second=second)
            if loc:
                loc[ly].add(lagged(P.xs[ly], w)[m], {"z": z}, second=second)
            if rows:
                rows[ly][0].append(x[keep])
                rows[ly][1].append(z[keep])
        s.progress(stage, bi + 1, s.n_batches(split))
    samples = {ly: (torch.cat(xs)[:cap], torch.cat(zs)[:cap]) for ly, (xs, zs) in rows.items()}
    return Captured(mom, loc, samples)


def fit_predictors(s: Setup, fit: Captured, val: Captured) -> tuple[Predictors, dict[int, dict]]:
    """Every predictor of every measured layer, with what each fit chose (lambda, epochs...)."""
    preds: Predictors = {}
    info: dict[int, dict] = {}
    for i, ly in enumerate(s.layers):
        preds[ly], info[ly] = _fit_layer(ly, fit, val, s.consts[ly], s.cfg)
        s.progress("fit predictors", i + 1, len(s.layers))
    return preds, info


def _fit_layer(ly: int, fit: Captured, val: Captured, c: LayerConsts, cfg: RedundancyConfig):
    mf, mv = fit.mom[ly], val.mom[ly]
    if mf.n < 2 or mv.n < 1:
        raise CramError(
            f"too few eligible tokens (FIT {mf.n}, VAL {mv.n}) after excluding positions < {cfg.min_pos}; "
            "give more text, raise --max-tokens or lower --min-pos"
        )
    out: dict[str, Predictor] = {"p0": ConstantPredictor(mf.sz["z"] / mf.n, "p0")}
    info: dict[str, dict] = {}
    if "p1" in cfg.predictors:
        out["p1"] = fit_ridge(mf, mv, "z", c.M, name="p1")
        info["p1"] = {"lambda": out["p1"].lam, "val_rel_err": out["p1"].val_rel_err}
    # C2: the same ridge fitted on (x_t, z_sigma(t)), evaluated on true pairs
    out["c2_shuffled"] = fit_ridge(mf, mv, "zs", c.M, name="c2_shuffled")
    info["c2_shuffled"] = {"lambda": out["c2_shuffled"].lam, "val_rel_err": out["c2_shuffled"].val_rel_err}
    if "plocal" in cfg.predictors:
        pl = out["plocal"] = fit_ridge(fit.loc[ly], val.loc[ly], "z", c.M, name="plocal")
        info["plocal"] = {"lambda": pl.lam, "val_rel_err": pl.val_rel_err, "window": cfg.local_window}
    if "p2" in cfg.predictors:
        (xf, zf), (xv, zv) = fit.samples[ly], val.samples[ly]
        mlp = train_mlp(xf, zf, xv, zv, c.w, n_heads=c.H, max_epochs=cfg.mlp_epochs, seed=cfg.seed + ly)
        out["p2"] = mlp
        info["p2"] = {"epochs": mlp.epochs_run, "val_rel_err": mlp.val_rel_err,
                      "train_tokens": int(xf.shape[0])}  # fmt: skip
    info["p0"] = {}
    return out, info


def gate_pass(s: Setup, split: Split, preds: Predictors) -> Gates:
    """Oracle error of the patch predictor on VAL, then one logistic gate per layer and tau (C6)."""
    cfg, pp = s.cfg, s.cfg.patch_predictor
    xs: dict[int, list] = {ly: [] for ly in s.layers}
    es: dict[int, list] = {ly: [] for ly in s.layers}
    keep_p = min(1.0, cfg.gate_tokens / max(1, split.n_tokens))
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    for bi, (tok, valid, _d, _s) in enumerate(batches(split, cfg.batch_windows)):
        P = s.forward(tok, "VAL")
        m = eligible(valid, cfg.min_pos)
        keep = torch.rand(int(m.sum()), generator=gen) < keep_p
        for ly in s.layers:
            c, z_bar = s.consts[ly], preds[ly]["p0"].z_mean
            feats = features(pp, P.xs[ly], cfg.local_window)[m][keep]
            z = P.zs[ly].flatten(-2)[m][keep]
            e = layer_errors(preds[ly][pp], feats, z, P.os[ly][m][keep], c, z_bar @ c.w + c.b, z_bar)[0]
            xs[ly].append(P.xs[ly][m][keep])
            es[ly].append(e)
        s.progress("gate (VAL)", bi + 1, s.n_batches(split))
    gates: Gates = {}
    for ly in s.layers:
        x, e = torch.cat(xs[ly])[: cfg.gate_tokens], torch.cat(es[ly])[: cfg.gate_tokens]
        gates[ly] = {t: train_gate(x, e < t) for t in cfg.sweep_taus}
    return gates


# ------------------------------------------------------------------------------------- TEST


def predictor_names(cfg: RedundancyConfig) -> list[str]:
    """The predictors scored on TEST: P0 (control C1) first, the measured ones, and the shuffled
    ridge (control C2); P0 and C2 are always measured."""
    return ["p0"] + [p for p in cfg.predictors if p != "p0"] + ["c2_shuffled"]


def position_edges(min_pos: int, window: int) -> list[int]:
    """Position buckets of control C4: [0, min_pos), then doubling widths up to the window."""
    edges = [0, min_pos] if min_pos > 0 else [0]
    e0 = max(64, 2 * min_pos) if min_pos > 0 else 32
    while e0 < window:
        edges.append(e0)
        e0 *= 2
    edges.append(window)
    return sorted(set(edges))


@dataclass
class Tally:
    """Everything the clean TEST pass accumulates (L = measured layers, nt = taus, ns = sweep
    taus, nb = position buckets, nd = TEST documents). ``acc[p]`` holds per predictor ``p``:
    counts below each tau (``cnt``, ``cnt_raw``, per ``head``, per ``doc`` and ``bucket``), the
    CDF histogram ``hist``, and the sums ``num``, ``den``, ``cos`` behind R^2 and the cosine."""

    names: list[str]
    edges: list[int]
    doc_ids: dict[int, int]  # corpus document -> row of the per-document arrays
    acc: dict[str, dict[str, np.ndarray]]
    n_elig: np.ndarray  # (L,) eligible positions per layer
    doc_elig: np.ndarray  # (nd,) eligible positions per document
    bucket_n: np.ndarray  # (nb,) valid positions per bucket
    swap: dict[str, np.ndarray]  # C3: n (L,), small / flag_small / flag_large (L, nt)
    gate: dict[str, np.ndarray]  # C6: pos / neg score histograms (L, ns, bins), tp / fp / fn (L, ns)
    e_store: list[torch.Tensor] = field(default_factory=list)  # per batch (B, T, L): patch error
    nll_clean: list[torch.Tensor] = field(default_factory=list)  # per batch (B, T): clean NLL

    @classmethod
    def empty(cls, cfg: RedundancyConfig, split: Split, n_layers: int, n_heads: int) -> Tally:
        names = predictor_names(cfg)
        L, nt, ns = n_layers, len(cfg.taus), len(cfg.sweep_taus)
        edges = position_edges(cfg.min_pos, max(len(w.tokens) for w in split.windows))
        nb, nd = len(edges) - 1, len(split.docs)
        z = np.zeros
        acc = {p: {"cnt": z((L, nt)), "cnt_raw": z((L, nt)), "head": z((L, n_heads, nt)),
                   "hist": z((L, len(CDF_EDGES) + 1)), "num": z(L), "den": z(L), "cos": z(L),
                   "doc": z((nd, L, nt)), "bucket": z((L, nb, nt))} for p in names}  # fmt: skip
        swap = {"n": z(L), "small": z((L, nt)), "flag_small": z((L, nt)), "flag_large": z((L, nt))}
        gate = {"pos": z((L, ns, GATE_BINS)), "neg": z((L, ns, GATE_BINS)), "tp": z((L, ns)),
                "fp": z((L, ns)), "fn": z((L, ns))}  # fmt: skip
        doc_ids = {d: i for i, d in enumerate(split.docs)}
        return cls(names, edges, doc_ids, acc, z(L), z(nd), z(nb), swap, gate)


@dataclass
class _Batch:
    """One TEST batch seen by the accumulators: the captured pass, masks and row indices."""

    P: Pass
    valid: torch.Tensor  # (B, T)
    m: torch.Tensor  # (B, T) eligible
    elig_v: np.ndarray  # over valid positions: eligible?
    doc_v: np.ndarray  # over valid positions: document row
    bidx: np.ndarray  # over valid positions: position bucket
    partner: torch.Tensor  # (B,) C3 partner window
    other: torch.Tensor  # (B, T) positions with a partner from another document
    e: torch.Tensor  # (B, T, L) error of the patch predictor, inf where not valid


def clean_test_pass(s: Setup, split: Split, preds: Predictors, gates: Gates) -> Tally:
    """The clean TEST pass: see the module doc."""
    st = Tally.empty(s.cfg, split, len(s.layers), s.adapter.n_heads)
    for bi, (tok, valid, bdocs, _s) in enumerate(batches(split, s.cfg.batch_windows)):
        b = _test_batch(s, st, tok, valid, bdocs)
        st.nll_clean.append(b.P.nll)
        for li, ly in enumerate(s.layers):
            _score_layer(s, st, b, li, ly, preds[ly])
            if s.cfg.context_swap and bool(b.other.any()):
                _context_swap(s, st, b, li, ly, preds[ly])
            if gates:
                _gate_agreement(s, st, b, li, gates[ly])
        st.e_store.append(b.e)
        s.progress("TEST", bi + 1, s.n_batches(split))
    return st


def _test_batch(s: Setup, st: Tally, tok, valid, bdocs) -> _Batch:
    """Run one TEST batch and count its eligible positions per document and bucket."""
    P = s.forward(tok, "TEST")
    B, T = tok.shape
    m = eligible(valid, s.cfg.min_pos)
    vpos = torch.arange(T)[None].expand(B, T)[valid]
    bidx = np.clip(np.searchsorted(st.edges, vpos.numpy(), side="right") - 1, 0, len(st.edges) - 2)
    elig_v = m[valid].numpy()
    doc_v = np.array([st.doc_ids[int(d)] for d in bdocs])[np.nonzero(valid.numpy())[0]]
    np.add.at(st.bucket_n, bidx, 1)
    st.n_elig += elig_v.sum()
    np.add.at(st.doc_elig, doc_v[elig_v], 1)
    partner = torch.roll(torch.arange(B), -1)  # C3: the next window of the batch, from another document
    other = (bdocs != bdocs[partner])[:, None] & valid[partner] & m
    e = torch.full((B, T, len(s.layers)), torch.inf)
    return _Batch(P, valid, m, elig_v, doc_v, bidx, partner, other, e)


def _score_layer(s: Setup, st: Tally, b: _Batch, li: int, ly: int, preds: dict[str, Predictor]) -> None:
    """Every predictor's errors at layer ``ly`` of one batch, into ``st.acc`` (and ``b.e``)."""
    c, z_bar = s.consts[ly], preds["p0"].z_mean
    o_bar = z_bar @ c.w + c.b
    xv, zv, ov = b.P.xs[ly][b.valid], b.P.zs[ly].flatten(-2)[b.valid], b.P.os[ly][b.valid]
    local = lagged(b.P.xs[ly], s.cfg.local_window)[b.valid] if "plocal" in st.names else None
    ev = b.elig_v
    for p in st.names:
        feats = local if p == "plocal" else xv
        e_c, e_r, cos, e_h, num, den = layer_errors(preds[p], feats, zv, ov, c, o_bar, z_bar)
        a = st.acc[p]
        ec = e_c.numpy()
        ce, cr, eh = ec[ev], e_r.numpy()[ev], e_h.numpy()[ev]
        for ti, t in enumerate(s.cfg.taus):
            below = ec < t
            a["cnt"][li, ti] += (ce < t).sum()
            a["cnt_raw"][li, ti] += (cr < t).sum()
            a["head"][li, :, ti] += (eh < t).sum(0)
            np.add.at(a["doc"][:, li, ti], b.doc_v[ev], below[ev])
            np.add.at(a["bucket"][li, :, ti], b.bidx, below)
        with np.errstate(divide="ignore"):
            lg = np.log10(ce)
        bins = np.searchsorted(CDF_EDGES, lg, side="right")
        a["hist"][li] += np.bincount(bins, minlength=len(CDF_EDGES) + 1)
        a["num"][li] += float(num[ev].sum())
        a["den"][li] += float(den[ev].sum())
        a["cos"][li] += float(cos[ev].sum())
        if p == s.cfg.patch_predictor:
            b.e[:, :, li][b.valid] = e_c


def _context_swap(s: Setup, st: Tally, b: _Batch, li: int, ly: int, preds: dict[str, Predictor]) -> None:
    """Control C3: how far the output moves with keys and values from another document."""
    c, z_bar = s.consts[ly], preds["p0"].z_mean
    o_bar = z_bar @ c.w + c.b
    xs, os_ = b.P.xs[ly], b.P.os[ly]
    o_sw = attention_output(s.adapter, ly, swapped_context_z(s.adapter, ly, xs, xs[b.partner]))
    D = ratio(((os_ - o_sw) ** 2).sum(-1), ((os_ - o_bar) ** 2).sum(-1))[b.other].numpy()
    ep = b.e[:, :, li][b.other].numpy()
    sw = st.swap
    sw["n"][li] += D.size
    for ti, t in enumerate(s.cfg.taus):
        sw["small"][li, ti] += (D < t).sum()
        sw["flag_small"][li, ti] += ((ep < t) & (D < t)).sum()
        sw["flag_large"][li, ti] += ((ep < t) & (D >= t)).sum()


def _gate_agreement(s: Setup, st: Tally, b: _Batch, li: int, gates: dict[float, Gate]) -> None:
    """Control C6: each gate's score against the oracle flag ``e_t < tau`` (histograms, tp/fp/fn)."""
    xe = b.P.xs[s.layers[li]][b.m]
    ee = b.e[:, :, li][b.m]
    g = st.gate
    for si, t in enumerate(s.cfg.sweep_taus):
        prob = gates[t].proba(xe).numpy()
        lab = (ee < t).numpy()
        bins = np.clip((prob * GATE_BINS).astype(int), 0, GATE_BINS - 1)
        g["pos"][li, si] += np.bincount(bins[lab], minlength=GATE_BINS)
        g["neg"][li, si] += np.bincount(bins[~lab], minlength=GATE_BINS)
        on = prob >= 0.5
        g["tp"][li, si] += (on & lab).sum()
        g["fp"][li, si] += (on & ~lab).sum()
        g["fn"][li, si] += (~on & lab).sum()

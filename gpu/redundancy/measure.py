"""How much of a transformer's attention output is predictable from the state it reads (SPEC §7).

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
5. TEST patched passes (C5): ``o_t <- o_hat_t`` at the flagged positions of all layers jointly,
   for each ``tau`` of the sweep, with oracle flags and with the gates; each layer alone at the
   headline ``tau``. The headline is the largest flagged fraction whose ΔNLL stays within the
   budget; its CI is a bootstrap over TEST documents that redoes the choice of ``tau`` in each
   resample. C7 weighs predictor and gate FLOPs against the attention FLOPs they replace.

Positions ``t < min_pos`` are excluded from the fits, the fractions and ΔNLL (C4) and reported
per position bucket. Fractions are over eligible positions of the measured layers; "overall" is
the mean over layers (each layer has the same attention FLOPs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from cramkit.gpu.redundancy.adapters import LMAdapter, LoadedModel, check_finite_model
from cramkit.gpu.redundancy.corpus import Split, batches, read_documents, split_corpus
from cramkit.gpu.redundancy.engine import attention_output, run, swapped_context_z
from cramkit.gpu.redundancy.predictors import (
    ConstantPredictor,
    Moments,
    Predictor,
    fit_ridge,
    lagged,
    train_gate,
    train_mlp,
)
from cramkit.errors import CramError
from cramkit.theory.stats import percentile_ci

PREDICTORS = ("p0", "p1", "plocal", "p2")
CDF_EDGES = np.round(np.arange(-4.0, 1.0001, 0.1), 2)  # log10 of the error
GATE_BINS = 200
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RedundancyConfig:
    """Options of the measurement; every field is validated, unknown keys are rejected."""

    window: int | None = None  # tokens per window; None: min(1024, model context)
    max_tokens: int | None = 3000  # all splits together (4:1:2); None: the whole corpus
    batch_windows: int = 4
    min_pos: int = 32
    predictors: tuple[str, ...] | None = (
        None  # None: p0, p1, p2, plus plocal when cheap (see resolve)
    )
    local_window: int = 2  # P-local uses x_t .. x_{t-w}
    taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    sweep_taus: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    patch_predictor: str | None = None  # None: p1 if measured, else the first non-constant one
    budget: float = 0.01  # nats/token
    per_layer_patch: bool = False  # one more TEST pass per layer; on for a full measurement
    gate: bool = True
    context_swap: bool = True
    mlp_tokens: int = 4000
    mlp_epochs: int = 10
    gate_tokens: int = 4000
    layers: tuple[int, ...] | None = None
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.window is not None and self.window < 2:
            raise CramError(f"window must be at least 2 tokens, got {self.window}")
        if self.max_tokens is not None and self.max_tokens < 14:
            raise CramError(f"max_tokens must be at least 14, got {self.max_tokens}")
        if self.batch_windows < 1:
            raise CramError("batch_windows must be at least 1")
        if self.min_pos < 0:
            raise CramError("min_pos must be non-negative")
        if self.predictors is not None:  # None: resolve() picks them for the model
            self._check_predictors()
        elif self.patch_predictor not in (None, "p1", "p2"):
            raise CramError(
                f"the patch predictor '{self.patch_predictor}' is not in the default predictor set; "
                "name it in predictors"
            )
        if self.local_window < 1:
            raise CramError("local_window must be at least 1")
        for name in ("taus", "sweep_taus"):
            v = getattr(self, name)
            if not v or any(not (math.isfinite(t) and 0 < t <= 10) for t in v):
                raise CramError(f"{name} must be non-empty thresholds in (0, 10], got {v}")
        if not (math.isfinite(self.budget) and self.budget >= 0):
            raise CramError(
                f"budget must be a non-negative number of nats/token, got {self.budget}"
            )
        if self.mlp_tokens < 16 or self.gate_tokens < 16 or self.mlp_epochs < 1:
            raise CramError(
                "mlp_tokens and gate_tokens must be at least 16 and mlp_epochs at least 1"
            )
        if self.bootstrap < 0:
            raise CramError("bootstrap must be non-negative")

    def _check_predictors(self) -> None:
        bad = [p for p in self.predictors if p not in PREDICTORS]
        if bad or not self.predictors:
            raise CramError(f"unknown predictor(s) {bad}; choose from {', '.join(PREDICTORS)}")
        if self.patch_predictor is None:
            choices = [p for p in self.predictors if p != "p0"]
            object.__setattr__(
                self, "patch_predictor", "p1" if "p1" in choices else (choices or ["p1"])[0]
            )
        if self.patch_predictor not in self.predictors or self.patch_predictor == "p0":
            raise CramError(
                f"the patch predictor '{self.patch_predictor}' must be one of the measured, non-constant "
                f"predictors {[p for p in self.predictors if p != 'p0']}"
            )

    def resolve(self, d_model: int) -> RedundancyConfig:
        """Fill the default predictor set for a model of width ``d_model``.

        P-local's ridge works on ``(w + 1) d`` features and its eigendecomposition dominated a
        default run of GPT-2 small (about a minute per layer on 2 cores); the MLP costs ``8 d^2``
        per token and step. The default therefore measures P-local only when ``(w + 1) d <= 1536``
        and P2 only when ``d <= 512``; name them in ``predictors`` to force them.
        """
        if self.predictors is not None:
            return self
        preds = ["p0", "p1"]
        if (self.local_window + 1) * d_model <= 1536:
            preds.append("plocal")
        if d_model <= 512:
            preds.append("p2")
        if self.patch_predictor not in (None, *preds):
            raise CramError(
                f"the patch predictor '{self.patch_predictor}' is not measured; add it to predictors"
            )
        return replace(self, predictors=tuple(preds), patch_predictor=self.patch_predictor or "p1")

    @classmethod
    def from_dict(cls, d: dict) -> RedundancyConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CramError(f"unknown redundancy option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def _key(t: float) -> str:
    return f"{t:g}"


class _Layer:
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


def _features(name: str, x: torch.Tensor, w: int) -> torch.Tensor:
    return lagged(x, w) if name == "plocal" else x


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0/0 = 0 (a constant output predicted exactly)."""
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.where(num > 0, torch.inf, 0.0))


@torch.no_grad()
def measure_redundancy(
    loaded: LoadedModel,
    text: str | None = None,
    config: RedundancyConfig | None = None,
    progress: Progress | None = None,
) -> dict:
    """Run the measurement of the module doc; returns a JSON-ready dict (see docs/redundancy.md)."""
    ad = loaded.adapter
    cfg = (config or RedundancyConfig()).resolve(ad.d_model)
    check_finite_model(ad)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    window = cfg.window or min(1024, ad.n_ctx)
    if window > ad.n_ctx:
        raise CramError(f"window {window} exceeds the model's context of {ad.n_ctx} tokens")
    layers = list(range(ad.n_layers)) if cfg.layers is None else sorted(set(cfg.layers))
    if any(not 0 <= ly < ad.n_layers for ly in layers) or not layers:
        raise CramError(f"layers must be in 0..{ad.n_layers - 1}, got {cfg.layers}")
    docs = read_documents(text)
    splits = split_corpus(
        docs,
        loaded.encode,
        bos_id=loaded.bos_id,
        window=window,
        max_tokens=cfg.max_tokens,
        seed=cfg.seed,
    )
    if any(max(w.tokens) >= ad.vocab_size for s in splits.values() for w in s.windows):
        raise CramError("the tokenizer produced ids beyond the model's vocabulary")
    consts = {ly: _Layer(ad, ly) for ly in layers}
    tick = progress or (lambda stage, done, total: None)
    rng = torch.Generator().manual_seed(cfg.seed)

    stages: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        stages[name] = round(now - clock[0], 2)
        clock[0] = now

    fit = _moments_pass(ad, splits["fit"], cfg, layers, rng, tick, "FIT", second=False)
    lap("fit_pass")
    val = _moments_pass(ad, splits["val"], cfg, layers, rng, tick, "VAL", second=True)
    lap("val_pass")
    preds: dict[int, dict[str, Predictor]] = {}
    fit_info: dict[int, dict] = {}
    for i, ly in enumerate(layers):
        preds[ly], fit_info[ly] = _fit_layer(ly, fit, val, consts[ly], cfg)
        tick("fit predictors", i + 1, len(layers))
    fit.clear()
    val.clear()
    lap("fit_predictors")
    gates = _gate_pass(ad, splits["val"], cfg, layers, preds, consts, tick) if cfg.gate else {}
    lap("gate_training")
    test = _test_pass(ad, splits["test"], cfg, layers, preds, consts, gates, tick)
    result = _assemble(loaded, text, splits, cfg, window, layers, preds, fit_info, test)
    lap("test_pass")
    _patching(ad, splits["test"], cfg, layers, preds, gates, test, result, tick)
    lap("patching")
    result["timing_s"] = round(time.perf_counter() - t_start, 2)
    result["stage_s"] = stages
    return _finite(result)


def _finite(obj):
    """JSON-safe copy: NaN and inf become None, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ----------------------------------------------------------------------------------- passes


def _eligible(valid: torch.Tensor, min_pos: int) -> torch.Tensor:
    pos = torch.arange(valid.shape[1])[None]
    return valid & (pos >= min_pos)


def _moments_pass(ad, split: Split, cfg, layers, rng, tick, stage, *, second: bool):
    d, w = ad.d_model, cfg.local_window
    mom = {ly: Moments(d) for ly in layers}
    loc = {ly: Moments((w + 1) * d) for ly in layers} if "plocal" in cfg.predictors else {}
    cap = cfg.mlp_tokens if stage == "FIT" else max(16, cfg.mlp_tokens // 4)
    keep_p = min(1.0, cap / max(1, split.n_tokens))
    samples = {ly: ([], []) for ly in layers} if "p2" in cfg.predictors else {}
    n_batches = math.ceil(len(split.windows) / cfg.batch_windows)
    for bi, (tok, valid, _docs, _s) in enumerate(batches(split, cfg.batch_windows)):
        P = run(ad, tok, capture=True)
        m = _eligible(valid, cfg.min_pos)
        n = int(m.sum())
        perm = torch.randperm(
            n, generator=rng
        )  # C2: pair x with z of another position of the batch
        keep = torch.rand(n, generator=rng) < keep_p
        for ly in layers:
            x = P.xs[ly][m]
            z = P.zs[ly].flatten(-2)[m]
            mom[ly].add(x, {"z": z, "zs": z[perm]}, second=second)
            if loc:
                loc[ly].add(lagged(P.xs[ly], w)[m], {"z": z}, second=second)
            if samples:
                samples[ly][0].append(x[keep])
                samples[ly][1].append(z[keep])
        tick(stage, bi + 1, n_batches)
    out = {"mom": mom, "loc": loc, "samples": {}}
    for ly, (xs, zs) in samples.items():
        x, z = torch.cat(xs)[:cap], torch.cat(zs)[:cap]
        out["samples"][ly] = (x, z)
    return out


def _fit_layer(ly, fit, val, c: _Layer, cfg) -> tuple[dict[str, Predictor], dict]:
    out: dict[str, Predictor] = {}
    info: dict[str, dict] = {}
    mf, mv = fit["mom"][ly], val["mom"][ly]
    if mf.n < 2 or mv.n < 1:
        raise CramError(
            f"too few eligible tokens (FIT {mf.n}, VAL {mv.n}) after excluding positions < {cfg.min_pos}; "
            "give more text, raise --max-tokens or lower --min-pos"
        )
    out["p0"] = ConstantPredictor(mf.sz["z"] / mf.n, "p0")
    if "p1" in cfg.predictors:
        p1 = fit_ridge(mf, mv, "z", c.M, name="p1")
        out["p1"] = p1
        info["p1"] = {"lambda": p1.lam, "val_rel_err": p1.val_rel_err}
    # C2: the same ridge fitted on (x_t, z_sigma(t)), evaluated on true pairs
    c2 = fit_ridge(mf, mv, "zs", c.M, name="c2_shuffled")
    out["c2_shuffled"] = c2
    info["c2_shuffled"] = {"lambda": c2.lam, "val_rel_err": c2.val_rel_err}
    if "plocal" in cfg.predictors:
        pl = fit_ridge(fit["loc"][ly], val["loc"][ly], "z", c.M, name="plocal")
        out["plocal"] = pl
        info["plocal"] = {
            "lambda": pl.lam,
            "val_rel_err": pl.val_rel_err,
            "window": cfg.local_window,
        }
    if "p2" in cfg.predictors:
        xf, zf = fit["samples"][ly]
        xv, zv = val["samples"][ly]
        mlp = train_mlp(
            xf, zf, xv, zv, c.w, n_heads=c.H, max_epochs=cfg.mlp_epochs, seed=cfg.seed + ly
        )
        out["p2"] = mlp
        info["p2"] = {
            "epochs": mlp.epochs_run,
            "val_rel_err": mlp.val_rel_err,
            "train_tokens": int(xf.shape[0]),
        }
    info["p0"] = {}
    return out, info


def _layer_errors(pred: Predictor, feats, z, o, c: _Layer, o_bar, z_bar):
    """Centred/raw relative error, centred cosine and per-head centred error for rows of one layer."""
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
    return _ratio(num, den_c), _ratio(num, den_r), cos, _ratio(num_h, den_h), num, den_c


def _gate_pass(ad, split, cfg, layers, preds, consts, tick):
    """Oracle error of the patch predictor on VAL, then one logistic gate per layer and tau."""
    xs = {ly: [] for ly in layers}
    es = {ly: [] for ly in layers}
    keep_p = min(1.0, cfg.gate_tokens / max(1, split.n_tokens))
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    n_batches = math.ceil(len(split.windows) / cfg.batch_windows)
    pp = cfg.patch_predictor
    for bi, (tok, valid, _d, _s) in enumerate(batches(split, cfg.batch_windows)):
        P = run(ad, tok, capture=True)
        m = _eligible(valid, cfg.min_pos)
        keep = torch.rand(int(m.sum()), generator=gen) < keep_p
        for ly in layers:
            c = consts[ly]
            feats = _features(pp, P.xs[ly], cfg.local_window)[m][keep]
            z = P.zs[ly].flatten(-2)[m][keep]
            o = P.os[ly][m][keep]
            z_bar = preds[ly]["p0"].z_mean
            e = _layer_errors(preds[ly][pp], feats, z, o, c, z_bar @ c.w + c.b, z_bar)[0]
            xs[ly].append(P.xs[ly][m][keep])
            es[ly].append(e)
        tick("gate (VAL)", bi + 1, n_batches)
    gates = {}
    for ly in layers:
        x, e = torch.cat(xs[ly])[: cfg.gate_tokens], torch.cat(es[ly])[: cfg.gate_tokens]
        gates[ly] = {t: train_gate(x, e < t) for t in cfg.sweep_taus}
    return gates


def _test_pass(ad, split, cfg, layers, preds, consts, gates, tick):
    # P0 is control C1 and the shuffled ridge control C2: both are always measured
    names = ["p0"] + [p for p in cfg.predictors if p != "p0"] + ["c2_shuffled"]
    L, taus, sweep = len(layers), cfg.taus, cfg.sweep_taus
    nt, ns = len(taus), len(sweep)
    doc_ids = {d: i for i, d in enumerate(split.docs)}
    nd = len(doc_ids)
    window = max(len(w.tokens) for w in split.windows)
    edges = [0, cfg.min_pos] if cfg.min_pos > 0 else [0]
    e0 = max(64, 2 * cfg.min_pos) if cfg.min_pos > 0 else 32
    while e0 < window:
        edges.append(e0)
        e0 *= 2
    edges.append(window)
    edges = sorted(set(edges))
    nb = len(edges) - 1
    H = ad.n_heads
    acc = {
        p: {
            "cnt": np.zeros((L, nt)),
            "cnt_raw": np.zeros((L, nt)),
            "head": np.zeros((L, H, nt)),
            "hist": np.zeros((L, len(CDF_EDGES) + 1)),
            "num": np.zeros(L),
            "den": np.zeros(L),
            "cos": np.zeros(L),
            "doc": np.zeros((nd, L, nt)),
            "bucket": np.zeros((L, nb, nt)),
        }
        for p in names
    }
    n_elig = np.zeros(L)
    doc_elig = np.zeros(nd)
    bucket_n = np.zeros(nb)
    swap = {
        "n": np.zeros(L),
        "small": np.zeros((L, nt)),
        "flag_small": np.zeros((L, nt)),
        "flag_large": np.zeros((L, nt)),
    }
    gate_acc = {
        "pos": np.zeros((L, ns, GATE_BINS)),
        "neg": np.zeros((L, ns, GATE_BINS)),
        "tp": np.zeros((L, ns)),
        "fp": np.zeros((L, ns)),
        "fn": np.zeros((L, ns)),
    }
    e_store: list[torch.Tensor] = []  # per batch (B, T, L): oracle error of the patch predictor
    nll_clean: list[torch.Tensor] = []
    pp = cfg.patch_predictor
    n_batches = math.ceil(len(split.windows) / cfg.batch_windows)
    for bi, (tok, valid, bdocs, _s) in enumerate(batches(split, cfg.batch_windows)):
        P = run(ad, tok, capture=True)
        nll_clean.append(P.nll)
        B, T = tok.shape
        pos = torch.arange(T)[None].expand(B, T)
        m = _eligible(valid, cfg.min_pos)
        vpos = pos[valid]
        bidx = np.searchsorted(edges, vpos.numpy(), side="right") - 1
        bidx = np.clip(bidx, 0, nb - 1)
        elig_v = m[valid].numpy()
        doc_v = np.array([doc_ids[int(d)] for d in bdocs])[np.nonzero(valid.numpy())[0]]
        np.add.at(bucket_n, bidx, 1)
        n_elig += elig_v.sum()
        np.add.at(doc_elig, doc_v[elig_v], 1)
        # C3 partner: the next window of the batch from another document
        partner = torch.roll(torch.arange(B), -1)
        other = (bdocs != bdocs[partner])[:, None] & valid[partner] & m
        e_batch = torch.full((B, T, L), torch.inf)
        for li, ly in enumerate(layers):
            c = consts[ly]
            z_bar = preds[ly]["p0"].z_mean
            o_bar = z_bar @ c.w + c.b
            xv = P.xs[ly][valid]
            zv = P.zs[ly].flatten(-2)[valid]
            ov = P.os[ly][valid]
            local = lagged(P.xs[ly], cfg.local_window)[valid] if "plocal" in names else None
            for p in names:
                feats = local if p == "plocal" else xv
                e_c, e_r, cos, e_h, num, den = _layer_errors(
                    preds[ly][p], feats, zv, ov, c, o_bar, z_bar
                )
                a = acc[p]
                ec, er = e_c.numpy(), e_r.numpy()
                ce, cr, eh = ec[elig_v], er[elig_v], e_h.numpy()[elig_v]
                for ti, t in enumerate(taus):
                    below = ec < t
                    a["cnt"][li, ti] += (ce < t).sum()
                    a["cnt_raw"][li, ti] += (cr < t).sum()
                    a["head"][li, :, ti] += (eh < t).sum(0)
                    np.add.at(a["doc"][:, li, ti], doc_v[elig_v], below[elig_v])
                    np.add.at(a["bucket"][li, :, ti], bidx, below)
                with np.errstate(divide="ignore"):
                    lg = np.log10(ce)
                a["hist"][li] += np.bincount(
                    np.searchsorted(CDF_EDGES, lg, side="right"), minlength=len(CDF_EDGES) + 1
                )
                a["num"][li] += float(num[elig_v].sum())
                a["den"][li] += float(den[elig_v].sum())
                a["cos"][li] += float(cos[elig_v].sum())
                if p == pp:
                    full = torch.full((B, T), torch.inf)
                    full[valid] = e_c
                    e_batch[:, :, li] = full
            if cfg.context_swap and bool(other.any()):
                z_sw = swapped_context_z(ad, ly, P.xs[ly], P.xs[ly][partner])
                o_sw = attention_output(ad, ly, z_sw)
                D = _ratio(((P.os[ly] - o_sw) ** 2).sum(-1), ((P.os[ly] - o_bar) ** 2).sum(-1))[
                    other
                ].numpy()
                ep = e_batch[:, :, li][other].numpy()
                swap["n"][li] += D.size
                for ti, t in enumerate(taus):
                    swap["small"][li, ti] += (D < t).sum()
                    swap["flag_small"][li, ti] += ((ep < t) & (D < t)).sum()
                    swap["flag_large"][li, ti] += ((ep < t) & (D >= t)).sum()
            if gates:
                xe = P.xs[ly][m]
                ee = e_batch[:, :, li][m]
                for si, t in enumerate(sweep):
                    prob = gates[ly][t].proba(xe).numpy()
                    lab = (ee < t).numpy()
                    bins = np.clip((prob * GATE_BINS).astype(int), 0, GATE_BINS - 1)
                    gate_acc["pos"][li, si] += np.bincount(bins[lab], minlength=GATE_BINS)
                    gate_acc["neg"][li, si] += np.bincount(bins[~lab], minlength=GATE_BINS)
                    on = prob >= 0.5
                    gate_acc["tp"][li, si] += (on & lab).sum()
                    gate_acc["fp"][li, si] += (on & ~lab).sum()
                    gate_acc["fn"][li, si] += (~on & lab).sum()
        e_store.append(e_batch)
        tick("TEST", bi + 1, n_batches)
    return {
        "acc": acc,
        "n_elig": n_elig,
        "doc_elig": doc_elig,
        "bucket_n": bucket_n,
        "edges": edges,
        "swap": swap,
        "gate": gate_acc,
        "e_store": e_store,
        "nll_clean": nll_clean,
        "doc_ids": doc_ids,
        "names": names,
    }


# --------------------------------------------------------------------------------- assembly


def _boot_fraction(doc_cnt: np.ndarray, doc_n: np.ndarray, n_res: int, seed: int):
    """Bootstrap CI over documents of sum(cnt)/sum(n); ``doc_cnt`` is ``(docs, ...)``."""
    nd = doc_n.shape[0]
    if nd < 2 or n_res == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, nd, size=(n_res, nd))
    num = doc_cnt[idx].sum(1)
    den = doc_n[idx].sum(1)
    den = den.reshape(den.shape + (1,) * (num.ndim - den.ndim))
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _assemble(loaded, text, splits, cfg, window, layers, preds, fit_info, test) -> dict:
    ad = loaded.adapter
    acc, n_el = test["acc"], test["n_elig"]
    taus = cfg.taus
    L = len(layers)
    if n_el.max() == 0:
        raise CramError(
            f"no TEST position at or after --min-pos {cfg.min_pos}; lower it or use longer windows"
        )

    def frac(cnt):  # (L, nt) counts -> (L, nt) fractions
        return cnt / np.maximum(n_el[:, None], 1)

    layer_out = []
    for li, ly in enumerate(layers):
        pl = {}
        for p in test["names"]:
            a = acc[p]
            r2 = 1.0 - a["num"][li] / a["den"][li] if a["den"][li] > 0 else None
            pl[p] = {
                "pi": {_key(t): float(frac(a["cnt"])[li, ti]) for ti, t in enumerate(taus)},
                "pi_raw": {_key(t): float(frac(a["cnt_raw"])[li, ti]) for ti, t in enumerate(taus)},
                "r2": r2,
                "cos": float(a["cos"][li] / max(n_el[li], 1)),
                "heads": {
                    _key(t): [float(v) for v in a["head"][li, :, ti] / max(n_el[li], 1)]
                    for ti, t in enumerate(taus)
                },
                **fit_info[ly].get(p, {}),
            }
        sw = test["swap"]
        swap_l = None
        if cfg.context_swap and sw["n"][li] > 0:
            n = sw["n"][li]
            swap_l = {
                "n": int(n),
                "d_small": {_key(t): float(sw["small"][li, ti] / n) for ti, t in enumerate(taus)},
                "flag_and_d_small": {
                    _key(t): float(sw["flag_small"][li, ti] / n) for ti, t in enumerate(taus)
                },
                "flag_and_d_large": {
                    _key(t): float(sw["flag_large"][li, ti] / n) for ti, t in enumerate(taus)
                },
            }
        layer_out.append({"layer": ly, "predictors": pl, "context_swap": swap_l})

    overall = {}
    doc_n = test["doc_elig"]
    for pi_, p in enumerate(test["names"]):
        a = acc[p]
        fr = frac(a["cnt"]).mean(0)
        # overall per document: sum over layers of counts / (L * eligible tokens)
        boot = _boot_fraction(a["doc"].sum(1), doc_n * L, cfg.bootstrap, cfg.seed + 11 + pi_)
        r2s = [x["predictors"][p]["r2"] for x in layer_out if x["predictors"][p]["r2"] is not None]
        overall[p] = {
            "pi": {_key(t): float(fr[ti]) for ti, t in enumerate(taus)},
            "pi_ci": (
                {_key(t): list(percentile_ci(boot[:, ti])) for ti, t in enumerate(taus)}
                if boot is not None
                else None
            ),
            "pi_raw": {_key(t): float(frac(a["cnt_raw"]).mean(0)[ti]) for ti, t in enumerate(taus)},
            "r2": float(np.mean(r2s)) if r2s else None,
            "cos": float(np.mean([x["predictors"][p]["cos"] for x in layer_out])),
        }

    edges = test["edges"]
    buckets = []
    for bi in range(len(edges) - 1):
        n = test["bucket_n"][bi]
        if n == 0:
            continue
        buckets.append(
            {
                "lo": int(edges[bi]),
                "hi": int(edges[bi + 1]),
                "n": int(n),
                "pi": {
                    p: {
                        _key(t): float(acc[p]["bucket"][:, bi, ti].mean() / n)
                        for ti, t in enumerate(taus)
                    }
                    for p in test["names"]
                },
            }
        )
    cdf = {"log10_e": [float(x) for x in CDF_EDGES], "predictors": {}}
    for p in test["names"]:
        h = acc[p]["hist"]  # (L, len(edges)+1): bin i counts edges[i-1] <= lg < edges[i]
        cum = np.cumsum(h, axis=1)[:, :-1] / np.maximum(
            h.sum(1, keepdims=True), 1
        )  # P(log10 e < edge)
        cdf["predictors"][p] = {
            "layers": [[round(float(v), 5) for v in row] for row in cum],
            "overall": [round(float(v), 5) for v in cum.mean(0)],
        }
    sw = test["swap"]
    c3 = None
    if cfg.context_swap and sw["n"].sum() > 0:
        c3 = {
            "what": "D_t = |o(ctx) - o(ctx')|^2 / |o - o_bar|^2 with keys/values from another TEST document",
            "d_small": {
                _key(t): float(np.mean(sw["small"][:, ti] / np.maximum(sw["n"], 1)))
                for ti, t in enumerate(taus)
            },
            "flag_and_d_small": {
                _key(t): float(np.mean(sw["flag_small"][:, ti] / np.maximum(sw["n"], 1)))
                for ti, t in enumerate(taus)
            },
            "flag_and_d_large": {
                _key(t): float(np.mean(sw["flag_large"][:, ti] / np.maximum(sw["n"], 1)))
                for ti, t in enumerate(taus)
            },
            "n": int(sw["n"].sum()),
        }
    return {
        "model": {
            "path": loaded.path,
            "source": loaded.source,
            "n_layers": ad.n_layers,
            "n_heads": ad.n_heads,
            "d_model": ad.d_model,
            "tokenizer": loaded.tokenizer,
            "step": loaded.step,
        },
        "data": {
            "corpus": str(text) if text is not None else "bundled default corpus",
            "window": window,
            "tokens": {k: s.n_tokens for k, s in splits.items()},
            "documents": {k: len(s.docs) for k, s in splits.items()},
            "eligible_test_positions": int(n_el[0]),
        },
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "layers_measured": layers,
        "overall": overall,
        "layers": layer_out,
        "controls": {
            "c1_constant": {"pi": overall["p0"]["pi"], "pi_ci": overall["p0"]["pi_ci"]},
            "c2_shuffled": {
                "pi": overall["c2_shuffled"]["pi"],
                "pi_ci": overall["c2_shuffled"]["pi_ci"],
            },
            "c3_context_swap": c3,
            "c4_position": {"min_pos": cfg.min_pos, "buckets": buckets},
        },
        "cdf": cdf,
    }


# --------------------------------------------------------------------------------- patching


def _patched_pass(ad, split, cfg, layers, preds, test, flag_fn, only_layer=None, predictor=None):
    """One TEST pass with o_t <- o_hat_t where ``flag_fn(batch, li, x)`` is True.

    Returns per-document arrays: flagged counts (summed over layers), ΔNLL sums, NLL counts, and
    the attention FLOPs saved and spent (C7). ``predictor`` overrides the patch predictor.
    """
    pp = predictor or cfg.patch_predictor
    doc_ids = test["doc_ids"]
    nd = len(doc_ids)
    flagged = np.zeros(nd)
    dnll = np.zeros(nd)
    nll_n = np.zeros(nd)
    nll_base = np.zeros(nd)
    saved = 0.0
    total_attn = 0.0
    n_flag = 0
    d = ad.d_model
    for bi, (tok, valid, bdocs, _s) in enumerate(batches(split, cfg.batch_windows)):
        B, T = tok.shape
        m = _eligible(valid, cfg.min_pos)
        nll_ok = m.clone()
        nll_ok[:, :-1] &= valid[:, 1:]
        nll_ok[:, -1] = False
        drow = np.array([doc_ids[int(x)] for x in bdocs])
        t_keys = torch.arange(1, T + 1, dtype=torch.float64)[None].expand(B, T)
        flags_b = {}

        def patch(layer, x, o, bi=bi, m=m, flags_b=flags_b):
            if layer not in layers or (only_layer is not None and layer != only_layer):
                return None
            li = layers.index(layer)
            f = flag_fn(bi, li, layer, x) & m
            flags_b[li] = f
            if not bool(f.any()):
                return None
            feats = _features(pp, x, cfg.local_window)
            c_w, c_b = ad.w_o(layer), ad.b_o(layer)
            o_hat = preds[layer][pp].predict(feats[f]) @ c_w + c_b
            o = o.clone()
            o[f] = o_hat
            return o

        P = run(ad, tok, patch=patch)
        delta = (P.nll - test["nll_clean"][bi]).double()
        for b in range(B):
            ok = nll_ok[b]
            dnll[drow[b]] += float(delta[b][ok].sum())
            nll_n[drow[b]] += int(ok.sum())
            nll_base[drow[b]] += float(test["nll_clean"][bi][b][ok].double().sum())
        n_layers_here = 1 if only_layer is not None else len(layers)
        total_attn += float(((8 * d * d + 4 * d * t_keys)[m]).sum()) * n_layers_here
        for f in flags_b.values():
            for b in range(B):
                flagged[drow[b]] += int(f[b].sum())
            saved += float(((4 * d * d + 4 * d * t_keys)[f]).sum())
            n_flag += int(f.sum())
    return {
        "flagged": flagged,
        "dnll": dnll,
        "nll_n": nll_n,
        "nll_base": nll_base,
        "saved": saved,
        "total_attn": total_attn,
        "n_flag": n_flag,
    }


def _summ(r, doc_elig, L):
    frac = r["flagged"].sum() / max(doc_elig.sum() * L, 1)
    n = r["nll_n"].sum()
    dn = r["dnll"].sum() / n if n else float("nan")
    base = r["nll_base"].sum() / n if n else float("nan")
    return float(frac), float(dn), float(dn / base) if base and math.isfinite(base) else None


def _headline(runs, taus, doc_elig, L, budget, n_res, seed):
    """Largest fraction with ΔNLL <= budget over the sweep, with a document bootstrap CI."""
    pts = [_summ(r, doc_elig, L) for r in runs]
    ok = [i for i, (f, dn, _) in enumerate(pts) if dn <= budget]
    best = max(ok, key=lambda i: pts[i][0]) if ok else None
    ci = None
    nd = doc_elig.shape[0]
    if n_res and nd >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, nd, size=(n_res, nd))
        fl = np.stack([r["flagged"] for r in runs], 1)  # (docs, S)
        dn = np.stack([r["dnll"] for r in runs], 1)
        nn_ = runs[0]["nll_n"]
        f_b = fl[idx].sum(1) / np.maximum(doc_elig[idx].sum(1) * L, 1)[:, None]  # (R, S)
        d_b = dn[idx].sum(1) / np.maximum(nn_[idx].sum(1), 1)[:, None]
        head = np.where(d_b <= budget, f_b, 0.0).max(1)
        ci = list(percentile_ci(head))
    return pts, best, ci


def _patching(ad, split, cfg, layers, preds, gates, test, result, tick):
    L = len(layers)
    sweep = cfg.sweep_taus
    doc_elig = test["doc_elig"]
    e_store = test["e_store"]
    n_runs = len(sweep) * (2 if gates else 1)
    done = 0
    oracle = []
    for t in sweep:
        oracle.append(
            _patched_pass(
                ad,
                split,
                cfg,
                layers,
                preds,
                test,
                lambda bi, li, ly, x, t=t: e_store[bi][:, :, li] < t,
            )
        )
        done += 1
        tick("patch (C5)", done, n_runs)
    pts, best, ci = _headline(oracle, sweep, doc_elig, L, cfg.budget, cfg.bootstrap, cfg.seed + 101)
    pred_cost = preds[layers[0]][cfg.patch_predictor].flops_per_token
    sweep_out = []
    for t, (f, dn, rel), r in zip(sweep, pts, oracle):
        sweep_out.append(
            {
                "tau": t,
                "fraction": f,
                "dnll": dn,
                "dnll_rel": rel,
                **_cost(r, pred_cost, 0.0, doc_elig, L),
            }
        )
    if best is not None:
        tau_star = sweep[best]
        head = {
            "fraction": pts[best][0],
            "ci": ci,
            "dnll": pts[best][1],
            "dnll_rel": pts[best][2],
            "tau": tau_star,
            "feasible": True,
            # the largest tau tried still met the budget: the headline is a lower bound
            "capped": tau_star == max(sweep),
        }
    else:
        tau_star = min(sweep)
        head = {
            "fraction": 0.0,
            "ci": ci,
            "dnll": None,
            "dnll_rel": None,
            "tau": None,
            "feasible": False,
            "capped": False,
        }
    head.update(
        {
            "predictor": cfg.patch_predictor,
            "budget": cfg.budget,
            "flags": "oracle (e_t < tau)",
            "n_test_docs": int(doc_elig.shape[0]),
        }
    )
    result["headline"] = head
    c5 = {
        "predictor": cfg.patch_predictor,
        "budget": cfg.budget,
        "sweep": sweep_out,
        "per_layer": None,
    }
    if cfg.per_layer_patch:
        per = []
        for li, ly in enumerate(layers):
            r = _patched_pass(
                ad,
                split,
                cfg,
                layers,
                preds,
                test,
                lambda bi, li_, ly_, x, t=tau_star: e_store[bi][:, :, li_] < t,
                only_layer=ly,
            )
            f, dn, rel = _summ(r, doc_elig, 1)
            per.append({"layer": ly, "tau": tau_star, "fraction": f, "dnll": dn, "dnll_rel": rel})
            result["layers"][li]["patch_alone"] = per[-1]
            tick("patch per layer", li + 1, L)
        c5["per_layer"] = per
    # how much the model uses attention at all: every eligible position of every measured layer
    # replaced by the patch predictor, and by the constant (mean ablation)
    refs = {}
    for name in (cfg.patch_predictor, "p0"):
        r = _patched_pass(
            ad, split, cfg, layers, preds, test, lambda bi, li, ly, x: torch.ones(x.shape[:2], dtype=torch.bool),
            predictor=name,
        )  # fmt: skip
        f, dn, rel = _summ(r, doc_elig, L)
        refs[f"{name}_everywhere"] = {"fraction": f, "dnll": dn, "dnll_rel": rel}
        tick("patch references", len(refs), 2)
    c5["everywhere"] = refs
    # if mean-ablating every attention output fits the budget, the budget does not constrain
    # anything and the headline says more about the budget than about redundancy
    result["headline"]["budget_binding"] = refs["p0_everywhere"]["dnll"] > cfg.budget
    result["controls"]["c5_patching"] = c5
    result["controls"]["c6_gate"] = None
    if gates:
        g_runs = []
        for t in sweep:
            g_runs.append(
                _patched_pass(
                    ad,
                    split,
                    cfg,
                    layers,
                    preds,
                    test,
                    lambda bi, li, ly, x, t=t: gates[ly][t].proba(x) >= 0.5,
                )
            )
            done += 1
            tick("patch (C5)", done, n_runs)
        gpts, gbest, gci = _headline(
            g_runs, sweep, doc_elig, L, cfg.budget, cfg.bootstrap, cfg.seed + 202
        )
        ga = test["gate"]
        gate_cost = next(iter(gates[layers[0]].values())).flops_per_token
        gsweep = []
        for si, (t, (f, dn, rel), r) in enumerate(zip(sweep, gpts, g_runs)):
            tp, fp, fn = ga["tp"][:, si].sum(), ga["fp"][:, si].sum(), ga["fn"][:, si].sum()
            aucs = [_binned_auc(ga["pos"][li, si], ga["neg"][li, si]) for li in range(L)]
            aucs = [a for a in aucs if a is not None]
            gsweep.append(
                {
                    "tau": t,
                    "fraction": f,
                    "dnll": dn,
                    "dnll_rel": rel,
                    "precision": float(tp / (tp + fp)) if tp + fp else None,
                    "recall": float(tp / (tp + fn)) if tp + fn else None,
                    "auc": float(np.mean(aucs)) if aucs else None,
                    **_cost(r, pred_cost, gate_cost, doc_elig, L),
                }
            )
        ghead = {
            "fraction": gpts[gbest][0] if gbest is not None else 0.0,
            "ci": gci,
            "dnll": gpts[gbest][1] if gbest is not None else None,
            "tau": sweep[gbest] if gbest is not None else None,
            "feasible": gbest is not None,
            "capped": gbest is not None and sweep[gbest] == max(sweep),
        }
        result["controls"]["c6_gate"] = {
            "what": "logistic gate g(x) >= 0.5 trained on VAL to predict 1[e_t < tau], applied online",
            "sweep": gsweep,
            "headline": ghead,
        }
    d = ad.d_model
    ref = next((s for s in sweep_out if s["tau"] == tau_star), sweep_out[0])
    result["controls"]["c7_cost"] = {
        "d": d,
        "predictor_flops_per_token": pred_cost,
        "gate_flops_per_token": (
            next(iter(gates[layers[0]].values())).flops_per_token if gates else None
        ),
        "attention_flops_per_token": "8 d^2 + 4 d t (t = number of keys); skipping saves 4 d^2 + 4 d t",
        "tau": tau_star,
        "net_saving_oracle": ref["net_saving"],
        "net_saving_gate": (
            next(
                (s for s in result["controls"]["c6_gate"]["sweep"] if s["tau"] == tau_star), {}
            ).get("net_saving")
            if gates
            else None
        ),
    }


def _cost(r, pred_cost, gate_cost, doc_elig, L):
    tot = r["total_attn"]
    elig = doc_elig.sum() * L
    spent = r["n_flag"] * pred_cost + elig * gate_cost
    return {
        "saved_fraction": r["saved"] / tot if tot else None,
        "net_saving": (r["saved"] - spent) / tot if tot else None,
    }


def _binned_auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    n1, n0 = pos.sum(), neg.sum()
    if n1 == 0 or n0 == 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(((below + 0.5 * neg) * pos).sum() / (n1 * n0))


__all__ = ["RedundancyConfig", "measure_redundancy", "PREDICTORS"]

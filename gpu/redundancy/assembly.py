"""From the clean TEST pass's counts (:class:`cramkit.gpu.redundancy.passes.Tally`) to the
descriptive sections of the result (docs/redundancy.md, "Output"): ``layers``, ``overall``, the
controls C1-C4 and the error CDFs, each built by its own function.

Fractions are over eligible positions of the measured layers; "overall" is the mean over layers
(each layer has the same attention FLOPs); CIs are percentile bootstraps over TEST documents.
"""

from __future__ import annotations

import numpy as np

from cramkit.errors import CramError
from cramkit.gpu.redundancy.config import RedundancyConfig
from cramkit.gpu.redundancy.passes import CDF_EDGES, Tally
from cramkit.theory.stats import bootstrap_ratio, percentile_ci

# C3 JSON key -> the Tally.swap counter behind it (P(D<tau), P(e<tau, D<tau), P(e<tau, D>=tau))
SWAP_KEYS = (("d_small", "small"), ("flag_and_d_small", "flag_small"), ("flag_and_d_large", "flag_large"))


def key(t: float) -> str:
    """A threshold as a JSON key ("0.1")."""
    return f"{t:g}"


def boot_fraction(doc_cnt: np.ndarray, doc_n: np.ndarray, n_res: int, seed: int):
    """Bootstrap resamples over documents of sum(cnt)/sum(n); ``doc_cnt`` is ``(docs, ...)``."""
    nd = doc_n.shape[0]
    if nd < 2 or n_res == 0:
        return None
    return bootstrap_ratio(doc_cnt, doc_n, n_resamples=n_res, seed=seed)


def check_positions(st: Tally, min_pos: int) -> None:
    if st.n_elig.max() == 0:
        raise CramError(f"no TEST position at or after --min-pos {min_pos}; lower it or use longer windows")


def _fractions(st: Tally, cnt: np.ndarray) -> np.ndarray:
    """(L, nt) counts -> (L, nt) fractions of the eligible positions of each layer."""
    return cnt / np.maximum(st.n_elig[:, None], 1)


def layer_rows(st: Tally, cfg: RedundancyConfig, layers: list[int], fit_info: dict[int, dict]) -> list[dict]:
    """``layers[i]``: per predictor pi, pi_raw, R^2, cosine, per-head pi and the fit's choices;
    the layer's context swap (C3)."""
    taus = cfg.taus
    rows = []
    for li, ly in enumerate(layers):
        n = max(st.n_elig[li], 1)
        pl = {}
        for p in st.names:
            a = st.acc[p]
            pl[p] = {
                "pi": {key(t): float(_fractions(st, a["cnt"])[li, ti]) for ti, t in enumerate(taus)},
                "pi_raw": {key(t): float(_fractions(st, a["cnt_raw"])[li, ti]) for ti, t in enumerate(taus)},
                "r2": 1.0 - a["num"][li] / a["den"][li] if a["den"][li] > 0 else None,
                "cos": float(a["cos"][li] / n),
                "heads": {key(t): [float(v) for v in a["head"][li, :, ti] / n] for ti, t in enumerate(taus)},
                **fit_info[ly].get(p, {}),
            }
        rows.append({"layer": ly, "predictors": pl, "context_swap": _layer_swap(st, cfg, li)})
    return rows


def _layer_swap(st: Tally, cfg: RedundancyConfig, li: int) -> dict | None:
    sw = st.swap
    if not cfg.context_swap or sw["n"][li] == 0:
        return None
    n = sw["n"][li]
    out: dict = {"n": int(n)}
    for name, counts in SWAP_KEYS:
        out[name] = {key(t): float(sw[counts][li, ti] / n) for ti, t in enumerate(cfg.taus)}
    return out


def overall(st: Tally, cfg: RedundancyConfig, rows: list[dict]) -> dict[str, dict]:
    """``overall[p]``: the mean over layers of pi (with a document-bootstrap CI), pi_raw, R^2, cos."""
    L, taus = len(rows), cfg.taus
    out = {}
    for pi_, p in enumerate(st.names):
        a = st.acc[p]
        fr = _fractions(st, a["cnt"]).mean(0)
        # overall per document: sum over layers of counts / (L * eligible tokens)
        boot = boot_fraction(a["doc"].sum(1), st.doc_elig * L, cfg.bootstrap, cfg.seed + 11 + pi_)
        r2s = [x["predictors"][p]["r2"] for x in rows if x["predictors"][p]["r2"] is not None]
        out[p] = {
            "pi": {key(t): float(fr[ti]) for ti, t in enumerate(taus)},
            "pi_ci": (
                {key(t): list(percentile_ci(boot[:, ti])) for ti, t in enumerate(taus)} if boot is not None else None
            ),
            "pi_raw": {key(t): float(_fractions(st, a["cnt_raw"]).mean(0)[ti]) for ti, t in enumerate(taus)},
            "r2": float(np.mean(r2s)) if r2s else None,
            "cos": float(np.mean([x["predictors"][p]["cos"] for x in rows])),
        }
    return out


def position_buckets(st: Tally, cfg: RedundancyConfig) -> list[dict]:
    """Control C4: pi per position bucket (mean over layers), for every predictor."""
    out = []
    for bi in range(len(st.edges) - 1):
        n = st.bucket_n[bi]
        if n == 0:
            continue
        pi = {p: {key(t): float(st.acc[p]["bucket"][:, bi, ti].mean() / n) for ti, t in enumerate(cfg.taus)}
              for p in st.names}  # fmt: skip
        out.append({"lo": int(st.edges[bi]), "hi": int(st.edges[bi + 1]), "n": int(n), "pi": pi})
    return out


def error_cdf(st: Tally) -> dict:
    """P(log10 e < edge) per predictor, per layer and averaged over layers."""
    cdf: dict = {"log10_e": [float(x) for x in CDF_EDGES], "predictors": {}}
    for p in st.names:
        h = st.acc[p]["hist"]  # (L, len(edges)+1): bin i counts edges[i-1] <= lg < edges[i]
        cum = np.cumsum(h, axis=1)[:, :-1] / np.maximum(h.sum(1, keepdims=True), 1)
        cdf["predictors"][p] = {
            "layers": [[round(float(v), 5) for v in row] for row in cum],
            "overall": [round(float(v), 5) for v in cum.mean(0)],
        }
    return cdf


def context_swap(st: Tally, cfg: RedundancyConfig) -> dict | None:
    """Control C3 over all layers: how often the output barely moves with another document's
    keys and values, alone and together with a redundancy flag."""
    sw = st.swap
    if not cfg.context_swap or sw["n"].sum() == 0:
        return None
    n = np.maximum(sw["n"], 1)
    out: dict = {"what": "D_t = |o(ctx) - o(ctx')|^2 / |o - o_bar|^2 with keys/values from another TEST document"}
    for name, counts in SWAP_KEYS:
        out[name] = {key(t): float(np.mean(sw[counts][:, ti] / n)) for ti, t in enumerate(cfg.taus)}
    out["n"] = int(sw["n"].sum())
    return out


def descriptive_controls(st: Tally, cfg: RedundancyConfig, over: dict) -> dict:
    """Controls C1 (constant predictor), C2 (shuffled pairs), C3 (context swap), C4 (position)."""
    return {
        "c1_constant": {"pi": over["p0"]["pi"], "pi_ci": over["p0"]["pi_ci"]},
        "c2_shuffled": {"pi": over["c2_shuffled"]["pi"], "pi_ci": over["c2_shuffled"]["pi_ci"]},
        "c3_context_swap": context_swap(st, cfg),
        "c4_position": {"min_pos": cfg.min_pos, "buckets": position_buckets(st, cfg)},
    }

"""The CR_K stream of ``cram bound`` and its criteria P3 and P4 (docs/theory.md §5, §7).

:func:`run_stream` draws ``seeds`` streams of T sequences (n = n_min, pool size ``stream_P``) and
runs CR_K with a persistent consolidation table over each; ORACLE-POS attends every recurring
slot, so its cumulative cost is known exactly. :func:`analyse_stream` checks Theorem 2 per K (P3:
A_rec^cum <= K·D_T, a flat last decade, exact recurring accuracy, episodic accuracy above its
bound) and the separation from ORACLE-POS on the stream axis (P4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from cramkit.progress import Progress, report_to
from cramkit.sim.boundcheck.common import Timer, log_grid, log_slope
from cramkit.sim.boundcheck.config import BoundConfig
from cramkit.sim.boundcheck.result import Criterion
from cramkit.sim.simulate import distinct_patterns_cum, max_episodic_multiplicity
from cramkit.sim.srcd import Batch, SRCDConfig, generate, make_world, split_seeds
from cramkit.theory import bounds
from cramkit.theory.stats import ols_slopes, percentile_ci, resample_indices

COUNT_FIELDS = ("A_rec", "A_epi", "correct_rec", "correct_epi")
BATCH_FIELDS = ("tokens", "query_pos", "query_key", "query_target", "query_recurring", "query_rank",
                "query_overridden", "binding_pos", "binding_query", "seeds")  # fmt: skip
CHUNK = 2000  # sequences generated at once


@dataclass
class StreamData:
    """Per stream s and sequence t: CR_K's counts ``counts[field][K][s, t]``, the number of
    distinct pool patterns queried so far ``D[s, t]`` and the largest episodic multiplicity R[s]."""

    scfg: SRCDConfig
    counts: dict[str, dict[int, np.ndarray]]
    D: np.ndarray
    R: np.ndarray


@dataclass
class StreamAnalysis:
    p3: Criterion
    p4: Criterion
    summary: dict[str, Any]  # the "stream" object of the JSON
    curves: dict[str, list]  # cumulative recurring attention on a log grid of T
    cr_pass: dict[int, bool]  # P3 per K (the verdict of CR_K's row)


def run_stream(cfg: BoundConfig, timer: Timer, progress: Progress | None = None) -> StreamData:
    """Run CR_K for every K over ``seeds`` streams of T sequences."""
    tick = report_to(progress)
    scfg = cfg.stream_srcd()
    S, T = cfg.seeds, cfg.T
    data = StreamData(
        scfg,
        {f: {K: np.zeros((S, T), np.int64) for K in cfg.Ks} for f in COUNT_FIELDS},
        np.zeros((S, T), np.int64),
        np.zeros(S, np.int64),
    )
    for s in range(S):
        tick("stream", s, S)
        _run_one_stream(cfg, timer, data, s)
    tick("stream", S, S)
    return data


def _run_one_stream(cfg: BoundConfig, timer: Timer, data: StreamData, s: int) -> None:
    scfg, T = data.scfg, cfg.T
    world = make_world(scfg, cfg.seed + s)
    states = {K: None for K in cfg.Ks}
    parts = []
    for t0 in range(0, T, CHUNK):
        cnt = min(CHUNK, T - t0)
        batch = generate(
            scfg, world, split_seeds("iid", cnt, start=(1 << 36) + (cfg.seed + s) * T + t0)
        )
        parts.append(batch)
        for K in cfg.Ks:
            run = timer.cr(scfg, batch, K, states[K])
            states[K] = run.state
            for f in COUNT_FIELDS:
                data.counts[f][K][s, t0 : t0 + cnt] = getattr(run.counts, f)
    whole = Batch(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in BATCH_FIELDS})
    data.D[s] = distinct_patterns_cum(whole)
    data.R[s] = max_episodic_multiplicity(whole)


# ----------------------------------------------------------------------------------------------
# analysis: P3, P4
# ----------------------------------------------------------------------------------------------


@dataclass
class _Tally:
    p3_fail: list[str]
    p4_fail: list[str]
    p3_margin: float = math.inf
    p4_margin: float = math.inf


def analyse_stream(cfg: BoundConfig, st: StreamData) -> StreamAnalysis:
    """P3 and P4 for every K, the stream summary and the curves."""
    scfg, T = st.scfg, cfg.T
    Tax = np.arange(1, T + 1)
    n_rec = Tax * scfg.m_r
    static_cum = n_rec.astype(np.float64)  # ORACLE-POS attends every recurring slot
    grid = log_grid(1, T) - 1
    curves = {"T": Tax[grid].tolist(), "ORACLE-POS": static_cum[grid].tolist()}
    idx = resample_indices(cfg.seeds, cfg.n_boot, cfg.seed + 7)
    tally = _Tally([], [])
    per_k: dict[str, Any] = {}
    cr_pass: dict[int, bool] = {}
    for K in cfg.Ks:
        row, mean_cum = _analyse_k(cfg, st, K, n_rec, static_cum, idx, tally)
        per_k[f"CR_{K}"] = row
        cr_pass[K] = row["p3"]
        curves[f"CR_{K}"] = mean_cum[grid].tolist()
    p3 = Criterion(
        "P3",
        not tally.p3_fail,
        f"CR_K on {cfg.seeds} streams of T = {T} (n = {scfg.n}, P = {scfg.P}): A_rec^cum <= K·D_T at every T; "
        "CI high of the last-decade log-log slope < 0.1; acc_r = 1; acc_e >= 1 − R·v^-(K−1) − 3 SE",
        margin=tally.p3_margin if math.isfinite(tally.p3_margin) else None,
        failures=tally.p3_fail,
    )
    p4 = Criterion(
        "P4",
        not tally.p4_fail,
        "ratio of cumulative recurring attention ORACLE-POS / CR_K: log-log slope vs T over T >= 10·T_0 in [0.9, 1.1]",
        margin=tally.p4_margin if math.isfinite(tally.p4_margin) else None,
        failures=tally.p4_fail,
    )
    summary = {
        "n": scfg.n,
        "P": scfg.P,
        "T": T,
        "m_r": scfg.m_r,
        "m_e": scfg.m_e,
        "R_mean": float(st.R.mean()),
        "oracle_A_rec_cum_T": float(static_cum[-1]),
        # Theorem 1 (exact L1 form, eps = 0) summed over the stream: what any static router with
        # acc_e = 1 must pay in expectation
        "static_lower_bound_T": float(T * bounds.lower_bound_l1(scfg.m_r, scfg.m_e, 0, cfg.w)),
        "cr": per_k,
    }
    return StreamAnalysis(p3, p4, summary, curves, cr_pass)


def _analyse_k(cfg: BoundConfig, st: StreamData, K: int, n_rec: np.ndarray, static_cum: np.ndarray,
               idx: np.ndarray, tally: _Tally) -> tuple[dict[str, Any], np.ndarray]:  # fmt: skip
    """CR_K's P3 checks and P4 ratio slope; returns its JSON row and its mean cumulative curve."""
    cum = np.cumsum(st.counts["A_rec"][K], axis=1)  # (S, T)
    mean_cum = cum.mean(axis=0)
    viol = int((cum > K * st.D).sum())
    b_hat, b_ci = _last_decade_slope(cfg, cum, mean_cum, n_rec, idx)
    acc_r, acc_e, acc_e_bound, se = _stream_accuracy(cfg, st, K)
    checks = {
        "bound": viol == 0,
        "slope": b_ci[1] < 0.1,
        "acc_r": acc_r == 1,
        "acc_e": acc_e >= acc_e_bound - 3 * se,
    }
    tally.p3_margin = min(tally.p3_margin, 0.1 - b_ci[1], acc_e - (acc_e_bound - 3 * se))
    if not checks["bound"]:
        tally.p3_fail.append(f"CR_{K}: A_rec^cum > K·D_T at {viol} (stream, T) points")
    if not checks["slope"]:
        tally.p3_fail.append(f"CR_{K}: last-decade slope CI high {b_ci[1]:.4f} >= 0.1 (by {b_ci[1] - 0.1:.4f})")
    if not checks["acc_r"]:
        tally.p3_fail.append(f"CR_{K}: acc_r = {acc_r:.6f} < 1")
    if not checks["acc_e"]:
        tally.p3_fail.append(
            f"CR_{K}: acc_e = {acc_e:.5f} < 1 − R·v^-(K−1) − 3 SE = {acc_e_bound - 3 * se:.5f}"
        )
    T0, slope4, ok4 = _separation(cfg, st.scfg, K, mean_cum, static_cum, tally)
    row = {
        "A_rec_cum_T": float(mean_cum[-1]),
        "decade_slopes": _decade_slopes(cfg.T, n_rec, mean_cum),
        "K_times_D_T": float((K * st.D[:, -1]).mean()),
        "K_times_P": K * st.scfg.P,
        "bound_violations": viol,
        "last_decade_slope": b_hat,
        "last_decade_ci": list(b_ci),
        "acc_r": float(acc_r),
        "acc_e": acc_e,
        "acc_e_bound": acc_e_bound,
        "T0": T0,
        "ratio_slope": slope4,
        "p3": bool(all(checks.values())),
        "p4": ok4,
    }
    return row, mean_cum


def _last_decade_slope(cfg: BoundConfig, cum: np.ndarray, mean_cum: np.ndarray, n_rec: np.ndarray,
                       idx: np.ndarray) -> tuple[float, tuple[float, float]]:  # fmt: skip
    """Log-log slope of the cumulative curve against N_rec over the last decade of T, with a
    seed-bootstrap CI."""
    last = log_grid(max(1, cfg.T // 10), cfg.T)
    b_hat = log_slope(n_rec[last - 1], np.maximum(mean_cum[last - 1], 1e-300))
    boot = cum[:, last - 1][idx].mean(axis=1)  # (n_boot, len(last))
    slopes = ols_slopes(np.log(n_rec[last - 1]), np.log(np.maximum(boot, 1e-300)))
    return b_hat, percentile_ci(slopes, cfg.level)


def _stream_accuracy(cfg: BoundConfig, st: StreamData, K: int) -> tuple[float, float, float, float]:
    """acc_r over all streams, mean acc_e per stream with its SE, and Theorem 2's bound on acc_e."""
    S, T, scfg = cfg.seeds, cfg.T, st.scfg
    acc_r = st.counts["correct_rec"][K].sum() / (S * T * scfg.m_r)
    acc_e_s = st.counts["correct_epi"][K].sum(axis=1) / (T * scfg.m_e)  # per stream
    acc_e = float(acc_e_s.mean())
    se = float(acc_e_s.std(ddof=1) / math.sqrt(S))
    R_mean = float(st.R.mean())
    acc_e_bound = float(1 - Fraction(R_mean).limit_denominator(10**6) / scfg.v ** (K - 1))
    return acc_r, acc_e, acc_e_bound, se


def _separation(cfg: BoundConfig, scfg: SRCDConfig, K: int, mean_cum: np.ndarray,
                static_cum: np.ndarray, tally: _Tally) -> tuple[int | None, float | None, bool]:  # fmt: skip
    """P4: after the warm-up T_0 (CR_K's curve at 90% of K·P), the ratio ORACLE-POS / CR_K grows
    like T: its log-log slope over T >= 10·T_0 lies in [0.9, 1.1]."""
    T = cfg.T
    reach = np.flatnonzero(mean_cum >= 0.9 * K * scfg.P)
    T0 = int(reach[0]) + 1 if reach.size else None
    if T0 is None or 10 * T0 * 2 > T:
        tally.p4_fail.append(
            f"CR_{K}: warm-up T_0 = {T0} leaves no window T >= 10·T_0 within T = {T} "
            "(need T >= 20·T_0; raise T or lower stream_P)"
        )
        return T0, None, False
    win = log_grid(10 * T0, T)
    slope4 = log_slope(win.astype(np.float64), static_cum[win - 1] / mean_cum[win - 1])
    tally.p4_margin = min(tally.p4_margin, slope4 - 0.9, 1.1 - slope4)
    ok4 = 0.9 <= slope4 <= 1.1
    if not ok4:
        tally.p4_fail.append(f"CR_{K}: ratio slope {slope4:.4f} outside [0.9, 1.1]")
    return T0, slope4, ok4


def _decade_slopes(T: int, n_rec: np.ndarray, mean_cum: np.ndarray) -> dict[str, float]:
    """The log-log slope of A_rec^cum against N_rec separately for each decade of T
    (docs/theory.md §7)."""
    out, lo = {}, 1
    while lo * 10 <= T:
        g = log_grid(lo, lo * 10)
        out[f"{lo}-{lo * 10}"] = log_slope(n_rec[g - 1].astype(np.float64), mean_cum[g - 1])
        lo *= 10
    return out

"""Shared statistics: OLS line fits and percentile bootstrap confidence intervals.

Every bootstrap in cram resamples exchangeable units (seeds, runs, documents, sequences) with
:func:`resample_indices`, so one seed gives the same resamples everywhere. Used by ``sim`` (slopes
of attention against n, over seeds), ``gpu`` (ratios over documents or sequences:
:func:`bootstrap_ratio`) and the curve fitters (refits over runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cramkit.errors import CramError


@dataclass(frozen=True)
class LineFit:
    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    n_resamples: int


def ols_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept``; returns ``(slope, intercept)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise CramError(f"ols_line needs two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    if x.size < 2 or np.ptp(x) == 0:
        raise CramError("ols_line needs at least two distinct x values")
    xm, ym = x.mean(), y.mean()
    slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


def ols_slopes(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """OLS slopes of each row of ``ys`` (shape ``(R, n_x)``) against ``x`` at once."""
    x = np.asarray(x, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    xc = x - x.mean()
    return (ys - ys.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile interval of bootstrap ``samples`` (along axis 0)."""
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [50 * (1 - level), 50 * (1 + level)], axis=0)
    return float(lo), float(hi)


def resample_indices(n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_units)`` unit indices drawn with replacement (``default_rng(seed)``)."""
    if n_units < 1:
        raise CramError(f"a bootstrap needs at least 1 unit, got {n_units}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_units, size=(n_resamples, n_units))


def bootstrap(
    stat: Callable[[np.ndarray], np.ndarray | float],
    n_units: int,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Percentile bootstrap over ``n_units`` exchangeable units (seeds, runs, documents).

    ``stat(idx)`` receives an index array of length ``n_units`` drawn with replacement and returns
    the statistic (a scalar or an array). Returns the ``(n_resamples, ...)`` array of statistics.
    """
    if n_units < 2:
        raise CramError(f"a bootstrap needs at least 2 units, got {n_units}")
    return np.asarray([stat(i) for i in resample_indices(n_units, n_resamples, seed)])


def bootstrap_ratio(
    num: np.ndarray, den: np.ndarray, *, n_resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """Bootstrap of the ratio of sums ``sum(num) / sum(den)`` over units (axis 0).

    ``num`` has shape ``(n_units, ...)``, ``den`` shape ``(n_units,)`` or the same as ``num``.
    Returns the ``(n_resamples, ...)`` resampled ratios, NaN where a resample's denominator is 0
    (drop them, or take :func:`percentile_ci` of the finite ones).
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.shape[:1] != den.shape[:1]:
        raise CramError(f"num and den need the same number of units, got {num.shape} and {den.shape}")
    idx = resample_indices(num.shape[0], n_resamples, seed)
    top = num[idx].sum(axis=1)
    bottom = den[idx].sum(axis=1)
    bottom = bottom.reshape(bottom.shape + (1,) * (top.ndim - bottom.ndim))
    return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def seed_bootstrap_slope(
    x: np.ndarray, y: np.ndarray, *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> LineFit:
    """OLS slope of the seed-mean of ``y`` against ``x`` with a bootstrap CI that resamples seeds.

    ``x`` has shape ``(n_x,)`` and ``y`` shape ``(n_seeds, n_x)``: one row per seed. Each
    resample draws seeds with replacement, averages them per x, and refits the line
    (vectorised: the slope is linear in the seed means).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != x.size:
        raise CramError(f"y must have shape (n_seeds, {x.size}), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise CramError("y contains NaN or inf")
    slope, intercept = ols_line(x, y.mean(axis=0))
    means = y[resample_indices(y.shape[0], n_resamples, seed)].mean(axis=1)  # (R, n_x)
    slopes = ols_slopes(x, means)
    intercepts = means.mean(axis=1) - slopes * x.mean()
    return LineFit(
        slope=slope,
        intercept=intercept,
        slope_ci=percentile_ci(slopes, level),
        intercept_ci=percentile_ci(intercepts, level),
        n_resamples=n_resamples,
    )

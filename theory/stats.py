"""Shared statistics: OLS line fits and percentile bootstrap confidence intervals.

Used by ``sim`` (slopes of attention against n, over seeds), ``gpu`` and the curve fitters.
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


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided percentile interval of bootstrap ``samples`` (along axis 0)."""
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [50 * (1 - level), 50 * (1 + level)], axis=0)
    return float(lo), float(hi)


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
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_units, size=(n_resamples, n_units))
    return np.asarray([stat(i) for i in idx])


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
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.shape[0], size=(n_resamples, y.shape[0]))
    means = y[idx].mean(axis=1)  # (R, n_x)
    xc = x - x.mean()
    slopes = (means - means.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    intercepts = means.mean(axis=1) - slopes * x.mean()
    return LineFit(
        slope=slope,
        intercept=intercept,
        slope_ci=percentile_ci(slopes, level),
        intercept_ci=percentile_ci(intercepts, level),
        n_resamples=n_resamples,
    )

"""The transition step t_c and the sharpness verdict (docs/fit-gamma.md, "Transition step and
sharpness").

t_c is where the curve falls fastest per decade: the argmax of -dE/dlog t. It is computed three
independent ways so that a disagreement shows:

1. from the M6 (Hill) fit: its parameter t_c is exactly that argmax;
2. model-free: an isotonic (non-increasing) regression of E on t by pool-adjacent-violators,
   then the steepest OLS slope against log10 t in a sliding window;
3. a changepoint: the single split of the series into two constant levels that maximises the
   likelihood (binomial, or Gaussian for value-only data), reported at the geometric mean of the
   two times around the split.

The width W = log10(t_10/t_90) (decades between 90% and 10% of the fitted drop) comes from the
better of the logistic-type fits M5/M6. The verdict "sharp" needs both W < 0.5 decades and a
logistic model that beats the power laws M1/M2 by more than 10 AIC units.
"""

from __future__ import annotations

import numpy as np

from cramkit.errors import CramError
from cramkit.theory.fit.data import CurveData

SHARP_W = 0.5
DECISIVE_DAIC = 10.0


def isotonic_decreasing(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """The weighted least-squares non-increasing fit of ``y`` (pool-adjacent-violators)."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    if y.size == 0:
        return y.copy()
    # PAVA for a non-decreasing fit of -y, then negate
    vals, wts, sizes = [], [], []
    for yi, wi in zip(-y, w):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, s2 = vals.pop(), wts.pop(), sizes.pop()
            v1, w1, s1 = vals.pop(), wts.pop(), sizes.pop()
            wt = w1 + w2
            vals.append((v1 * w1 + v2 * w2) / wt)
            wts.append(wt)
            sizes.append(s1 + s2)
    return -np.repeat(np.array(vals), sizes)


def windowed_slope_tc(t: np.ndarray, fit: np.ndarray, window: int | None = None) -> float:
    """Centre (geometric mean time) of the window where the OLS slope of ``fit`` against
    log10 t is most negative (every window at once, from prefix sums: O(n))."""
    x = np.log10(np.asarray(t, dtype=np.float64))
    y = np.asarray(fit, dtype=np.float64)
    n = x.size
    if n < 3:
        raise CramError("a windowed slope needs at least 3 points")
    m = min(window or max(3, n // 8), n)
    xs = x - x.mean()  # centred once: the window sums below then lose less to cancellation
    ys = y - y.mean()

    def window_sums(v: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(v)])
        return c[m:] - c[:-m]

    sx, sy = window_sums(xs), window_sums(ys)
    den = window_sums(xs * xs) - sx * sx / m
    num = window_sums(xs * ys) - sx * sy / m
    with np.errstate(all="ignore"):
        slopes = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)
    i = int(np.argmin(slopes))
    return float(10 ** x[i: i + m].mean())


def changepoint_tc(data: CurveData) -> float:
    """The single mean-shift changepoint by maximum likelihood (exact search over all splits,
    every split at once from prefix sums: O(n))."""
    n = len(data)
    if n < 2:
        raise CramError("a changepoint needs at least 2 points")
    if data.kind == "binomial":
        ll = _binomial_split_ll(data.k, data.n)
    else:
        w = (1.0 / data.sigma ** 2) if data.sigma is not None else np.ones(n)
        ll = _gaussian_split_ll(data.y, w)
    s = int(np.argmax(ll)) + 1  # the first point of the second segment
    return float(np.sqrt(data.t[s - 1] * data.t[s]))


def _prefix(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of v over [0, s) and [s, n) for every split s = 1..n-1."""
    c = np.cumsum(v)
    return c[:-1], c[-1] - c[:-1]


def _binomial_split_ll(k: np.ndarray, m: np.ndarray) -> np.ndarray:
    def ll(kk, mm):
        with np.errstate(all="ignore"):
            p = kk / mm
            return (np.where(kk > 0, kk * np.log(p), 0.0)
                    + np.where(kk < mm, (mm - kk) * np.log1p(-p), 0.0))  # fmt: skip

    (kl, kr), (ml, mr) = _prefix(k), _prefix(m)
    return ll(kl, ml) + ll(kr, mr)


def _gaussian_split_ll(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """-1/2 the weighted residual sum of squares about each segment's mean, per split."""
    yc = y - np.average(y, weights=w)  # centred: less cancellation in sum w y^2 - (sum w y)^2 / sum w
    (wl, wr), (sl, sr), (ql, qr) = _prefix(w), _prefix(w * yc), _prefix(w * yc * yc)
    return -0.5 * ((ql - sl * sl / wl) + (qr - sr * sr / wr))


def isotonic_width(t: np.ndarray, fit: np.ndarray) -> float | None:
    """W of the isotonic fit, normalised between its first and last value (None if flat)."""
    hi, lo = float(fit[0]), float(fit[-1])
    if hi - lo <= 0:
        return None
    s = (fit - lo) / (hi - lo)
    x = np.log10(t)

    def cross(q: float) -> float | None:
        idx = np.nonzero(s <= q)[0]
        if idx.size == 0 or idx[0] == 0:
            return None
        i = int(idx[0])
        x0, x1, s0, s1 = x[i - 1], x[i], s[i - 1], s[i]
        return float(x0 + (s0 - q) / (s0 - s1) * (x1 - x0)) if s0 != s1 else float(x1)

    x90, x10 = cross(0.9), cross(0.1)
    if x90 is None or x10 is None:
        return None
    return x10 - x90


def transition_analysis(data: CurveData, fits: dict) -> dict:
    """t_c three ways, W, and the sharpness verdict, from ``fits`` (model name -> FitResult)."""
    from cramkit.theory.curves import get_model

    w = data.n if data.kind == "binomial" else (
        1.0 / data.sigma ** 2 if data.sigma is not None else None)
    iso = isotonic_decreasing(data.y, w)
    tcs: dict[str, float | None] = {"M6": None, "isotonic": None, "changepoint": None}
    if "M6" in fits:
        tcs["M6"] = fits["M6"].params["t_c"].value
    if len(data) >= 3:
        tcs["isotonic"] = windowed_slope_tc(data.t, iso)
    if len(data) >= 2:
        tcs["changepoint"] = changepoint_tc(data)
    logistic = [m for m in ("M5", "M6") if m in fits]
    power = [m for m in ("M1", "M2") if m in fits]
    best_log = min(logistic, key=lambda m: fits[m].aic) if logistic else None
    best_pow = min(power, key=lambda m: fits[m].aic) if power else None
    W = get_model(best_log).width(fits[best_log].values) if best_log else None
    daic = (fits[best_pow].aic - fits[best_log].aic) if (best_log and best_pow) else None
    sharp = bool(W is not None and W < SHARP_W and daic is not None and daic > DECISIVE_DAIC)
    if W is None or daic is None:
        reason = "not decidable: needs a logistic fit (M5/M6) with a finite width and a power-law fit (M1/M2)"
    else:
        parts = [f"W = {W:.3g} decades ({'<' if W < SHARP_W else '>='} {SHARP_W})",
                 f"{best_log} vs {best_pow}: dAIC = {daic:.3g} ({'>' if daic > DECISIVE_DAIC else '<='} {DECISIVE_DAIC:g})"]
        reason = ("sharp: " if sharp else "not sharp: ") + "; ".join(parts)
    t_c = next((v for v in (tcs["M6"], tcs["isotonic"], tcs["changepoint"]) if v is not None), None)
    return {
        "t_c": t_c,
        "t_c_methods": tcs,
        "W": W,
        "W_model": best_log,
        "W_isotonic": isotonic_width(data.t, iso),
        "delta_aic_logistic_vs_power": daic,
        "logistic_model": best_log,
        "power_model": best_pow,
        "sharp": sharp,
        "reason": reason,
    }

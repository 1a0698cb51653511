"""Uncertainty of a fitted curve: bootstrap over runs, parametric bootstrap, profile likelihood,
and the two robustness checks (the logit least-squares cross-check, sensitivity to t_min).

* Several runs (seeds): a percentile bootstrap that resamples whole runs with replacement, pools
  them and refits (>= 2000 resamples by default); runs are the independent units, checkpoints of
  one run are not.
* One run: a parametric bootstrap (k* ~ Bin(n, E_hat) or y* = f_hat + sigma_hat * z) and, for
  each free parameter, a profile-likelihood interval: the set of values where twice the loss of
  log-likelihood, divided by the quasi-likelihood dispersion max(1, reduced chi2), stays below
  the chi2(1) quantile.

Refits start from the original optimum (one L-BFGS-B run each), which is what makes 1000 refits
of M1 on 200 points take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, least_squares
from scipy.stats import chi2 as chi2_dist

from cramkit.errors import CramError
from cramkit.progress import Progress, track
from cramkit.theory.curves import get_model
from cramkit.theory.fit.core import FitResult, Problem, _inside, fit_model, single_thread_blas
from cramkit.theory.fit.data import CurveData, pool
from cramkit.theory.stats import percentile_ci, resample_indices


@dataclass
class BootstrapResult:
    method: str
    n_resamples: int
    n_failed: int
    samples: dict[str, np.ndarray]  # parameter name -> (n_ok,) values
    curves: np.ndarray | None  # (n_ok, len(grid)) fitted curves on ``grid``
    grid: np.ndarray | None

    def ci(self, name: str, level: float = 0.95) -> tuple[float, float] | None:
        s = self.samples.get(name)
        if s is None or s.size < 2:
            return None
        return percentile_ci(s, level)

    def band(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
        if self.curves is None or self.curves.shape[0] < 2:
            return None
        lo, hi = np.percentile(self.curves, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return lo, hi


def _refit_samples(fits: list[FitResult | None], names: list[str]) -> dict[str, np.ndarray]:
    ok = [f for f in fits if f is not None]
    return {n: np.array([f.params[n].value for f in ok]) for n in names}


def bootstrap_runs(model: str, runs: list[CurveData], base: FitResult, *,
                   fixed: dict[str, float] | None = None, n_resamples: int = 2000, seed: int = 0,
                   grid: np.ndarray | None = None, progress: Progress | None = None) -> BootstrapResult:
    """Percentile bootstrap over runs: resample runs with replacement, pool, refit."""
    if len(runs) < 2:
        raise CramError("a bootstrap over runs needs at least 2 runs")
    idx = resample_indices(len(runs), n_resamples, seed)
    fits, curves = [], []
    with single_thread_blas():
        for r in track(range(n_resamples), progress, "bootstrap over runs"):
            data = pool([runs[i] for i in idx[r]])
            fits.append(_safe_refit(model, data, base, fixed))
            if fits[-1] is not None and grid is not None:
                curves.append(fits[-1].predict(grid))
    names = [n for n in get_model(model).names if not base.params[n].fixed]
    n_failed = sum(f is None for f in fits)
    return BootstrapResult("bootstrap over runs", n_resamples, n_failed, _refit_samples(fits, names),
                           np.array(curves) if curves else None, grid)


def parametric_bootstrap(model: str, data: CurveData, base: FitResult, *,
                         fixed: dict[str, float] | None = None, n_resamples: int = 2000,
                         seed: int = 0, grid: np.ndarray | None = None,
                         progress: Progress | None = None) -> BootstrapResult:
    """Simulate from the fitted curve (binomial counts, or Gaussian noise of the residual size)
    and refit each simulated data set from the original optimum."""
    rng = np.random.default_rng(seed)
    e = base.predict(data.t)
    fits, curves = [], []
    if data.kind == "binomial":
        p = np.clip(e, 0.0, 1.0)
    else:
        sd = data.sigma if data.sigma is not None else np.full(len(data), np.sqrt(base.redchi or 0.0))
        if data.sigma is not None and base.redchi is not None:
            sd = sd * np.sqrt(base.redchi)  # the same scaling the standard errors use
    with single_thread_blas():
        for _ in track(range(n_resamples), progress, "parametric bootstrap"):
            if data.kind == "binomial":
                k = rng.binomial(data.n.astype(np.int64), p).astype(np.float64)
                sim = CurveData(data.t, k / data.n, k, data.n, None, data.name, data.time_unit)
            else:
                y = e + sd * rng.standard_normal(len(data))
                sim = CurveData(data.t, y, None, None, data.sigma, data.name, data.time_unit)
            fits.append(_safe_refit(model, sim, base, fixed))
            if fits[-1] is not None and grid is not None:
                curves.append(fits[-1].predict(grid))
    names = [n for n in get_model(model).names if not base.params[n].fixed]
    n_failed = sum(f is None for f in fits)
    return BootstrapResult("parametric bootstrap", n_resamples, n_failed,
                           _refit_samples(fits, names), np.array(curves) if curves else None, grid)


def _safe_refit(model, data, base, fixed) -> FitResult | None:
    try:
        f = fit_model(model, data, fixed=fixed, x0=base.theta, with_cov=False)
    except (CramError, FloatingPointError, ValueError, np.linalg.LinAlgError):
        return None
    return f if np.isfinite(f.nll) else None


def profile_ci(model: str, data: CurveData, base: FitResult, name: str, *,
               fixed: dict[str, float] | None = None, level: float = 0.95) -> tuple[float | None, float | None]:
    """Profile-likelihood interval of parameter ``name``; an end is None where the profile does
    not cross the threshold inside the parameter's bounds."""
    prob = Problem(model, data, fixed)
    free = [p.name for p in prob.free]
    if name not in free:
        raise CramError(f"{name} is not a free parameter of {model}")
    i = free.index(name)
    crit = chi2_dist.ppf(level, 1)
    disp = max(1.0, base.redchi or 1.0) if data.kind == "binomial" else 1.0
    n = len(data)
    best_nll = base.nll
    theta_hat = base.theta.copy()
    lo_b, hi_b = prob.bounds[i]
    others = [j for j in range(len(free)) if j != i]

    def stat(v: float, warm: list[np.ndarray]) -> float:
        """2 * (loss of log-likelihood) / dispersion, minus the threshold, with name fixed at v."""
        fixed_full = dict(fixed or {})
        fixed_full[name] = float(np.exp(v)) if prob.logmask[i] else float(v)
        sub = Problem(model, data, fixed_full)
        x0 = warm[0][others]
        th, _, _ = sub.minimize(x0)
        if data.kind == "gaussian":
            from cramkit.theory.fit.core import _polish_ls
            th = _polish_ls(sub, th)
        warm[0] = np.insert(th, i, v)
        nll = sub.nll(th)
        if data.kind == "binomial":
            d = 2 * (nll - best_nll) / disp
        else:  # concentrated Gaussian likelihood: n ln(chi2 / chi2_min)
            d = n * np.log(max(2 * nll, 1e-300) / max(2 * best_nll, 1e-300))
        return d - crit

    se_t = _transformed_se(base, prob, i)
    ends: list[float | None] = []
    with single_thread_blas():
        for direction in (-1.0, 1.0):
            warm = [theta_hat.copy()]
            step = se_t if se_t and np.isfinite(se_t) and se_t > 0 else 0.1 * (abs(theta_hat[i]) + 1)
            x_prev, end = theta_hat[i], None
            bound = lo_b if direction < 0 else hi_b
            for _ in range(40):
                x = x_prev + direction * step
                if bound is not None and (x - bound) * direction > 0:
                    x = bound
                s = stat(x, warm)
                if s > 0:
                    try:
                        w2 = [warm[0].copy()]
                        root = brentq(lambda v, w2=w2: stat(v, w2), x_prev, x, xtol=1e-8 * (1 + abs(x)))
                    except ValueError:
                        root = x
                    end = root
                    break
                if bound is not None and x == bound:
                    break
                x_prev, step = x, step * 1.6
            ends.append(None if end is None else
                        float(np.exp(end)) if prob.logmask[i] else float(end))
    return ends[0], ends[1]


def _transformed_se(base: FitResult, prob: Problem, i: int) -> float | None:
    if base.cov is None:
        return None
    v = base.cov[i, i]
    if not np.isfinite(v) or v <= 0:
        return None
    se = float(np.sqrt(v))
    if prob.logmask[i]:
        se = se / max(abs(prob.natural(base.theta)[i]), 1e-300)
    return se


def logit_ls_crosscheck(model: str, data: CurveData, base: FitResult, *,
                        fixed: dict[str, float] | None = None) -> FitResult | None:
    """Cross-check a binomial ML fit by weighted least squares on logit E: residuals
    logit(E_obs) - logit(E(t)) with E_obs = (k + 1/2)/(n + 1) and weights sqrt(n E_obs (1 - E_obs))
    (the delta-method precision of a logit). Returns the refit, or None for value-only data."""
    if data.kind != "binomial":
        return None
    prob = Problem(model, data, fixed)
    eo = (data.k + 0.5) / (data.n + 1.0)
    lo_obs = np.log(eo / (1 - eo))
    wt = np.sqrt(data.n * eo * (1 - eo))
    lo = np.array([-np.inf if b[0] is None else b[0] for b in prob.bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in prob.bounds])

    def resid(th):
        with np.errstate(all="ignore"):
            e = np.clip(prob.predict(th), 1e-9, 1 - 1e-9)
            r = (np.log(e / (1 - e)) - lo_obs) * wt
        return np.where(np.isfinite(r), r, 1e6)

    x0 = _inside(base.theta, lo, hi, 1e-9)
    with single_thread_blas():
        out = least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=4000)
        from cramkit.theory.fit.core import _finish
        return _finish(prob, out.x, out, int(out.nfev), with_cov=False)


def t_min_sensitivity(model: str, data: CurveData, *, fixed: dict[str, float] | None = None,
                      factors=(1, 10, 100)) -> list[dict]:
    """gamma_hat (or the first parameter, for models without gamma) for t >= factor * t_first."""
    m = get_model(model)
    key = m.gamma_param or m.names[0]
    out = []
    for f in factors:
        t_min = f * float(data.t[0])
        sub = data.subset(data.t >= t_min * (1 - 1e-12))
        row = {"t_min": t_min, "factor": f, "n": len(sub), "param": key, "value": None, "stderr": None}
        try:
            fit = fit_model(model, sub, fixed=fixed)
            row["value"], row["stderr"] = fit.params[key].value, fit.params[key].stderr
        except CramError as exc:
            row["note"] = str(exc)
        out.append(row)
    return out


def out_of_sample(model: str, data: CurveData, *, fixed: dict[str, float] | None = None,
                  frac: float = 0.7) -> dict | None:
    """Fit on the first ``frac`` of log-time and score the rest: the held-out mean negative
    log-likelihood per probe query (binomial) or the held-out RMSE (values)."""
    lt = np.log(data.t)
    cut = lt[0] + frac * (lt[-1] - lt[0])
    train, test = data.subset(lt <= cut), data.subset(lt > cut)
    if len(test) == 0:
        return None
    try:
        fit = fit_model(model, train, fixed=fixed, with_cov=False)
    except CramError:
        return None
    e = fit.predict(test.t)
    if data.kind == "binomial":
        ec = np.clip(e, 1e-12, 1 - 1e-12)
        score = -float(np.sum(test.k * np.log(ec) + (test.n - test.k) * np.log1p(-ec)) / np.sum(test.n))
        metric = "held-out NLL per query"
    else:
        score = float(np.sqrt(np.mean((e - test.y) ** 2)))
        metric = "held-out RMSE"
    return {"n_train": len(train), "n_test": len(test), "t_cut": float(np.exp(cut)),
            "metric": metric, "score": score}

"""Fitting one curve model to one data set: the objective, multi-start L-BFGS-B, the covariance.

* Binomial data (k of n): maximum likelihood with k_t ~ Bin(n_t, E(t)). AIC = 2 NLL + 2p and
  BIC = 2 NLL + p ln(n_obs) with the full log-likelihood (binomial coefficients included), n_obs
  the number of checkpoints. chi2 is Pearson's, sum (k - nE)^2 / (nE(1-E)).
* Gaussian data (values only): least squares, weighted by 1/sigma^2 when sigma is given.
  AIC = n ln(chi2/n) + 2p and BIC = n ln(chi2/n) + p ln n, the convention lmfit uses.

Positive parameters (time scales, exponents, amplitudes) are optimized in log space; levels are
bounded to [0, 1] in a binomial fit. The optimizer runs L-BFGS-B with the exact gradient (sympy
Jacobian) from at least 20 grid starts and keeps the best; Gaussian fits are then polished with
``least_squares``. Standard errors come from the inverse Fisher information in the natural
parameters, scaled the lmfit way by the reduced chi2 (for binomial data by max(1, reduced chi2):
a quasi-binomial correction, since checkpoints of one run are autocorrelated).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, minimize
from scipy.special import gammaln

from cramkit.errors import CramError
from cramkit.theory.curves import CurveModel, get_model
from cramkit.theory.fit.data import CurveData

EPS = 1e-12
MIN_STARTS = 20
PENALTY = 1e6
MAX_STARTS = 24
FIT_OPTIONS = {"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-10, "maxcor": 20}
# bootstrap refits start at the optimum of the original data; a looser stop moves gamma by
# < 1e-5 here, far below any bootstrap spread
REFIT_OPTIONS = {"maxiter": 1000, "ftol": 1e-11, "gtol": 1e-7, "maxcor": 20}


@dataclass
class ParamResult:
    name: str
    value: float
    stderr: float | None
    fixed: bool = False
    at_bound: bool = False
    ci: tuple[float, float] | None = None
    ci_method: str | None = None


@dataclass
class FitResult:
    model: str
    data_name: str
    kind: str
    params: dict[str, ParamResult]
    n: int
    nvary: int
    nll: float  # binomial: -log L; gaussian: 0.5 * chi2
    chi2: float
    redchi: float | None
    aic: float
    bic: float
    success: bool
    message: str
    theta: np.ndarray  # optimum in the optimizer's (transformed) space, free parameters only
    cov: np.ndarray | None  # covariance of the free natural parameters
    nfev: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def values(self) -> dict[str, float]:
        return {k: p.value for k, p in self.params.items()}

    def predict(self, t: np.ndarray) -> np.ndarray:
        """E(t) of the fitted curve (inf or NaN where it overflows, without a warning)."""
        m = get_model(self.model)
        with np.errstate(all="ignore"):
            return m(np.asarray(t, dtype=np.float64), *[self.params[n].value for n in m.names])

    @property
    def gamma(self) -> float | None:
        g = get_model(self.model).gamma_param
        return None if g is None else self.params[g].value


class Problem:
    """The objective of one model on one data set, in the transformed optimizer space."""

    def __init__(self, model: CurveModel | str, data: CurveData, fixed: dict[str, float] | None = None):
        self.model = get_model(model) if isinstance(model, str) else model
        self.data = data
        fixed = dict(fixed or {})
        unknown = set(fixed) - set(self.model.names)
        if unknown:
            raise CramError(f"{self.model.name} has no parameter(s) {sorted(unknown)}")
        self.fixed = fixed
        self.free = [p for p in self.model.params if p.name not in fixed]
        if len(data) <= len(self.free):
            raise CramError(
                f"{data.name}: {self.model.name} has {len(self.free)} free parameters but the data "
                f"have only {len(data)} points; it needs at least {len(self.free) + 1} "
                "(give more points or fit fewer models with --models)")
        self.binomial = data.kind == "binomial"
        self.t = data.t
        self.lt = np.log10(data.t)
        if self.binomial:
            self.k, self.nn = data.k, data.n
            self.scale = 1.0 / float(np.sum(self.nn))
            self.logc = float(np.sum(gammaln(self.nn + 1) - gammaln(self.k + 1)
                                     - gammaln(self.nn - self.k + 1)))
        else:
            self.w = 1.0 / data.sigma if data.sigma is not None else np.ones_like(data.t)
            self.scale = 1.0 / max(float(np.sum((data.y * self.w) ** 2)), 1e-300)
        self.bounds = [self._bound(p) for p in self.free]
        self.logmask = np.array([p.log_space for p in self.free])
        self.free_idx = [i for i, p in enumerate(self.model.params) if p.name not in fixed]

    def chain(self, nat: np.ndarray) -> np.ndarray:
        """d(natural)/d(theta): the value itself for log-space parameters, else 1."""
        return np.where(self.logmask, nat, 1.0)

    # transformed <-> natural
    def natural(self, theta: np.ndarray) -> np.ndarray:
        return np.where(self.logmask, np.exp(np.clip(theta, -700, 700)), theta)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return np.where(self.logmask, np.log(np.maximum(values, 1e-300)), values)

    def full_args(self, nat: np.ndarray) -> list[float]:
        it = iter(nat)
        return [self.fixed[p.name] if p.name in self.fixed else float(next(it))
                for p in self.model.params]

    def _bound(self, p) -> tuple[float | None, float | None]:
        t0, t1 = float(self.t[0]), float(self.t[-1])
        if p.kind == "level":
            return (0.0, 1.0) if self.binomial else (None, None)
        if p.kind == "time":
            return (np.log(t0 * 1e-3), np.log(t1 * 1e4))
        if p.kind == "exponent":
            return (np.log(1e-3), np.log(100.0))
        if p.kind == "amplitude":
            return (np.log(1e-12), np.log(1e12))
        if p.kind == "logtime":
            return (float(np.log10(t0)), float(np.log10(t1)))
        return (None, None)

    # objective
    def predict(self, theta: np.ndarray) -> np.ndarray:
        return self.model(self.t, *self.full_args(self.natural(theta)))

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        nat = self.natural(theta)
        args = self.full_args(nat)
        with np.errstate(all="ignore"):
            e = self.model(self.t, *args)
            jac_all = self.model.jacobian(self.t, *args)
        jac = jac_all[self.free_idx] * self.chain(nat)[:, None]
        if not np.all(np.isfinite(e)):
            return 1e300, np.zeros_like(theta)
        if not np.all(np.isfinite(jac)):
            # inf/inf in a saturated exponential (M5 far from t_c): the true derivative is 0
            jac = np.where(np.isfinite(jac), jac, 0.0)
        if self.binomial:
            ec = np.clip(e, EPS, 1 - EPS)
            inside = (e > EPS) & (e < 1 - EPS)
            val = -float(np.sum(self.k * np.log(ec) + (self.nn - self.k) * np.log1p(-ec)))
            de = np.where(inside, -(self.k / ec - (self.nn - self.k) / (1 - ec)), 0.0)
            # outside (0, 1) (only M2 and M8 can get there) the likelihood is clipped and a
            # quadratic penalty with a consistent gradient pulls the curve back inside
            d = e - ec
            val += float(np.sum(PENALTY * self.nn * d * d))
            de = de + 2 * PENALTY * self.nn * d
        else:
            r = (e - self.data.y) * self.w
            val = 0.5 * float(r @ r)
            de = r * self.w
        return val * self.scale, (jac @ de) * self.scale

    def nll(self, theta: np.ndarray) -> float:
        """Binomial: the full negative log-likelihood; Gaussian: 0.5 * chi2."""
        return self.value_and_grad(theta)[0] / self.scale - (self.logc if self.binomial else 0.0)

    # optimization
    def minimize(self, theta0: np.ndarray, *, loose: bool = False) -> tuple[np.ndarray, float, object]:
        x0 = np.array(theta0, dtype=np.float64)
        for i, (lo, hi) in enumerate(self.bounds):
            if lo is not None:
                x0[i] = min(max(x0[i], lo), hi)
        res = minimize(self.value_and_grad, x0, jac=True, method="L-BFGS-B", bounds=self.bounds,
                       options=REFIT_OPTIONS if loose else FIT_OPTIONS)
        return res.x, float(res.fun), res

    def starts(self) -> list[np.ndarray]:
        """A deterministic grid of >= 20 starting points spanning the data's time range."""
        t0, t1 = float(self.t[0]), float(self.t[-1])
        y = self.data.y
        y_first, y_last = float(np.mean(y[: max(1, len(y) // 10)])), float(np.mean(y[-max(1, len(y) // 10):]))
        lo_y, hi_y = float(np.min(y)), float(np.max(y))
        grids: list[list[float]] = []
        for p in self.free:
            if p.kind == "level":
                if p.name == "E0":
                    g = [max(y_first, hi_y)]
                elif p.name == "Einf":
                    g = [y_last, lo_y - 0.05 * abs(lo_y)] if not self.binomial else [y_last * 0.5, lo_y * 0.9]
                else:  # E_b
                    g = [0.5 * (y_first + y_last)]
                if self.binomial:
                    g = [min(max(v, 1e-4), 1 - 1e-4) for v in g]
                grids.append(sorted(set(g)))
            elif p.kind == "time":
                grids.append(list(np.log(np.geomspace(t0 * 0.3, t1 * 2.0, 5))))
            elif p.kind == "exponent":
                grids.append(list(np.log([0.1, 0.4, 1.0, 3.0])))
            elif p.kind == "amplitude":
                grids.append([np.log(max(abs(y_first), 1e-6) * t0 ** 0.3)])
            elif p.kind == "logtime":
                grids.append(list(np.linspace(np.log10(t0), np.log10(t1), 7)[1:-1]))
            else:  # slope
                span = (y_last - y_first) / max(np.log10(t1 / t0), 1e-9)
                grids.append([0.0, span, 2 * span])
        combos = [np.array(c, dtype=np.float64) for c in itertools.product(*grids)]
        if self.model.name == "M8" and not self.fixed:
            combos = self._hinge_starts() + combos
        if len(combos) > MAX_STARTS:
            step = len(combos) / MAX_STARTS
            combos = [combos[int(i * step)] for i in range(MAX_STARTS)]
        n_grid = len(combos)
        rng = np.random.default_rng(n_grid)
        while len(combos) < MIN_STARTS:  # jittered copies until MIN_STARTS starts are reached
            base = combos[len(combos) % n_grid]
            combos.append(base + rng.normal(0, 0.5, base.size) * np.where(self.logmask, 1.0, 0.0))
        return combos


    def _hinge_starts(self) -> list[np.ndarray]:
        """M8 is linear in (E_b, s1, s2) once the breakpoint is fixed: solve that weighted
        linear least-squares problem on a grid of breakpoints to get good starts."""
        x = self.lt
        y = self.data.y
        wt = (self.nn / np.clip(y * (1 - y), 1e-4, None) if self.binomial else self.w ** 2)
        out = []
        for xb in np.linspace(x[0], x[-1], 11)[1:-1]:
            a = np.stack([np.ones_like(x), np.minimum(x - xb, 0), np.maximum(x - xb, 0)], axis=1)
            sw = np.sqrt(wt)[:, None]
            coef, *_ = np.linalg.lstsq(a * sw, y * sw[:, 0], rcond=None)
            eb = float(np.clip(coef[0], 1e-4, 1 - 1e-4)) if self.binomial else float(coef[0])
            out.append(np.array([xb, eb, coef[1], coef[2]]))
        return out


_BLAS_LIMITED = [False]


@contextlib.contextmanager
def single_thread_blas():
    """A context in which BLAS runs on one thread. L-BFGS-B's tiny BLAS calls are ~20x slower
    with a multithreaded OpenBLAS on a busy machine; every fitting entry point runs inside this.
    Re-entrant: only the outermost level pays threadpoolctl's library scan."""
    if _BLAS_LIMITED[0]:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        _BLAS_LIMITED[0] = True
        try:
            yield
        finally:
            _BLAS_LIMITED[0] = False


def fit_model(model: CurveModel | str, data: CurveData, *, fixed: dict[str, float] | None = None,
              x0: np.ndarray | None = None, n_starts: int | None = None,
              with_cov: bool = True) -> FitResult:
    """Fit ``model`` to ``data``. With ``x0`` (a previous optimum in the transformed space) only
    that start is used (bootstrap refits); otherwise the >= 20-start grid."""
    with single_thread_blas():
        return _fit_model(model, data, fixed, x0, n_starts, with_cov)


def _fit_model(model, data, fixed, x0, n_starts, with_cov) -> FitResult:
    prob = Problem(model, data, fixed)
    if x0 is not None:
        theta, _, res = prob.minimize(x0, loose=not with_cov)
        nfev = res.nfev
    else:
        starts = prob.starts()
        if n_starts is not None:
            starts = starts[: max(1, n_starts)]
        best = None
        nfev = 0
        for s in starts:
            theta, val, res = prob.minimize(s)
            nfev += res.nfev
            if best is None or val < best[1]:
                best = (theta, val, res)
        theta, _, res = best
    if not prob.binomial and (x0 is None or with_cov):  # bootstrap refits skip the polish
        theta = _polish_ls(prob, theta)
    return _finish(prob, theta, res, nfev, with_cov)


def _polish_ls(prob: Problem, theta: np.ndarray) -> np.ndarray:
    lo = np.array([-np.inf if b[0] is None else b[0] for b in prob.bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in prob.bounds])
    x0 = _inside(theta, lo, hi)

    def resid(th):
        with np.errstate(all="ignore"):
            r = (prob.predict(th) - prob.data.y) * prob.w
        return np.where(np.isfinite(r), r, 1e150)

    try:
        out = least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac",
                            ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=5000)
    except ValueError:
        return theta
    return out.x if prob.nll(out.x) <= prob.nll(theta) else theta


def _inside(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray, rel: float = 1e-12) -> np.ndarray:
    """``theta`` moved strictly inside finite bounds (least_squares rejects a start on a bound)."""
    lo_in = np.where(np.isfinite(lo), lo + rel * (1 + np.abs(np.where(np.isfinite(lo), lo, 0))), -np.inf)
    hi_in = np.where(np.isfinite(hi), hi - rel * (1 + np.abs(np.where(np.isfinite(hi), hi, 0))), np.inf)
    return np.clip(theta, lo_in, hi_in)


def _finish(prob: Problem, theta: np.ndarray, res, nfev: int, with_cov: bool) -> FitResult:
    nat = prob.natural(theta)
    args = prob.full_args(nat)
    n, p = len(prob.data), len(prob.free)
    with np.errstate(all="ignore"):
        e = prob.model(prob.t, *args)
    nll = prob.nll(theta)
    if prob.binomial:
        ec = np.clip(e, EPS, 1 - EPS)
        chi2 = float(np.sum((prob.k - prob.nn * ec) ** 2 / (prob.nn * ec * (1 - ec))))
        aic, bic = 2 * nll + 2 * p, 2 * nll + p * np.log(n)
    else:
        r = (e - prob.data.y) * prob.w
        chi2 = float(r @ r)
        aic = n * np.log(max(chi2, 1e-300) / n) + 2 * p
        bic = n * np.log(max(chi2, 1e-300) / n) + p * np.log(n)
    redchi = chi2 / (n - p) if n > p else None
    cov = _covariance(prob, args, e, redchi) if with_cov else None
    warnings: list[str] = []
    params: dict[str, ParamResult] = {}
    fi = 0
    for par, val in zip(prob.model.params, args):
        if par.name in prob.fixed:
            params[par.name] = ParamResult(par.name, float(val), None, fixed=True)
            continue
        lo, hi = prob.bounds[fi]
        th = theta[fi]
        at = any(b is not None and abs(th - b) <= 1e-6 * max(1.0, abs(b)) for b in (lo, hi))
        se = None
        if cov is not None:
            v = cov[fi, fi]
            se = float(np.sqrt(v)) if np.isfinite(v) and v >= 0 else None
        params[par.name] = ParamResult(par.name, float(val), se, at_bound=at)
        if at:
            warnings.append(f"{prob.model.name}: parameter {par.name} = {val:.6g} is at a bound")
        fi += 1
    if cov is None and with_cov:
        warnings.append(f"{prob.model.name}: the Fisher information is singular; no standard errors")
    return FitResult(prob.model.name, prob.data.name, prob.data.kind, params, n, p, float(nll),
                     chi2, redchi, float(aic), float(bic), bool(res.success), str(res.message),
                     theta, cov, nfev, warnings)


def _covariance(prob: Problem, args: list[float], e: np.ndarray, redchi: float | None):
    idx = [i for i, p in enumerate(prob.model.params) if p.name not in prob.fixed]
    with np.errstate(all="ignore"):
        jac = prob.model.jacobian(prob.t, *args)[idx]  # natural parameters
    jac = np.where(np.isfinite(jac), jac, 0.0)  # saturated exponentials, as in value_and_grad
    if prob.binomial:
        ec = np.clip(e, 1e-9, 1 - 1e-9)
        wts = prob.nn / (ec * (1 - ec))
        scale = max(1.0, redchi or 1.0)
    else:
        wts = prob.w ** 2
        scale = redchi if redchi is not None else 1.0
    info = (jac * wts) @ jac.T
    if not np.all(np.isfinite(info)):
        return None
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) < 0):
        return None
    return cov * scale

"""Consolidation-curve models M1–M8 (docs/fit-gamma.md, "The models") as sympy expressions,
lambdified for numerics.

Every model is ``E(t) = E_inf + (E_0 - E_inf) * s(t)`` for a decreasing *shape* ``s`` (M2 and M8
are the exceptions: a scale-free power law and a two-segment line in ``log10 t``). Each model
carries

* its sympy expression and the symbolic partial derivatives (the Jacobian the fitter uses),
* numpy functions made by :func:`sympy.lambdify` (with common-subexpression elimination),
* where the shape can be inverted in closed form, the quantile time ``t_q`` at which the shape
  has fallen to ``q`` (so the half-life is ``t_q(1/2)`` and the width is
  ``W = log10(t_q(0.1) / t_q(0.9))`` decades),
* the parameter kinds the fitter needs: a *level* (E_0, E_inf; a probability in a binomial fit),
  a *positive* parameter (fitted in log space), or a *real* one.

The transition step ``t_c`` is the argmax of ``-dE/dlog t``; :func:`tc_numeric` finds it for any
model from the lambdified derivative, :meth:`CurveModel.tc_symbolic` asks sympy for a closed form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import sympy as sp

from cramkit.errors import CramError

T = sp.Symbol("t", positive=True)
Q = sp.Symbol("q", positive=True)

# Parameter kinds. "level": E_0, E_inf, E_b (bounded to [0, 1] in a binomial fit, free otherwise);
# "time": a positive time scale (log space); "exponent": a positive exponent (log space);
# "amplitude": a positive amplitude (log space); "logtime": log10 of a time (real, bounded by
# the data range); "slope": a real slope.
KINDS = ("level", "time", "exponent", "amplitude", "logtime", "slope")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    symbol: sp.Symbol

    @property
    def log_space(self) -> bool:
        return self.kind in ("time", "exponent", "amplitude")


@dataclass(frozen=True)
class CurveModel:
    """One curve model: the sympy expression and its lambdified numerics."""

    name: str
    title: str
    formula: str
    params: tuple[Param, ...]
    expr: sp.Expr
    shape: sp.Expr | None  # s(t) with E = E_inf + (E_0 - E_inf) s(t); None for M2, M8
    gamma_param: str | None = None
    _f: Callable = field(repr=False, compare=False, default=None)
    _jac: Callable = field(repr=False, compare=False, default=None)
    _dlogt: Callable = field(repr=False, compare=False, default=None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __call__(self, t: np.ndarray, *values: float) -> np.ndarray:
        """E(t) for parameter ``values`` in the order of :attr:`names`."""
        t = np.asarray(t, dtype=np.float64)
        out = self._f(t, *_np(values))
        if np.shape(out) != t.shape:
            out = np.broadcast_to(np.asarray(out, dtype=np.float64), t.shape)
        return out

    def jacobian(self, t: np.ndarray, *values: float) -> np.ndarray:
        """dE/dp for every parameter p: an array of shape ``(n_params, len(t))``."""
        t = np.asarray(t, dtype=np.float64)
        cols = self._jac(t, *_np(values))
        out = np.empty((len(cols), *t.shape))
        for i, c in enumerate(cols):
            out[i] = c  # broadcasts constants (a derivative that does not depend on t)
        return out

    def neg_dlogt(self, t: np.ndarray, *values: float) -> np.ndarray:
        """-dE/d(ln t): the rate of decline per e-fold of time (its argmax is t_c)."""
        t = np.asarray(t, dtype=np.float64)
        return np.broadcast_to(np.asarray(self._dlogt(t, *_np(values)), dtype=np.float64), t.shape)

    # --- closed forms -----------------------------------------------------------------
    def quantile_time_expr(self) -> sp.Expr | None:
        """The time at which the shape has fallen to ``q`` (sympy, in ``q`` and the parameters)."""
        return _quantile_time(self.name)

    def half_life_expr(self) -> sp.Expr | None:
        tq = self.quantile_time_expr()
        return None if tq is None else sp.simplify(tq.subs(Q, sp.Rational(1, 2)))

    def width_expr(self) -> sp.Expr | None:
        """W = log10(t_10 / t_90) in decades (sympy), where the shape is 0.1 and 0.9."""
        tq = self.quantile_time_expr()
        if tq is None:
            return None
        return sp.log(tq.subs(Q, sp.Rational(1, 10)) / tq.subs(Q, sp.Rational(9, 10)), 10)

    def tc_symbolic(self) -> sp.Expr | None:
        """argmax_t of -dE/dlog t in closed form, where sympy finds one (else None)."""
        return _tc_symbolic(self.name)

    def quantile_time(self, q: float, values: dict[str, float]) -> float | None:
        """Numeric t_q; falls back to a root search on a log grid when there is no closed form."""
        tq = self.quantile_time_expr()
        if tq is not None:
            val = complex(tq.subs({Q: q, **{p.symbol: values[p.name] for p in self.params}}).evalf())
            if abs(val.imag) > 1e-12 or not np.isfinite(val.real) or val.real <= 0:
                return None
            return float(val.real)
        if self.shape is None:
            return None
        return _root_in_log_t(self._shape_fn(), q, _np([values[n] for n in self.names]))

    def width(self, values: dict[str, float]) -> float | None:
        """W in decades for fitted ``values`` (None where the shape never reaches 0.1 or 0.9)."""
        t10, t90 = self.quantile_time(0.1, values), self.quantile_time(0.9, values)
        if t10 is None or t90 is None or t10 <= t90:
            return None
        return float(np.log10(t10 / t90))

    def half_life(self, values: dict[str, float]) -> float | None:
        return self.quantile_time(0.5, values)

    def _shape_fn(self) -> Callable:
        return _shape_lambda(self.name)


def _np(values) -> list[np.float64]:
    """Parameter values as numpy scalars: the lambdified code then overflows to inf (under the
    caller's ``np.errstate``) where Python floats would raise OverflowError."""
    return [np.float64(v) for v in values]


def _root_in_log_t(fn: Callable, q: float, args: list[float]) -> float | None:
    from scipy.optimize import brentq

    grid = np.logspace(-12, 15, 541)
    s = np.asarray(fn(grid, *args), dtype=np.float64) - q
    idx = np.nonzero((s[:-1] > 0) & (s[1:] <= 0))[0]
    if idx.size == 0:
        return None
    i = int(idx[0])
    lo, hi = np.log(grid[i]), np.log(grid[i + 1])
    x = brentq(lambda u: float(fn(np.exp(u), *args)) - q, lo, hi, xtol=1e-13, rtol=1e-13)
    return float(np.exp(x))


# --- the model table --------------------------------------------------------------------

def _p(name: str, kind: str) -> Param:
    assert kind in KINDS
    return Param(name, kind, sp.Symbol(name, real=True, positive=kind in ("time", "exponent", "amplitude")))


def _definitions() -> list[tuple]:
    E0, Einf = _p("E0", "level"), _p("Einf", "level")
    tau, gamma = _p("tau", "time"), _p("gamma", "exponent")
    a = _p("a", "amplitude")
    beta = _p("beta", "exponent")
    tc, w, h = _p("t_c", "time"), _p("w", "time"), _p("h", "exponent")
    tx = _p("t_x", "time")
    xb, Eb, s1, s2 = _p("log10_t_b", "logtime"), _p("E_b", "level"), _p("s1", "slope"), _p("s2", "slope")
    t = T
    lt = sp.log(t, 10)
    return [
        ("M1", "offset power law", "E_inf + (E_0 - E_inf) (1 + t/tau)^-gamma",
         (E0, Einf, tau, gamma), (1 + t / tau.symbol) ** (-gamma.symbol), "gamma"),
        ("M2", "pure power law", "a t^-gamma + E_inf",
         (a, gamma, Einf), a.symbol * t ** (-gamma.symbol) + Einf.symbol, "gamma"),
        ("M3", "exponential", "E_inf + (E_0 - E_inf) exp(-t/tau)",
         (E0, Einf, tau), sp.exp(-t / tau.symbol), None),
        ("M4", "stretched exponential", "E_inf + (E_0 - E_inf) exp(-(t/tau)^beta)",
         (E0, Einf, tau, beta), sp.exp(-((t / tau.symbol) ** beta.symbol)), None),
        ("M5", "logistic in t", "E_inf + (E_0 - E_inf) / (1 + exp((t - t_c)/w))",
         (E0, Einf, tc, w), 1 / (1 + sp.exp((t - tc.symbol) / w.symbol)), None),
        ("M6", "Hill (logistic in log t)", "E_inf + (E_0 - E_inf) / (1 + (t/t_c)^h)",
         (E0, Einf, tc, h), 1 / (1 + (t / tc.symbol) ** h.symbol), None),
        ("M7", "power law with cutoff", "E_inf + (E_0 - E_inf) (1 + t/tau)^-gamma exp(-t/t_x)",
         (E0, Einf, tau, gamma, tx),
         (1 + t / tau.symbol) ** (-gamma.symbol) * sp.exp(-t / tx.symbol), "gamma"),
        ("M8", "changepoint (two lines in log10 t)",
         "E_b + s1 (log10 t - log10 t_b) below t_b, E_b + s2 (log10 t - log10 t_b) above",
         (xb, Eb, s1, s2),
         Eb.symbol + sp.Piecewise((s1.symbol * (lt - xb.symbol), lt < xb.symbol),
                                  (s2.symbol * (lt - xb.symbol), True)), None),
    ]


MODEL_NAMES: tuple[str, ...] = tuple(f"M{i}" for i in range(1, 9))


@cache
def _raw(name: str) -> tuple:
    for row in _definitions():
        if row[0] == name:
            return row
    raise CramError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def _expr_and_shape(name: str) -> tuple[sp.Expr, sp.Expr | None, tuple[Param, ...]]:
    _, _, _, params, body, _ = _raw(name)
    by = {p.name: p.symbol for p in params}
    if name in ("M2", "M8"):
        return body, None, params
    return by["Einf"] + (by["E0"] - by["Einf"]) * body, body, params


@cache
def get_model(name: str) -> CurveModel:
    """The model ``name`` (``"M1"`` … ``"M8"``), built and lambdified once per process."""
    key = name.strip().upper()
    _, title, formula, _, _, gamma = _raw(key)
    expr, shape, params = _expr_and_shape(key)
    syms = [T, *[p.symbol for p in params]]
    f = sp.lambdify(syms, expr, modules="numpy", cse=True)
    jac = sp.lambdify(syms, [sp.diff(expr, p.symbol) for p in params], modules="numpy", cse=True)
    dlogt = sp.lambdify(syms, -T * sp.diff(expr, T), modules="numpy", cse=True)
    return CurveModel(key, title, formula, params, expr, shape, gamma, f, jac, dlogt)


def all_models() -> list[CurveModel]:
    return [get_model(n) for n in MODEL_NAMES]


@cache
def _shape_lambda(name: str) -> Callable:
    _, shape, params = _expr_and_shape(name)
    return sp.lambdify([T, *[p.symbol for p in params]], shape, modules="numpy")


@cache
def _quantile_time(name: str) -> sp.Expr | None:
    """Solve s(t) = q for t. Closed forms are written out for the models where they exist and
    checked against the shape symbolically (so a typo here cannot survive)."""
    _, shape, params = _expr_and_shape(name)
    if shape is None:
        return None
    by = {p.name: p.symbol for p in params}
    forms = {
        "M1": by.get("tau", 0) * (Q ** (-1 / by.get("gamma", 1)) - 1),
        "M3": -by.get("tau", 0) * sp.log(Q),
        "M4": by.get("tau", 0) * (-sp.log(Q)) ** (1 / by.get("beta", 1)),
        "M5": by.get("t_c", 0) + by.get("w", 0) * sp.log(1 / Q - 1),
        "M6": by.get("t_c", 0) * (1 / Q - 1) ** (1 / by.get("h", 1)),
    }
    tq = forms.get(name)
    if tq is None:
        return None
    check = sp.simplify(shape.subs(T, tq).subs(Q, sp.Rational(3, 10)) - sp.Rational(3, 10))
    if check != 0:  # pragma: no cover - guards the hand-written forms
        raise AssertionError(f"quantile time of {name} does not invert its shape")
    return tq


@cache
def _tc_symbolic(name: str) -> sp.Expr | None:
    """Closed-form t_c for the models that have one, each checked by substitution: the
    derivative of log(-dE/dlog t) vanishes there. (M5 needs a Lambert-W root and M7 a quadratic
    with a sign condition; those, M2 and M8 use :func:`tc_numeric`.)"""
    model = get_model(name)
    by = {p.name: p.symbol for p in model.params}
    forms = {"M1": "tau/gamma", "M3": "tau", "M4": "tau", "M6": "t_c"}
    if name not in forms:
        return None
    tc = sp.sympify(forms[name], locals=by)
    rate = -T * sp.diff(model.shape, T)
    if sp.simplify(sp.diff(sp.log(rate), T).subs(T, tc)) != 0:  # pragma: no cover
        raise AssertionError(f"t_c of {name} is not a stationary point")
    return tc


def tc_numeric(model: CurveModel, values: dict[str, float], t_lo: float, t_hi: float) -> float:
    """argmax of -dE/dlog t over [t_lo, t_hi] (a dense log grid, then a bounded refinement)."""

    with np.errstate(all="ignore"):
        return _tc_numeric(model, values, t_lo, t_hi)


def _tc_numeric(model: CurveModel, values: dict[str, float], t_lo: float, t_hi: float) -> float:
    from scipy.optimize import minimize_scalar

    args = [values[n] for n in model.names]
    grid = np.logspace(np.log10(t_lo), np.log10(t_hi), 2001)
    with np.errstate(all="ignore"):
        r = np.nan_to_num(model.neg_dlogt(grid, *args), nan=-np.inf)
    i = int(np.argmax(r))
    if model.name == "M8" or i in (0, grid.size - 1):
        return float(grid[i])
    lo, hi = np.log(grid[i - 1]), np.log(grid[i + 1])
    res = minimize_scalar(lambda u: -float(model.neg_dlogt(np.array([np.exp(u)]), *args)[0]),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    return float(np.exp(res.x))


def power_law_width(gamma: float) -> float:
    """W (decades) of the shape (1 + t/tau)^-gamma; independent of tau (docs/fit-gamma.md,
    "Transition step and sharpness")."""
    if gamma <= 0:
        raise CramError(f"gamma must be positive, got {gamma}")
    return float(np.log10(np.expm1(np.log(10.0) / gamma) / np.expm1(-np.log(0.9) / gamma)))

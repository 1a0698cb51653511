"""The curve models M1-M8: sympy Jacobians, closed forms (t_q, half-life, W, t_c)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cramkit.errors import CramError
from cramkit.theory.curves import (
    MODEL_NAMES,
    Q,
    T,
    all_models,
    get_model,
    power_law_width,
    tc_numeric,
)

VALUES = {"E0": 0.9, "Einf": 0.1, "tau": 80.0, "gamma": 0.43, "a": 2.0, "beta": 0.6, "t_c": 900.0,
          "w": 250.0, "h": 2.5, "t_x": 2e4, "log10_t_b": 2.5, "E_b": 0.5, "s1": -0.1, "s2": -0.3}


def _args(m):
    return [VALUES[n] for n in m.names]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_jacobian_matches_central_differences(name):
    m = get_model(name)
    t = np.geomspace(1.0, 1e5, 37)
    t = t[np.abs(np.log10(t) - VALUES["log10_t_b"]) > 0.05]  # keep off M8's kink
    args = _args(m)
    with np.errstate(over="ignore"):  # M5's exp((t - t_c)/w) overflows far out; the limit is 0
        jac = m.jacobian(t, *args)
    for i, _ in enumerate(m.names):
        h = 1e-6 * max(1.0, abs(args[i]))
        up, dn = list(args), list(args)
        up[i] += h
        dn[i] -= h
        fd = (m(t, *up) - m(t, *dn)) / (2 * h)
        np.testing.assert_allclose(jac[i], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["M1", "M3", "M4", "M5", "M6"])
def test_quantile_time_inverts_the_shape(name):
    m = get_model(name)
    subs = {p.symbol: VALUES[p.name] for p in m.params}
    for q in (0.1, 0.5, 0.9):
        tq = m.quantile_time(q, VALUES)
        assert float(m.shape.subs(subs).subs(T, tq)) == pytest.approx(q, rel=1e-10)


def test_half_life_and_width_closed_forms():
    g, tau = sp.symbols("gamma tau", positive=True)
    m1 = get_model("M1")
    hl = m1.half_life_expr()
    by = {p.name: p.symbol for p in m1.params}
    assert sp.simplify(hl - by["tau"] * (2 ** (1 / by["gamma"]) - 1)) == 0
    m6 = get_model("M6")
    w6 = m6.width_expr()
    h = {p.name: p.symbol for p in m6.params}["h"]
    assert float(w6.subs(h, 4)) == pytest.approx(2 * np.log10(9) / 4, rel=1e-12)
    # exponential: W = log10(ln 10 / ln(10/9)) = 1.34 (the K = 1 width of Proposition 3)
    assert get_model("M3").width(VALUES) == pytest.approx(np.log10(np.log(10) / np.log(10 / 9)))
    assert Q in m1.quantile_time_expr().free_symbols


def test_power_law_width_facts_of_spec_iii():
    assert power_law_width(0.43) == pytest.approx(2.88, abs=0.005)
    gammas = np.linspace(0.01, 1.0, 500)
    assert min(power_law_width(g) for g in gammas) >= 1.9
    # M1's width equals the closed form and does not depend on tau
    v = dict(VALUES, gamma=0.43, tau=3.0)
    assert get_model("M1").width(v) == pytest.approx(power_law_width(0.43), rel=1e-10)
    with pytest.raises(CramError):
        power_law_width(0.0)


@settings(max_examples=30)
@given(st.floats(min_value=0.05, max_value=200.0))
def test_power_laws_are_never_sharp(gamma):
    # W decreases towards the exponential's 1.34 decades as gamma grows, never below it
    assert power_law_width(gamma) > np.log10(np.log(10) / np.log(10 / 9)) - 1e-9


@pytest.mark.parametrize("name", ["M1", "M3", "M4", "M6"])
def test_symbolic_tc_equals_numeric_argmax(name):
    m = get_model(name)
    expr = m.tc_symbolic()
    assert expr is not None
    sym = float(expr.subs({p.symbol: VALUES[p.name] for p in m.params}))
    assert tc_numeric(m, VALUES, 1e-2, 1e7) == pytest.approx(sym, rel=1e-6)


def test_models_without_closed_forms_say_so():
    assert get_model("M2").quantile_time_expr() is None
    assert get_model("M8").width(VALUES) is None
    assert get_model("M5").tc_symbolic() is None
    assert len(all_models()) == 8
    with pytest.raises(CramError):
        get_model("M9")

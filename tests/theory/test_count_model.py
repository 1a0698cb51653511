"""Proposition 3: the exact count-model curve, its alpha > 1 closed form, the alpha = 0 widths,
and property H12 (c) (docs/results/fit-gamma.md): the fitted gamma of the exact curve is 1 - 1/alpha."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from scipy.special import gammaincc

from cramkit.errors import CramError
from cramkit.theory.count_model import (
    ALPHA,
    N_SYM,
    _poisson_below_sum,
    asymptotic_constant,
    asymptotic_curve,
    asymptotic_expr,
    exact_curve,
    predicted_gamma,
    uniform_width,
    width_table,
    zipf_weights,
)
from cramkit.theory.fit.analysis import count_model_data
from cramkit.theory.fit.core import fit_model


def test_poisson_sum_equals_incomplete_gamma():
    lam = np.geomspace(1e-8, 2e3, 400)
    for K in (1, 2, 3, 7, 20):
        np.testing.assert_allclose(_poisson_below_sum(K, lam), gammaincc(K, lam), atol=1e-14)


def test_width_table_of_spec():
    spec = {1: 1.34, 2: 0.86, 3: 0.68, 5: 0.52, 10: 0.36, 20: 0.25}
    got = width_table(tuple(spec))
    for K, w in spec.items():
        assert got[K] == pytest.approx(w, abs=0.005)
    # sharper with larger K
    ws = [uniform_width(K) for K in range(1, 30)]
    assert all(a > b for a, b in zip(ws, ws[1:]))


def test_uniform_recurrence_is_the_poisson_sigmoid():
    N = np.geomspace(10, 1e6, 25)
    P, K = 5000, 3
    np.testing.assert_allclose(exact_curve(N, alpha=0.0, K=K, P=P), gammaincc(K, N / P), rtol=1e-12)


@pytest.mark.parametrize("alpha,K", [(2.0, 3), (1.754, 3), (3.0, 1)])
def test_closed_form_matches_exact_sum_within_spec_tolerance(alpha, K):
    N = np.array([1e5, 1e6])
    exact = exact_curve(N, alpha=alpha, K=K, P=10**6)
    approx = asymptotic_curve(N, alpha=alpha, K=K)
    assert np.all(np.abs(exact / approx - 1) < 0.006)


def test_sympy_expression_matches_numeric_constant():
    for alpha, K in ((2.0, 3), (1.5, 1), (2.7, 5)):
        expr = asymptotic_expr(K)
        val = float(expr.subs({ALPHA: alpha, N_SYM: 1e4}).evalf())
        assert val == pytest.approx(asymptotic_constant(alpha, K) * 1e4 ** (-(1 - 1 / alpha)), rel=1e-10)
    general = asymptotic_expr()
    assert sp.Symbol("K", positive=True) in general.free_symbols


def test_curve_properties_and_input_checks():
    N = np.geomspace(1, 1e7, 30)
    e = exact_curve(N, alpha=1.5, K=2, P=10**4)
    assert np.all(np.diff(e) < 0) and np.all((e > 0) & (e <= 1))
    assert zipf_weights(100, 1.2).sum() == pytest.approx(1.0)
    assert predicted_gamma(1.754) == pytest.approx(0.43, abs=0.001)
    for bad in (lambda: exact_curve(N, alpha=2, K=0, P=10), lambda: asymptotic_constant(1.0, 3),
                lambda: zipf_weights(0, 1.0), lambda: predicted_gamma(0.5),
                lambda: exact_curve(N, alpha=-1, K=1, P=10)):
        with pytest.raises(CramError):
            bad()


@pytest.mark.parametrize("alpha,K", [(1.7, 3), (2.2, 1), (3.0, 3)])
def test_h12c_fitted_gamma_of_the_exact_curve(alpha, K):
    data = count_model_data(alpha=alpha, K=K, P=10**6, points=30)
    fit = fit_model("M1", data)
    assert abs(fit.gamma - (1 - 1 / alpha)) < 0.03


@pytest.mark.parametrize("K,sharp", [(3, False), (10, True)])
def test_uniform_recurrence_sharpness_verdict(K, sharp):
    from cramkit.theory.fit.analysis import CountModelSpec, FitConfig, run

    res = run(FitConfig(count_model=CountModelSpec(alpha=0.0, K=K, P=10**4), resamples=0,
                        with_human=False, models=("M1", "M2", "M5", "M6")))
    tr = res.to_json()["transition"]
    assert tr["sharp"] is sharp
    assert tr["W"] == pytest.approx(uniform_width(K), abs=0.05)
    # t_c sits near N = K P (the step of F_K(N/P))
    assert 0.3 < tr["t_c_methods"]["M6"] / (K * 10**4) < 3


def test_sympy_exact_sum_equals_numeric_curve():
    from cramkit.theory.count_model import K_SYM, exact_expr

    expr = exact_expr(P=40)
    for alpha, K, N in ((1.5, 2, 30.0), (0.0, 3, 100.0), (2.5, 1, 7.0)):
        val = float(expr.subs({ALPHA: alpha, K_SYM: K, N_SYM: N}).doit().evalf())
        assert val == pytest.approx(float(exact_curve(np.array([N]), alpha=alpha, K=K, P=40)[0]), rel=1e-10)

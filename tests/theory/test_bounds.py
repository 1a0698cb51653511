"""theory.bounds: exact evaluators against brute force and against their sympy forms (H7 is in
tests/test_properties.py)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cramkit.errors import CramError
from cramkit.theory import bounds as tb

# ----------------------------------------------------------------------------------------------
# Lemma 2: kappa_0
# ----------------------------------------------------------------------------------------------


def _kappa0_brute(S, m, v, mult=1):
    """The definition, term by term with Fractions and sympy's binomial."""
    c = 0
    while True:
        tail = sum(
            Fraction(int(sp.binomial(m, k))) * Fraction(1, v) ** k * Fraction(v - 1, v) ** (m - k)
            for k in range(c, m + 1)
        )
        if mult * 2**S * tail <= Fraction(1, m):
            return c
        c += 1


@given(st.integers(0, 40), st.integers(1, 30), st.integers(2, 64))
@settings(max_examples=60)
def test_kappa0_matches_definition(S, m, v):
    assert tb.kappa0(S, m, v) == _kappa0_brute(S, m, v)


@given(st.integers(0, 30), st.integers(1, 20), st.integers(2, 32), st.integers(0, 6))
@settings(max_examples=40)
def test_kappa0_multiplier_is_extra_bits(S, m, v, j):
    # 2^(S + log2 n) = n·2^S: kappa_1's kappa_0(S + log2 n) for n a power of two
    assert tb.kappa0(S, m, v, mult=2**j) == tb.kappa0(S + j, m, v)


@given(st.integers(0, 200), st.integers(1, 200), st.integers(4, 4096))
@settings(max_examples=80)
def test_kappa0_below_both_closed_forms(S, m, v):
    k0 = tb.kappa0(S, m, v)
    assert 0 <= k0 <= m + 1
    assert k0 <= tb.kappa0_closed_simple(S, m, v)
    for beta in (min(1.0, 3 * math.e / v), 0.5, 1.0):
        if math.e / v < beta <= 1:
            assert k0 <= tb.kappa0_closed_beta(S, m, v, beta) + 1e-9


@given(st.integers(0, 300), st.integers(1, 300), st.integers(2, 5000))
@settings(max_examples=60)
def test_closed_simple_is_the_exact_ceiling(S, m, v):
    c = tb.kappa0_closed_simple(S, m, v)
    x = (S + m + math.log2(m)) / math.log2(v)
    assert c == math.ceil(x) or abs(c - x) < 1e-9 or abs(c - 1 - x) < 1e-9
    # exact characterisation: the least c with v^c >= m·2^(S+m)
    assert v**c >= m * 2 ** (S + m) and (c == 0 or v ** (c - 1) < m * 2 ** (S + m))


def test_kappa0_against_scipy_tail():
    for m, v, c in [(10, 4, 3), (50, 1024, 2), (164, 1024, 5)]:
        assert float(tb.binomial_tail(m, v, c)) == pytest.approx(
            stats.binom.sf(c - 1, m, 1 / v), rel=1e-9
        )


def test_kappa0_approx_S_over_log2v_for_large_v():
    # "kappa_0 ≈ S / log2 v when v >> m_e" (and S / log2 v < m_e, since kappa_0 <= m_e + 1):
    # 2^S·v^-c·(1 - 1/v)^m > 1/m for every c <= (S - 2)/log2 v, so kappa_0 exceeds that
    for S, m, v in [(100, 50, 2**20), (400, 64, 2**16), (60, 40, 2**12)]:
        k0 = tb.kappa0(S, m, v)
        assert (
            (S - 2) / math.log2(v) - 1
            <= k0
            <= 1 + max(0.1 * m, (S + math.log2(m)) / math.log2(0.1 * v / math.e))
        )


def test_kappa1_formula():
    S, m, v, n, nq = 20, 6, 64, 512, 30
    assert tb.kappa1(S, m, v, n, nq) == tb.kappa0(S, m, v, mult=n) * tb.harmonic(nq) + 1
    assert tb.harmonic(4) == Fraction(25, 12)


def test_cache_state_kappa_dominates_l1_capacity():
    # with v >> m_e, kappa_0 of a w-slot cache's bits is at least the w bindings it can answer
    for w in (1, 4, 16):
        for m in (5, 20, 164):
            S = tb.cache_bits(w, 2**14, 2**10)
            assert S == w * 24
            assert tb.kappa0(S, m, 2**10) >= tb.kappa_l1(w, m)


@pytest.mark.parametrize(
    "call",
    [
        lambda: tb.kappa0(3, 0, 10),
        lambda: tb.kappa0(-1, 3, 10),
        lambda: tb.kappa0(3, 3, 1),
        lambda: tb.kappa0(3.5, 3, 10),
        lambda: tb.lower_bound(100, 0.1, 0, 0, 1),
        lambda: tb.lower_bound(100, 0.1, 0.02, 1.5, 1),
        lambda: tb.lower_bound(100, float("nan"), 0.02, 0, 1),
        lambda: tb.kappa0_closed_beta(3, 3, 10, 0.1),
        lambda: tb.cr_k_for_eps(3, 10, 0),
        lambda: tb.flops_all(0, 64),
    ],
)
def test_bad_input_raises_cram_error(call):
    with pytest.raises(CramError):
        call()


# ----------------------------------------------------------------------------------------------
# sympy forms against the exact evaluators
# ----------------------------------------------------------------------------------------------


@given(
    n=st.integers(1, 10**4),
    f=st.fractions(Fraction(1, 100), Fraction(1, 2), max_denominator=100),
    fe=st.fractions(Fraction(1, 100), Fraction(1, 2), max_denominator=100),
    eps=st.fractions(0, Fraction(99, 100), max_denominator=100),
    kap=st.integers(0, 50),
)
@settings(max_examples=25)
def test_lower_bound_expr_matches(n, f, fe, eps, kap):
    expr = tb.lower_bound_expr().subs({tb.n: n, tb.f: f, tb.f_e: fe, tb.eps: eps, tb.kappa: kap})
    assert sp.Rational(expr) == sp.Rational(tb.lower_bound(n, f, fe, eps, kap))
    expr_aq = tb.lower_bound_aq_expr().subs(
        {tb.n: n, tb.f: f, tb.f_e: fe, tb.eps: eps, tb.kappa: kap}
    )
    assert sp.Rational(expr_aq) == sp.Rational(tb.lower_bound_aq(n, f, fe, eps, kap))


def test_l1_expr_and_evaluate_expr():
    val = tb.evaluate_expr(tb.lower_bound_l1_expr(), m_r=102, m_e=20, epsilon=Fraction(1, 10), w=4)
    assert sp.Rational(val) == sp.Rational(tb.lower_bound_l1(102, 20, Fraction(1, 10), 4))
    with pytest.raises(CramError):
        tb.evaluate_expr(tb.lower_bound_l1_expr(), nope=1)


@pytest.mark.parametrize("n_,d_", [(1, 1), (63, 60), (256, 64), (1000, 17)])
def test_flops_expr_matches(n_, d_):
    f_all = tb.flops_all_expr().subs({tb.n: n_, tb.d_model: d_}).doit()
    assert (
        int(f_all)
        == tb.flops_all(n_, d_)
        == sum(8 * d_ * d_ + 4 * d_ * t for t in range(1, n_ + 1))
    )
    a, pia = n_ // 3, (n_ // 3) * 5
    phi = tb.flop_fraction_expr().subs({tb.n: n_, tb.d_model: d_, tb.A: a, tb.Pi_A: pia})
    assert sp.Rational(phi) == sp.Rational(tb.flop_fraction(n_, d_, a, pia))
    phimin = tb.flop_fraction_min_expr().subs({tb.n: n_, tb.d_model: d_})
    assert (
        sp.Rational(phimin)
        == sp.Rational(tb.flop_fraction_min(n_, d_))
        == sp.Rational(tb.flop_fraction(n_, d_, 0, 0))
    )
    # attending everything costs exactly F_all
    assert tb.flop_fraction(n_, d_, n_, n_ * (n_ + 1) // 2) == 1


def test_model_flop_fraction_between_phi_and_one():
    phi = tb.flop_fraction(256, 64, 30, 30 * 200)
    whole = tb.model_flop_fraction(256, 64, 30, 30 * 200, other_flops=10**9)
    assert phi < whole < 1


@given(
    st.integers(1, 10**6),
    st.integers(2, 2**12),
    st.fractions(Fraction(1, 10**6), 1, max_denominator=10**6),
)
@settings(max_examples=60)
def test_cr_k_for_eps_is_minimal(R, v, eps):
    K = tb.cr_k_for_eps(R, v, eps)
    assert K >= 1
    assert tb.cr_acc_e_bound(R, v, K) >= 1 - eps
    if K >= 2:  # one fewer is not enough
        assert Fraction(R, v ** (K - 2)) > eps
    # the sympy form 1 + ceiling(log_v(R/eps)), evaluated at high precision
    expr = tb.cr_k_for_eps_expr().subs(
        {tb.R: R, tb.v: v, tb.eps: sp.Rational(eps.numerator, eps.denominator)}
    )
    x = sp.N(sp.log(sp.Rational(R) / sp.Rational(eps.numerator, eps.denominator), v), 60)
    if abs(x - round(x)) > 1e-40:  # away from an exact power, the float ceiling is reliable
        assert int(sp.N(expr, 60)) == K


def test_cr_bounds_values():
    assert tb.cr_rec_bound(2, 256) == 512
    assert tb.cr_total_bound(1000, 3, 64) == 1192
    assert tb.cr_error_bound(100, 5, 10, 3) == Fraction(5)
    assert tb.cr_acc_e_bound(12, 1024, 2) == 1 - Fraction(12, 1024)
    expr = tb.cr_error_bound_expr().subs({tb.N_epi: 100, tb.R: 5, tb.v: 10, tb.K: 3})
    assert sp.Rational(expr) == 5
    assert tb.cr_rec_bound_expr().subs({tb.K: 2, tb.D_T: 300, tb.P: 256}) == 512


@pytest.mark.parametrize("fmt", ["pretty", "latex", "str"])
def test_theorems_render(fmt):
    ths = tb.theorems()
    names = [t.name for t in ths]
    assert any(n.startswith("Lemma 1") for n in names) and any(
        n.startswith("Theorem 2") for n in names
    )
    for t in ths:
        text = t.render(fmt)
        assert t.name in text and "assumes:" in text
    with pytest.raises(CramError):
        ths[0].render("html")


def test_evaluate_at_is_consistent_with_the_parts():
    vals = tb.evaluate_at(8192, Fraction(1, 10), Fraction(1, 50), w_=4, U=2**14, v_=2**10)
    assert (vals["m_r"], vals["m_e"], vals["S_bits"]) == (819, 164, 96)
    assert vals["kappa0"] == tb.kappa0(96, 164, 2**10) <= vals["kappa0_closed_simple"]
    assert vals["kappa_l1"] == 4 <= vals["kappa0"] < vals["kappa1"]
    assert vals["LB_kappa0"] == tb.lower_bound(
        8192, Fraction(1, 10), Fraction(1, 50), 0, vals["kappa0"]
    )
    assert vals["LB_l1"] == tb.lower_bound_l1(819, 164, 0, 4) > vals["LB_kappa0"]
    with pytest.raises(CramError):
        tb.evaluate_at(100, Fraction(1, 10), Fraction(1, 1000), w_=4, U=2**14, v_=2**10)

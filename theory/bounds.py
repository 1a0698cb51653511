"""The routing bounds of docs/theory.md (§1, §4, §5): closed forms (sympy) and exact numeric evaluation.

Every quantity exists twice: as a sympy expression (for printing a theorem and for symbolic
checks) and as an exact evaluator on Python integers / :class:`fractions.Fraction` (for the
simulator's checks and the hypothesis properties). The two are tested against each other.

- :func:`kappa0` / :func:`kappa1`: how many episodic queries a state of S bits can answer
  without attention (Lemma 2), computed exactly with integer arithmetic.
- :func:`kappa0_closed_simple` / :func:`kappa0_closed_beta`: the closed-form upper bounds on κ₀.
- :func:`lower_bound`: LB(n, f, f_e, ε, κ) = max{0, (1−ε)fn − (f/f_e)κ} (Theorem 1) and
  :func:`lower_bound_l1`, its exact form for the w-slot cache of the L1 simulator.
- :func:`cr_rec_bound`, :func:`cr_error_bound`, :func:`cr_acc_e_bound`, :func:`cr_k_for_eps`,
  :func:`cr_total_bound`: the CR_K upper bound (Theorem 2).
- :func:`flops_all`, :func:`flops_routed`, :func:`flop_fraction`, :func:`flop_fraction_min`:
  the attention cost model of §1.4.
- :func:`theorems`: each statement with its assumptions, printable in sympy's pretty or LaTeX form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import sympy as sp

from cramkit.errors import CramError

Number = int | Fraction

# ----------------------------------------------------------------------------------------------
# symbols
# ----------------------------------------------------------------------------------------------

n, f, f_e, eps, kappa = sp.symbols("n f f_e epsilon kappa", positive=True)
S, m_e, m_r, v, w = sp.symbols("S m_e m_r v w", positive=True, integer=True)
K, P, R, T, D_T = sp.symbols("K P R T D_T", positive=True, integer=True)
N_epi, N_rec, n_q = sp.symbols("N_epi N_rec n_q", positive=True, integer=True)
c, beta, d_model = sp.symbols("c beta d", positive=True)
A, Pi_A = sp.symbols("A Pi_A", nonnegative=True, integer=True)
_k = sp.symbols("k", integer=True, nonnegative=True)


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------


def _int(name: str, x, lo: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int) and not (hasattr(x, "__index__")):
        raise CramError(f"{name} must be an integer, got {x!r}")
    x = int(x)
    if x < lo:
        raise CramError(f"{name} must be >= {lo}, got {x}")
    return x


def _frac(name: str, x, lo=None, hi=None, lo_open=False, hi_open=False) -> Fraction:
    if isinstance(x, bool):
        raise CramError(f"{name} must be a number, got {x!r}")
    if isinstance(x, float) and not math.isfinite(x):
        raise CramError(f"{name} must be finite, got {x!r}")
    try:
        q = Fraction(x)
    except (TypeError, ValueError):
        raise CramError(f"{name} must be a number, got {x!r}") from None
    if lo is not None and (q < lo or (lo_open and q == lo)):
        raise CramError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {x}")
    if hi is not None and (q > hi or (hi_open and q == hi)):
        raise CramError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {x}")
    return q


# ----------------------------------------------------------------------------------------------
# Lemma 2: kappa_0, kappa_1
# ----------------------------------------------------------------------------------------------


def binomial_tail_int(m: int, v_: int) -> list[int]:
    """Integer numerators of Pr[Bin(m, 1/v) >= c] for c = 0..m+1 (denominator v^m)."""
    terms = [math.comb(m, k) * (v_ - 1) ** (m - k) for k in range(m + 1)]
    tails = [0] * (m + 2)
    acc = 0
    for k in range(m, -1, -1):
        acc += terms[k]
        tails[k] = acc
    return tails


def binomial_tail(m: int, v_: int, c_: int) -> Fraction:
    """Pr[Bin(m, 1/v) >= c], exactly."""
    m = _int("m", m)
    v_ = _int("v", v_, 2)
    c_ = _int("c", c_)
    if c_ > m:
        return Fraction(0)
    return Fraction(binomial_tail_int(m, v_)[c_], v_**m)


@lru_cache(maxsize=4096)
def _kappa0(S_: int, m: int, v_: int, mult: int) -> int:
    tails = binomial_tail_int(m, v_)
    vm = v_**m
    scale = mult * m << S_  # mult * m * 2^S
    for c_ in range(m + 2):  # tail(m+1) = 0, so the loop always returns
        if scale * tails[c_] <= vm:
            return c_
    raise AssertionError("unreachable")  # pragma: no cover


def kappa0(S_: int, m: int, v_: int, *, mult: int = 1) -> int:
    """κ₀(S) = min{c : 2^S · Pr[Bin(m_e, 1/v) ≥ c] ≤ 1/m_e} (Lemma 2), exactly.

    ``mult`` multiplies 2^S (κ₁ uses mult = n, i.e. S + log₂ n bits). Needs m_e ≥ 1 and v ≥ 2.
    The result lies in [0, m_e + 1].
    """
    S_ = _int("S", S_)
    m = _int("m_e", m, 1)
    v_ = _int("v", v_, 2)
    mult = _int("mult", mult, 1)
    return _kappa0(S_, m, v_, mult)


def harmonic(k: int) -> Fraction:
    """H_k = 1 + 1/2 + ... + 1/k, exactly."""
    k = _int("k", k)
    return sum((Fraction(1, i) for i in range(1, k + 1)), Fraction(0))


def kappa1(S_: int, m: int, v_: int, n_: int, nq: int) -> Fraction:
    """κ₁ = κ₀(S + log₂ n)·H_{n_q} + 1 (Lemma 2, model (G)), exactly."""
    n_ = _int("n", n_, 1)
    nq = _int("n_q", nq, 1)
    return kappa0(S_, m, v_, mult=n_) * harmonic(nq) + 1


def kappa0_closed_simple(S_: int, m: int, v_: int) -> int:
    """The closed-form bound κ₀ ≤ ⌈(S + m_e + log₂ m_e) / log₂ v⌉ (exact ceiling)."""
    S_ = _int("S", S_)
    m = _int("m_e", m, 1)
    v_ = _int("v", v_, 2)
    # smallest integer c with v^c >= 2^(S+m) * m, i.e. c*log2 v >= S + m + log2 m
    target = m << (S_ + m)
    c_ = max(0, (S_ + m + m.bit_length() - 1) // max(1, v_.bit_length()) - 1)
    while v_**c_ < target:
        c_ += 1
    return c_


def kappa0_closed_beta(S_: int, m: int, v_: int, beta_: float) -> float:
    """The closed-form bound κ₀ ≤ 1 + max{β m_e, (S + log₂ m_e)/log₂(βv/e)} for β ∈ (e/v, 1]."""
    S_ = _int("S", S_)
    m = _int("m_e", m, 1)
    v_ = _int("v", v_, 2)
    if not (isinstance(beta_, (int, float, Fraction)) and math.e / v_ < beta_ <= 1):
        raise CramError(f"beta must lie in (e/v, 1] = ({math.e / v_:.4g}, 1], got {beta_!r}")
    return 1.0 + max(float(beta_) * m, (S_ + math.log2(m)) / math.log2(float(beta_) * v_ / math.e))


def cache_bits(w_: int, U: int, v_: int) -> int:
    """State size S of a w-slot binding cache: w·(⌈log₂U⌉ + ⌈log₂v⌉) bits."""
    w_ = _int("w", w_)
    U = _int("U", U, 1)
    v_ = _int("v", v_, 2)
    return w_ * ((U - 1).bit_length() + (v_ - 1).bit_length())


def kappa_l1(w_: int, m: int) -> int:
    """C_skip bound of the L1 simulator's w-slot cache: at most min(w, m_e) skipped episodic
    queries can be answered, one per cached binding (property H5)."""
    return min(_int("w", w_), _int("m_e", m))


# ----------------------------------------------------------------------------------------------
# Theorem 1: the static lower bound
# ----------------------------------------------------------------------------------------------


def lower_bound(n_, f_, fe_, eps_, kappa_) -> Fraction:
    """LB(n, f, f_e, ε, κ) = max{0, (1−ε)·f·n − (f/f_e)·κ}, exactly (Theorem 1, on E[A_rec])."""
    n_ = _frac("n", n_, lo=0)
    f_ = _frac("f", f_, lo=0, hi=1)
    fe_ = _frac("f_e", fe_, lo=0, hi=1, lo_open=True)
    eps_ = _frac("eps", eps_, lo=0, hi=1)
    kappa_ = _frac("kappa", kappa_, lo=0)
    return max(Fraction(0), (1 - eps_) * f_ * n_ - f_ / fe_ * kappa_)


def lower_bound_aq(n_, f_, fe_, eps_, kappa_) -> Fraction:
    """Theorem 1's bound on attended query slots: max{0, (1−ε)(f+f_e)n − (1 + f/f_e)κ}."""
    n_ = _frac("n", n_, lo=0)
    f_ = _frac("f", f_, lo=0, hi=1)
    fe_ = _frac("f_e", fe_, lo=0, hi=1, lo_open=True)
    eps_ = _frac("eps", eps_, lo=0, hi=1)
    kappa_ = _frac("kappa", kappa_, lo=0)
    return max(Fraction(0), (1 - eps_) * (f_ + fe_) * n_ - (1 + f_ / fe_) * kappa_)


def lower_bound_l1(mr: int, me: int, eps_, w_: int) -> Fraction:
    """Exact L1 form (property H6): (1−ε)·m_r − (m_r/m_e)·min(w, m_e), not clipped at 0."""
    mr = _int("m_r", mr)
    me = _int("m_e", me, 1)
    eps_ = _frac("eps", eps_, lo=0, hi=1)
    return (1 - eps_) * mr - Fraction(mr, me) * kappa_l1(w_, me)


# ----------------------------------------------------------------------------------------------
# Theorem 2: CR_K
# ----------------------------------------------------------------------------------------------


def cr_rec_bound(K_: int, D: int) -> int:
    """A_rec^cum(T) ≤ K·D_T (Theorem 2 (i)); D_T = distinct pool patterns queried so far."""
    return _int("K", K_, 1) * _int("D_T", D)


def cr_error_bound(n_epi: int, R_: int, v_: int, K_: int) -> Fraction:
    """E[#episodic errors] ≤ N_epi·R·v^{−(K−1)} (Theorem 2 (ii))."""
    return Fraction(
        _int("N_epi", n_epi) * _int("R", R_), _int("v", v_, 2) ** (_int("K", K_, 1) - 1)
    )


def cr_acc_e_bound(R_: int, v_: int, K_: int) -> Fraction:
    """acc_e ≥ 1 − R·v^{−(K−1)} (Theorem 2 (ii), per episodic query)."""
    return 1 - Fraction(_int("R", R_), _int("v", v_, 2) ** (_int("K", K_, 1) - 1))


def cr_k_for_eps(R_: int, v_: int, eps_) -> int:
    """K = 1 + ⌈log_v(R/ε)⌉: the smallest such K guarantees acc_e ≥ 1 − ε (Theorem 2 (ii))."""
    R_ = _int("R", R_, 1)
    v_ = _int("v", v_, 2)
    eps_ = _frac("eps", eps_, lo=0, hi=1, lo_open=True, hi_open=False)
    ratio = Fraction(R_) / eps_
    j = 0
    while Fraction(v_**j) < ratio:  # j = ceil(log_v(R/eps)), exactly
        j += 1
    return 1 + j


def cr_total_bound(n_epi: int, K_: int, P_: int) -> int:
    """A^cum(T) ≤ N_epi + K·P (Theorem 2 (iii))."""
    return _int("N_epi", n_epi) + _int("K", K_, 1) * _int("P", P_, 1)


# ----------------------------------------------------------------------------------------------
# §1.4: FLOPs of one attention layer
# ----------------------------------------------------------------------------------------------


def flops_all(n_: int, d_: int) -> int:
    """F_all = Σ_{t=1}^n (8d² + 4dt) = 8d²n + 2dn(n+1)."""
    n_ = _int("n", n_, 1)
    d_ = _int("d", d_, 1)
    return 8 * d_ * d_ * n_ + 2 * d_ * n_ * (n_ + 1)


def flops_routed(n_: int, d_: int, a: int, pi_a: int) -> int:
    """F_route = 4d²n + Σ_{t∈A}(4d² + 4dt) = 4d²n + 4d²·A + 4d·Π_A (positions t are 1-based)."""
    n_ = _int("n", n_, 1)
    d_ = _int("d", d_, 1)
    return 4 * d_ * d_ * n_ + 4 * d_ * d_ * _int("A", a) + 4 * d_ * _int("Pi_A", pi_a)


def flop_fraction(n_: int, d_: int, a: int, pi_a: int) -> Fraction:
    """φ = F_route / F_all."""
    return Fraction(flops_routed(n_, d_, a, pi_a), flops_all(n_, d_))


def flop_fraction_min(n_: int, d_: int) -> Fraction:
    """φ_min = 4d²n / F_all (no position attended; K/V projections are still computed)."""
    return Fraction(4 * _int("d", d_, 1) ** 2 * _int("n", n_, 1), flops_all(n_, d_))


def model_flop_fraction(n_: int, d_: int, a: int, pi_a: int, other_flops: int) -> Fraction:
    """FLOP fraction of a whole model whose non-attention layers cost ``other_flops`` per sequence."""
    other = _int("other_flops", other_flops)
    return Fraction(other + flops_routed(n_, d_, a, pi_a), other + flops_all(n_, d_))


# ----------------------------------------------------------------------------------------------
# sympy expressions
# ----------------------------------------------------------------------------------------------


def binomial_tail_expr() -> sp.Expr:
    """Pr[Bin(m_e, 1/v) ≥ c] as a sympy sum."""
    return sp.Sum(sp.binomial(m_e, _k) * (1 / v) ** _k * (1 - 1 / v) ** (m_e - _k), (_k, c, m_e))


def kappa0_condition_expr() -> sp.Rel:
    """The defining inequality of κ₀: 2^S·Pr[Bin(m_e, 1/v) ≥ c] ≤ 1/m_e."""
    return sp.Le(2**S * binomial_tail_expr(), 1 / m_e)


def kappa0_closed_simple_expr() -> sp.Expr:
    return sp.ceiling((S + m_e + sp.log(m_e, 2)) / sp.log(v, 2))


def kappa0_closed_beta_expr() -> sp.Expr:
    return 1 + sp.Max(beta * m_e, (S + sp.log(m_e, 2)) / sp.log(beta * v / sp.E, 2))


def kappa1_expr() -> sp.Expr:
    kappa0_g = sp.Function("kappa_0")(S + sp.log(n, 2))
    return kappa0_g * sp.harmonic(n_q) + 1


def lower_bound_expr() -> sp.Expr:
    """LB = max{0, (1−ε)fn − (f/f_e)κ}."""
    return sp.Max(0, (1 - eps) * f * n - f / f_e * kappa)


def lower_bound_aq_expr() -> sp.Expr:
    return sp.Max(0, (1 - eps) * (f + f_e) * n - (1 + f / f_e) * kappa)


def lower_bound_l1_expr() -> sp.Expr:
    return (1 - eps) * m_r - m_r / m_e * sp.Min(w, m_e)


def cr_rec_bound_expr() -> sp.Expr:
    return K * sp.Min(D_T, P)


def cr_error_bound_expr() -> sp.Expr:
    return N_epi * R * v ** (-(K - 1))


def cr_k_for_eps_expr() -> sp.Expr:
    return 1 + sp.ceiling(sp.log(R / eps, v))


def cr_total_bound_expr() -> sp.Expr:
    return N_epi + K * P


_t = sp.symbols("t", integer=True, positive=True)


def flops_all_expr() -> sp.Expr:
    return sp.Sum(8 * d_model**2 + 4 * d_model * _t, (_t, 1, n))


def flops_routed_expr() -> sp.Expr:
    return 4 * d_model**2 * n + 4 * d_model**2 * A + 4 * d_model * Pi_A


def flop_fraction_expr() -> sp.Expr:
    return flops_routed_expr() / sp.expand(sp.simplify(flops_all_expr().doit()))


def flop_fraction_min_expr() -> sp.Expr:
    return 4 * d_model**2 * n / sp.expand(sp.simplify(flops_all_expr().doit()))


# ----------------------------------------------------------------------------------------------
# theorems, printable
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Theorem:
    """A statement with its tag ([T] theorem, [P] proposition, [D] definition), its
    assumptions, and the sympy relations it asserts."""

    name: str
    tag: str
    assumptions: tuple[str, ...]
    statements: tuple[sp.Basic, ...]
    note: str = ""

    def render(self, fmt: str = "pretty") -> str:
        if fmt not in ("pretty", "latex", "str"):
            raise CramError(f"format must be 'pretty', 'latex' or 'str', got {fmt!r}")
        show = {
            "pretty": lambda e: sp.pretty(e, use_unicode=True),
            "latex": sp.latex,
            "str": sp.sstr,
        }[fmt]
        lines = [f"{self.name} {self.tag}"]
        lines += [f"  assumes: {a}" for a in self.assumptions]
        for st in self.statements:
            body = show(st)
            lines += ["    " + ln for ln in body.splitlines()]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def theorems() -> list[Theorem]:
    """The bounds of docs/theory.md (Proposition 3 lives in ``cramkit.theory.count_model``)."""
    E = sp.Function("E")
    E_Arec = E(sp.Symbol("A_rec"))
    E_Aq = E(sp.Symbol("A_q"))
    E_Cskip = E(sp.Symbol("C_skip"))
    A_rec_cum = sp.Function("A_rec_cum")(T)
    A_cum = sp.Function("A_cum")(T)
    errors = E(sp.Symbol("errors_epi"))
    phi = sp.Symbol("phi")
    F_all = sp.Symbol("F_all")
    kappa_0 = sp.Symbol("kappa_0")
    kappa_1 = sp.Symbol("kappa_1")
    return [
        Theorem(
            "Lemma 1 (type symmetry)",
            "[T]",
            (
                "uniform pool prior (keys uniform without replacement, values i.i.d. uniform, ranks by a uniform permutation)",
                "chi = 0; every key queried at most once per sequence",
                "layout and query order drawn independently of the query types",
                "the router is static and satisfies (N): its decisions are a function of the tokens and independent randomness",
            ),
            (
                sp.Eq(E_Arec, m_r / n_q * E_Aq),
                sp.Eq(E(sp.Symbol("A_epi")), m_e / n_q * E_Aq),
            ),
        ),
        Theorem(
            "Lemma 2 (the state cannot replace attention)",
            "[T]",
            (
                "the non-attention state has S bits",
                "model (R) with the context-then-query layout for kappa_0; model (G) for kappa_1",
                "random query order, each key queried once, episodic values i.i.d. uniform on v values",
            ),
            (
                kappa0_condition_expr(),
                sp.Le(E_Cskip, kappa_0),
                sp.Eq(kappa_1, kappa1_expr()),
                sp.Le(kappa_0, kappa0_closed_simple_expr()),
                sp.Le(kappa_0, kappa0_closed_beta_expr()),
            ),
            note="kappa_0 is the least integer c satisfying the first line; the closed form with "
            "beta holds for every beta in (e/v, 1]",
        ),
        Theorem(
            "Theorem 1 (static lower bound)",
            "[T]",
            (
                "the conditions of Lemma 1",
                "f_e > 0 (novel episodic bindings) and episodic accuracy acc_e >= 1 - eps required separately",
                "kappa = kappa_0 in model (R), kappa_1 in model (G)",
                "expectations over a world drawn from the prior",
            ),
            (
                sp.Ge(E_Arec, lower_bound_expr()),
                sp.Ge(E_Aq, lower_bound_aq_expr()),
            ),
            note="fails under F1 (f_e = 0 with a memory of the pool), F2 (router fitted on the "
            "evaluation pool), F3 (type leak), F4 (S >= m_e(log2 U + log2 v)), F5 (overall accuracy only)",
        ),
        Theorem(
            "Theorem 1, exact L1 form (w-slot cache)",
            "[T]",
            (
                "model (R); the state is a w-slot cache of context bindings chosen independently of type",
            ),
            (sp.Ge(sp.Function("E_tau")(sp.Symbol("A_rec")), lower_bound_l1_expr()),),
        ),
        Theorem(
            "Theorem 2 (CR_K upper bound)",
            "[T]",
            (
                "a stream of T sequences from one world, chi = 0, model (R)",
                "D_T distinct pool patterns queried; R = largest number of occurrences of one episodic key",
            ),
            (
                sp.Le(A_rec_cum, cr_rec_bound_expr()),
                sp.Le(errors, cr_error_bound_expr()),
                sp.Eq(K, cr_k_for_eps_expr()),
                sp.Le(A_cum, cr_total_bound_expr()),
            ),
            note="with K = 1 + ceil(log_v(R/eps)) episodic accuracy is at least 1 - eps",
        ),
        Theorem(
            "Attention cost (FLOPs of one attention layer of width d)",
            "[D]",
            ("positions t = 1..n; K/V projections are computed at every position",),
            (
                sp.Eq(F_all, flops_all_expr()),
                sp.Eq(sp.Symbol("F_route"), flops_routed_expr()),
                sp.Eq(phi, flop_fraction_expr()),
                sp.Eq(sp.Symbol("phi_min"), flop_fraction_min_expr()),
            ),
        ),
    ]


def evaluate_expr(expr: sp.Expr, **values) -> sp.Expr:
    """Substitute named values into an expression of this module and evaluate it exactly."""
    table = {sym.name: sym for sym in expr.free_symbols}
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise CramError(f"unknown symbol(s) {unknown}; the expression uses {sorted(table)}")
    subs = {
        table[k]: sp.nsimplify(val) if isinstance(val, float) else sp.sympify(val)
        for k, val in values.items()
    }
    return sp.simplify(expr.subs(subs).doit())


def evaluate_at(
    n_: int, f_, fe_, *, w_: int, U: int, v_: int, eps_=0, K_: int = 2
) -> dict[str, object]:
    """The bounds evaluated at one configuration (m_r = round(f·n), m_e = round(f_e·n)), exactly.

    Returns the cache's state size S, κ₀(S), κ₁, the L1 capacity min(w, m_e), Theorem 1's LB with
    κ₀ and with min(w, m_e), the exact L1 bound, and CR_K's K needed for ε given R = 1.
    """
    n_ = _int("n", n_, 1)
    f_ = _frac("f", f_, lo=0, hi=1)
    fe_ = _frac("f_e", fe_, lo=0, hi=1, lo_open=True)
    eps_ = _frac("eps", eps_, lo=0, hi=1)
    mr, me = int(round(f_ * n_)), int(round(fe_ * n_))
    if me < 1:
        raise CramError(f"m_e = round(f_e·n) = {me}: Theorem 1 needs at least one episodic slot")
    S_ = cache_bits(w_, U, v_)
    k0 = kappa0(S_, me, v_)
    return {
        "n": n_,
        "m_r": mr,
        "m_e": me,
        "S_bits": S_,
        "kappa0": k0,
        "kappa1": kappa1(S_, me, v_, n_, mr + me),
        "kappa0_closed_simple": kappa0_closed_simple(S_, me, v_),
        "kappa_l1": kappa_l1(w_, me),
        "LB_kappa0": lower_bound(n_, f_, fe_, eps_, k0),
        "LB_l1": lower_bound_l1(mr, me, eps_, w_),
        "phi_min_d64": flop_fraction_min(n_, 64),
        "K_for_eps_0.01_R_1": cr_k_for_eps(1, v_, Fraction(1, 100)),
    }

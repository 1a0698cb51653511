"""Proposition 3 (docs/fit-gamma.md, "The count model"): the count model of CR_K under Zipf(alpha) recurrence.

After N recurring queries, pattern j has been seen ~ Poi(N p_j) times and is still attended
while it has been seen fewer than K times, so (Poisson approximation)

    E_rec(N) = sum_j p_j F_K(N p_j),   F_K(lambda) = Pr[Poi(lambda) < K] = Q(K, lambda),

with Q the regularized upper incomplete gamma function. This module computes

* the exact sum (:func:`exact_curve`), vectorised over N in chunks of patterns;
* the alpha > 1, P -> infinity closed form C(alpha, K) N^-(1 - 1/alpha) (:func:`asymptotic_curve`,
  and the sympy expression :func:`asymptotic_expr` that ``cram bound --symbolic`` may print);
* the alpha = 0 sigmoid F_K(N/P) and its 90% -> 10% width in decades (:func:`uniform_width`).
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from scipy.special import gamma as gamma_fn
from scipy.special import gammaincc, gammainccinv, zeta

from cramkit.errors import CramError

ALPHA, K_SYM, N_SYM = sp.symbols("alpha K N", positive=True)


def zipf_weights(P: int, alpha: float) -> np.ndarray:
    """p_j proportional to j^-alpha, j = 1..P, normalised to sum 1."""
    if P < 1:
        raise CramError(f"P must be >= 1, got {P}")
    if not np.isfinite(alpha) or alpha < 0:
        raise CramError(f"alpha must be finite and >= 0, got {alpha}")
    w = np.arange(1, P + 1, dtype=np.float64) ** (-float(alpha))
    return w / w.sum()


def poisson_below(K: int, lam: np.ndarray) -> np.ndarray:
    """F_K(lambda) = Pr[Poi(lambda) < K] = Q(K, lambda) (scipy's regularized incomplete gamma)."""
    return gammaincc(K, lam)


def _poisson_below_sum(K: int, lam: np.ndarray) -> np.ndarray:
    """The same as :func:`poisson_below` by the finite sum e^-lambda sum_{k<K} lambda^k / k!
    (several times faster than gammaincc for integer K; checked against it in the tests)."""
    term = np.exp(-lam)
    total = term.copy()
    for k in range(1, K):
        term *= lam / k
        total += term
    return total


def exact_curve(N: np.ndarray, *, alpha: float, K: int, P: int, chunk: int = 1 << 15) -> np.ndarray:
    """E_rec(N) = sum_j p_j F_K(N p_j) for each N (the exact Poissonised count-model curve)."""
    _check_K(K)
    N = np.asarray(N, dtype=np.float64)
    if np.any(~np.isfinite(N)) or np.any(N < 0):
        raise CramError("N must be finite and non-negative")
    p = zipf_weights(P, alpha)
    nflat = N.reshape(-1)
    out = np.zeros(nflat.size, dtype=np.float64)
    for s in range(0, P, chunk):
        pc = p[s: s + chunk]
        out += pc @ _poisson_below_sum(int(K), pc[:, None] * nflat[None, :])
    return out.reshape(N.shape)


def asymptotic_constant(alpha: float, K: int) -> float:
    """C(alpha, K) = zeta(alpha)^(-1/alpha) / alpha * sum_{k<K} Gamma(k + 1 - 1/alpha) / k!."""
    _check_K(K)
    if alpha <= 1:
        raise CramError(f"the closed form needs alpha > 1, got {alpha}")
    ks = np.arange(K)
    s = float(np.sum(gamma_fn(ks + 1 - 1 / alpha) / gamma_fn(ks + 1)))
    return float(zeta(alpha) ** (-1 / alpha) / alpha * s)


def asymptotic_curve(N: np.ndarray, *, alpha: float, K: int) -> np.ndarray:
    """C(alpha, K) N^-(1 - 1/alpha): the alpha > 1, P -> infinity limit of :func:`exact_curve`."""
    return asymptotic_constant(alpha, K) * np.asarray(N, dtype=np.float64) ** (-(1 - 1 / alpha))


def asymptotic_expr(K: int | None = None) -> sp.Expr:
    """The closed form as a sympy expression in alpha, N (and K unless a number is given)."""
    k = sp.Symbol("k", integer=True, nonnegative=True)
    upper = (K_SYM if K is None else sp.Integer(K)) - 1
    total = sp.Sum(sp.gamma(k + 1 - 1 / ALPHA) / sp.factorial(k), (k, 0, upper))
    if K is not None:
        total = total.doit()
    return sp.zeta(ALPHA) ** (-1 / ALPHA) / ALPHA * total * N_SYM ** (-(1 - 1 / ALPHA))


def exact_expr(P: int | None = None) -> sp.Expr:
    """The exact Poissonised curve as a sympy expression in alpha, K, N (and P unless given):
    sum_j p_j Q(K, N p_j) with p_j = j^-alpha / H_{P, alpha} and Q(K, x) = Gamma(K, x)/Gamma(K)."""
    j = sp.Symbol("j", integer=True, positive=True)
    Psym = sp.Symbol("P", integer=True, positive=True) if P is None else sp.Integer(P)
    norm = sp.Sum(j ** (-ALPHA), (j, 1, Psym))
    pj = j ** (-ALPHA) / norm
    return sp.Sum(pj * sp.uppergamma(K_SYM, N_SYM * pj) / sp.gamma(K_SYM), (j, 1, Psym))


def predicted_gamma(alpha: float) -> float:
    """gamma = 1 - 1/alpha (alpha > 1)."""
    if alpha <= 1:
        raise CramError(f"gamma = 1 - 1/alpha holds for alpha > 1, got {alpha}")
    return 1 - 1 / alpha


def uniform_quantile(K: int, q: float) -> float:
    """lambda with F_K(lambda) = q (alpha = 0: E_rec = F_K(N/P), so N = lambda P)."""
    _check_K(K)
    return float(gammainccinv(K, q))


def uniform_width(K: int) -> float:
    """W = log10(lambda_10 / lambda_90) in decades for the alpha = 0 sigmoid F_K(N/P)."""
    return float(np.log10(uniform_quantile(K, 0.1) / uniform_quantile(K, 0.9)))


def width_table(Ks=(1, 2, 3, 5, 10, 20)) -> dict[int, float]:
    return {int(k): uniform_width(int(k)) for k in Ks}


def _check_K(K: int) -> None:
    if int(K) != K or K < 1:
        raise CramError(f"K must be a positive integer, got {K}")

"""``cram bound --symbolic``: the theorems with their assumptions, and the bounds evaluated exactly
at one configuration, as a :class:`cramkit.result.Result`.

``run(SymbolicConfig(n=8192, f=0.1, f_e=0.02, w=4))`` gives a :class:`SymbolicResult` whose
:meth:`~SymbolicResult.report` prints each statement (sympy's pretty form, or LaTeX) and the exact
values; :meth:`~SymbolicResult.to_json` gives ``{"theorems": [{"name", "text"}], "evaluated": {...}}``.
The statements are those of :func:`cramkit.theory.bounds.theorems` plus Proposition 3 from
:mod:`cramkit.theory.count_model` (docs/theory.md, docs/fit-gamma.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import sympy as sp

from cramkit.errors import CramError
from cramkit.progress import Progress
from cramkit.result import Result
from cramkit.sim.srcd import SRCDConfig
from cramkit.theory import bounds, count_model
from cramkit.theory.bounds import Theorem

# the configuration the numbers are evaluated at, besides the command's own settings: SRCD's
# default key and value vocabularies, and eps = 0
U_EVAL, V_EVAL, EPS_EVAL = SRCDConfig.U, SRCDConfig.v, 0


@dataclass(frozen=True)
class SymbolicConfig:
    """Where to evaluate the bounds: n, f = m_r/n, f_e = m_e/n and the cache slots w; ``latex``
    chooses LaTeX over sympy's pretty form. A float is read by its shortest decimal form
    (0.1 is exactly 1/10)."""

    n: int = 8192
    f: float = 0.1
    f_e: float = 0.02
    w: int = 4
    latex: bool = False

    def __post_init__(self) -> None:
        for name in ("f", "f_e"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float, Fraction)):
                raise CramError(f"{name} must be a number, got {x!r}")
            if isinstance(x, float) and not math.isfinite(x):
                raise CramError(f"{name} must be a finite number in (0, 1), got {x}")
        for name, lo in (("n", 1), ("w", 0)):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < lo:
                raise CramError(f"{name} must be an integer >= {lo}, got {x!r}")


def proposition3() -> Theorem:
    """Proposition 3 (the count model of CR_K) as a printable statement."""
    N, alpha = sp.symbols("N alpha", positive=True)
    return Theorem(
        "Proposition 3 (count model of CR_K)",
        "[P]",
        (
            "CR_K with Zipf(alpha) recurrence; pattern j seen ~ Poi(N p_j) times after N recurring queries",
            "alpha > 1 and P -> infinity (for finite P the curve drops to 0 near N = K zeta(alpha) P^alpha)",
        ),
        (
            sp.Eq(sp.Function("E_rec")(N), count_model.asymptotic_expr()),
            sp.Eq(sp.Symbol("gamma"), 1 - 1 / alpha),
        ),
        note="from cramkit.theory.count_model.asymptotic_expr",
    )


def _pow2(x: int) -> str:
    return f"2^{x.bit_length() - 1}" if x & (x - 1) == 0 else str(x)


def _readable(v: Any) -> Any:
    """Exact fractions unless the denominator is unreadably long (H_{n_q} in kappa1)."""
    if isinstance(v, Fraction):
        return str(v) if v.denominator <= 10**6 else float(v)
    return v


@dataclass
class SymbolicResult(Result):
    config: SymbolicConfig
    theorems: list[Theorem]
    values: dict[str, Any]  # exact (int or Fraction)

    name = "cram bound --symbolic"

    @property
    def _fmt(self) -> str:
        return "latex" if self.config.latex else "pretty"

    def to_json(self) -> dict[str, Any]:
        return {
            "theorems": [{"name": t.name, "text": t.render(self._fmt)} for t in self.theorems],
            "evaluated": {k: _readable(v) for k, v in self.values.items()},
        }

    def report(self) -> str:
        c = self.config
        out = []
        for t in self.theorems:
            out += [t.render(self._fmt), ""]
        out.append(
            f"Evaluated exactly (long fractions shown as floats) at n = {c.n}, f = {c.f:g}, f_e = {c.f_e:g}, "
            f"w = {c.w}, U = {_pow2(U_EVAL)}, v = {_pow2(V_EVAL)}, eps = {EPS_EVAL}, d = 64:"
        )
        for k, v in self.values.items():
            shown = _readable(v)
            approx = f" ≈ {float(v):.6g}" if isinstance(shown, str) else ""
            out.append(f"  {k} = {shown}{approx}")
        return "\n".join(out)


def run(config: SymbolicConfig, progress: Progress | None = None) -> SymbolicResult:
    """Render the theorems and evaluate the bounds exactly at ``config``."""
    values = bounds.evaluate_at(
        config.n, Fraction(str(config.f)), Fraction(str(config.f_e)),
        w_=config.w, U=U_EVAL, v_=V_EVAL, eps_=EPS_EVAL,
    )  # fmt: skip
    return SymbolicResult(config, [*bounds.theorems(), proposition3()], values)

"""The settings of ``cram bound``: :class:`BoundConfig`, validated on construction.

The SRCD parameters a sweep does not choose itself (U, v, alpha, and every parameter it does not
name) are SRCD's own defaults: :class:`cramkit.sim.srcd.SRCDConfig` declares them once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cramkit.errors import CramError
from cramkit.sim.routers import DEFAULT_STATIC, CRRouter, Router, parse_router
from cramkit.sim.srcd import SRCDConfig


@dataclass(frozen=True)
class BoundConfig:
    """Parameters of the sweep. ``eps`` is the episodic accuracy requirement 1 − ε that decides
    which static routers P1 holds (acc_e ≥ 1 − ε at the largest n)."""

    freq: float = 0.1
    f_e: float = 0.02
    P: int = 1024
    alpha: float = SRCDConfig.alpha
    U: int = SRCDConfig.U
    v: int = SRCDConfig.v
    n_min: int = 256
    n_max: int = 8192
    seeds: int = 20
    batch: int = 8
    routers: tuple[str, ...] = DEFAULT_STATIC
    Ks: tuple[int, ...] = (1, 2, 3, 5)
    w: int = 4
    eps: float = 0.95
    T: int = 10_000
    stream_P: int = 64
    d_model: int = 64
    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CramError` naming the first setting that is out of range."""
        self._check_numbers()
        if self.seeds < 20:
            raise CramError(
                f"seeds must be at least 20, got {self.seeds}: P1's seed bootstrap is too narrow with fewer "
                "(measured: 4 of 20 runs with 10 seeds fail P1 for honest routers)"
            )
        if self.freq + self.f_e >= 1:
            raise CramError(f"freq + f_e must be < 1, got {self.freq} + {self.f_e}")
        if self.n_max < 2 * self.n_min:
            raise CramError(
                f"the n range needs at least two sizes: n_max ({self.n_max}) >= 2·n_min ({self.n_min})"
            )
        if not self.Ks or any(
            isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 10**6
            for k in self.Ks
        ):
            raise CramError(f"K values must be integers in [1, 10^6], got {list(self.Ks)}")
        self._check_routers()
        for n in self.ns:
            self.srcd(n)  # SRCD's named constraint errors (docs/srcd.md)
        self.stream_srcd()

    def _check_numbers(self) -> None:
        def real(name, lo, hi, lo_open=True, hi_open=True):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise CramError(f"{name} must be a finite number, got {x!r}")
            if x < lo or x > hi or (lo_open and x == lo) or (hi_open and x == hi):
                lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
                raise CramError(f"{name} must lie in {lb}{lo}, {hi}{rb}, got {x}")

        def integer(name, lo):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo:
                raise CramError(f"{name} must be an integer >= {lo}, got {x!r}")

        real("freq", 0, 1)
        real("f_e", 0, 1)
        real("alpha", 0, math.inf, lo_open=False)
        real("eps", 0, 1, lo_open=False)
        real("level", 0, 1)
        for name, lo in (("P", 1), ("U", 2), ("v", 2), ("n_min", 8), ("n_max", 8), ("seeds", 1),
                         ("batch", 1), ("w", 0), ("T", 10), ("stream_P", 1), ("d_model", 1),
                         ("n_boot", 100), ("seed", 0)):  # fmt: skip
            integer(name, lo)

    def _check_routers(self) -> None:
        names = [r.name for r in self.static_routers()]  # raises on unknown names
        if any(isinstance(parse_router(r), CRRouter) for r in self.routers):
            raise CramError(
                "CR_K routers are chosen with the K option, not among the static routers"
            )
        if len(set(names)) != len(names):
            raise CramError(f"router names repeat: {list(self.routers)}")

    def static_routers(self) -> list[Router]:
        """The routers named in ``routers``, parsed (CR_K excluded by validation)."""
        return [parse_router(r) for r in self.routers]

    @property
    def ns(self) -> list[int]:
        """The sequence lengths of the sweep: n_min, 2·n_min, … up to n_max."""
        out, n = [], self.n_min
        while n <= self.n_max:
            out.append(n)
            n *= 2
        return out

    def srcd(self, n: int, **changes: Any) -> SRCDConfig:
        """The SRCD config at length n (d = n_q distractors, the reference grid)."""
        m_r, m_e = int(round(self.freq * n)), int(round(self.f_e * n))
        if m_r < 1 or m_e < 1:
            raise CramError(
                f"at n = {n}, m_r = round(f·n) = {m_r} and m_e = round(f_e·n) = {m_e}: both must be >= 1 "
                "(Theorem 1 needs episodic slots); raise n_min, freq or f_e"
            )
        base = dict(
            n=n, m_r=m_r, m_e=m_e, P=self.P, alpha=self.alpha, U=self.U, v=self.v, d=m_r + m_e
        )
        base.update(changes)
        try:
            return SRCDConfig(**base)
        except CramError as exc:
            raise CramError(f"at n = {n}: {exc}") from None

    def stream_srcd(self) -> SRCDConfig:
        """The SRCD config of the stream (n = n_min, pool size stream_P)."""
        try:
            return self.srcd(self.n_min, P=self.stream_P)
        except CramError as exc:
            raise CramError(f"stream (stream_P = {self.stream_P}): {exc}") from None

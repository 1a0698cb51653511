"""The static-bound sweep of ``cram bound`` and its criteria P1 and P2 (docs/theory.md §7).

:func:`run_sweep` doubles n from ``n_min`` to ``n_max``; per n and seed it draws a world from the
prior and ``batch`` IID sequences, scores every static router exactly with the L1 simulator (the
semantic memory of the pool and a w-slot cache) and runs CR_K over the seed's sequences; the
negative controls that use the same worlds are collected on the way (:mod:`.controls`).
:func:`analyse_sweep` turns the counts into one :class:`RouterRow` per router and decides P1, P2.

How P1's slope criterion is decided (docs/theory.md §7): by Lemma 1 a pool-oblivious router has
E[A_rec(n)] = (m_r/m_e)·E[A_epi(n)] = (1 − ε_n)·m_r(n) *exactly*, with ε_n its episodic skip rate.
The bound a router is held to is therefore b = the OLS slope of (1 − ε̂_n)·m_r(n) against n
(= (1 − ε̂)·f when the skip rate does not depend on n; m_r(n) = round(f·n) is used, not f·n, so
rounding cannot fail a router). Since the bound is tight, the test is paired: the seed bootstrap
of the slope of A_rec − (m_r/m_e)·A_epi must reach 0 at its upper end, with a Bonferroni-corrected
level over the routers held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from cramkit.progress import Progress, report_to
from cramkit.sim.boundcheck.common import Timer, fit_static, sweep_batch
from cramkit.sim.boundcheck.config import BoundConfig
from cramkit.sim.boundcheck.controls import ControlCounts
from cramkit.sim.boundcheck.result import Criterion, RouterRow
from cramkit.sim.routers import LearnedRouter, OraclePosRouter, Router
from cramkit.sim.simulate import Counts
from cramkit.sim.srcd import make_world
from cramkit.theory import bounds
from cramkit.theory.stats import ols_line, seed_bootstrap_slope

#: per-sequence quantities kept for every router, n and seed
FIELDS = ("A_rec", "A_epi", "A_q", "A", "correct_rec", "correct_epi", "phi", "C_skip", "Pi_A")


@dataclass
class SweepData:
    """The sweep's counts: ``seq[router][field]`` has shape (len(ns), seeds, batch)."""

    ns: list[int]
    routers: list[Router]  # the static routers, ORACLE-POS always among them
    Ks: tuple[int, ...]
    seq: dict[str, dict[str, np.ndarray]]
    m_r: np.ndarray
    m_e: np.ndarray

    @property
    def n_q(self) -> np.ndarray:
        return self.m_r + self.m_e

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.routers] + [f"CR_{K}" for K in self.Ks]

    @classmethod
    def empty(cls, cfg: BoundConfig, routers: list[Router]) -> SweepData:
        ns = cfg.ns
        names = [r.name for r in routers] + [f"CR_{K}" for K in cfg.Ks]
        shape = (len(ns), cfg.seeds, cfg.batch)
        seq = {nm: {f: np.zeros(shape) for f in FIELDS} for nm in names}
        m_r = np.array([cfg.srcd(n).m_r for n in ns])
        m_e = np.array([cfg.srcd(n).m_e for n in ns])
        return cls(ns, routers, tuple(cfg.Ks), seq, m_r, m_e)

    def store(self, name: str, i: int, s: int, c: Counts, d_model: int) -> None:
        dst = self.seq[name]
        for f in FIELDS:
            if f != "phi":
                dst[f][i, s] = getattr(c, f)
        dst["phi"][i, s] = c.phi(d_model)

    def per_n_main_bound(self, name: str) -> np.ndarray:
        """(1 − ε̂_n)·m_r(n) with ε̂_n the episodic skip rate: Lemma 1's prediction of Ā_rec(n)."""
        return self.seq[name]["A_epi"].mean(axis=(1, 2)) * self.m_r / self.m_e


def sweep_routers(cfg: BoundConfig) -> list[Router]:
    """The static routers of the sweep: the configured ones, plus ORACLE-POS (P2, P4 need it)."""
    routers = cfg.static_routers()
    if not any(isinstance(r, OraclePosRouter) for r in routers):
        routers.append(OraclePosRouter())
    return routers


def run_sweep(cfg: BoundConfig, timer: Timer, controls: ControlCounts,
              progress: Progress | None = None) -> SweepData:  # fmt: skip
    """Score every router at every n and seed (see the module docstring)."""
    tick = report_to(progress)
    routers = sweep_routers(cfg)
    data = SweepData.empty(cfg, routers)
    S, B = cfg.seeds, cfg.batch
    steps = len(data.ns) * S
    for i, n in enumerate(data.ns):
        scfg = cfg.srcd(n)
        learned = None
        if any(isinstance(r, LearnedRouter) for r in routers):
            learned = fit_static(scfg, cfg.seed, i)
        at_n = controls.prepare(cfg, scfg, i)
        for s in range(S):
            tick("sweep", i * S + s, steps)
            world = make_world(scfg, cfg.seed + s)
            batch = sweep_batch(scfg, world, cfg.seed, s, B)
            for r in routers:
                rr = learned if isinstance(r, LearnedRouter) else r
                # the world is offered to every router: a static one must not use it (H3), and
                # P1 catches one that does
                c = timer.static(scfg, batch, rr, w=cfg.w, memory=world, world=world)
                data.store(r.name, i, s, c, cfg.d_model)
            for K in cfg.Ks:
                data.store(f"CR_{K}", i, s, timer.cr(scfg, batch, K).counts, cfg.d_model)
            controls.collect(at_n, timer, cfg, scfg, batch, world, s)
    tick("sweep", steps, steps)
    return data


# ----------------------------------------------------------------------------------------------
# analysis: P1, P2
# ----------------------------------------------------------------------------------------------


@dataclass
class _P1Tally:
    failures: list[str]
    margin: float = math.inf


def analyse_sweep(cfg: BoundConfig, data: SweepData) -> tuple[list[RouterRow], Criterion, Criterion]:
    """One row per router (static ones first, then CR_K), and the criteria P1 and P2."""
    x = np.asarray(data.ns, dtype=np.float64)
    held = [_is_held(cfg, data, r) for r in data.routers]
    level = 1 - (1 - cfg.level) / max(1, sum(held))  # Bonferroni over the routers held
    tally = _P1Tally([])
    rows = [_static_row(cfg, data, r, is_held, level, tally)
            for r, is_held in zip(data.routers, held)]  # fmt: skip
    rows += [_cr_row(cfg, data, K) for K in cfg.Ks]
    ns = data.ns
    p1 = Criterion(
        "P1",
        not tally.failures,
        f"{sum(held)} static routers with acc_e >= 1 − ε = {1 - cfg.eps:g} at n = {ns[-1]}: slope of A_rec vs n "
        f"against the slope of (1 − ε̂_n)·m_r(n) (paired seed bootstrap, level {level:.4f} after Bonferroni), "
        f"and per n mean A_rec >= (1 − ε̂_n)·m_r − (m_r/m_e)·min(w, m_e) − 3 SE",
        margin=tally.margin if math.isfinite(tally.margin) else None,
        failures=tally.failures,
    )
    f_eff = ols_line(x, data.m_r.astype(np.float64))[0]  # slope of round(f n) against n
    return rows, p1, _p2(cfg, data, next(r for r in rows if r.name == "ORACLE-POS"), f_eff)


def _acc_e_per_n(data: SweepData, name: str) -> np.ndarray:
    return data.seq[name]["correct_epi"].mean(axis=(1, 2)) / data.m_e


def _is_held(cfg: BoundConfig, data: SweepData, r: Router) -> bool:
    """P1 holds a static router whose episodic accuracy at the largest n is at least 1 − ε."""
    return bool(r.static and _acc_e_per_n(data, r.name)[-1] >= 1 - cfg.eps)


def _at_largest_n(data: SweepData, name: str, d_row: dict) -> dict:
    """The row's summary quantities at the largest n."""
    d, m_r, m_e = data.seq[name], data.m_r, data.m_e
    return dict(
        eps_hat=float(1 - d["A_epi"][-1].mean() / m_e[-1]),
        acc_e=float(d["correct_epi"][-1].mean() / m_e[-1]),
        acc_r=float(d["correct_rec"][-1].mean() / m_r[-1]),
        rho_q=float(d["A_q"][-1].mean() / data.n_q[-1]),
        rho_all=float(d["A"][-1].mean() / data.ns[-1]),
        pi_a=float(d["Pi_A"][-1].mean()),
        phi=float(d["phi"][-1].mean()),
        **d_row,
    )


def _static_row(cfg: BoundConfig, data: SweepData, r: Router, is_held: bool, level: float,
                tally: _P1Tally) -> RouterRow:  # fmt: skip
    """A static router's slope, the bound it is held to and, when held, its P1 verdict."""
    x = np.asarray(data.ns, dtype=np.float64)
    d, m_r, m_e, ns = data.seq[r.name], data.m_r, data.m_e, data.ns
    y = d["A_rec"].mean(axis=2).T  # (S, n_x) seed means
    fit = seed_bootstrap_slope(x, y, n_resamples=cfg.n_boot, seed=cfg.seed, level=cfg.level)
    # paired: D = A_rec − (m_r/m_e)·A_epi, exactly 0 in expectation for a static router
    dmat = (d["A_rec"] * m_e[:, None, None] - d["A_epi"] * m_r[:, None, None]) / m_e[:, None, None]
    dfit = seed_bootstrap_slope(
        x, dmat.mean(axis=2).T, n_resamples=cfg.n_boot, seed=cfg.seed + 1, level=level
    )
    bound_slope = fit.slope - dfit.slope
    acc_e_n = _acc_e_per_n(data, r.name)
    se = y.std(axis=0, ddof=1) / math.sqrt(y.shape[0])
    per_n = np.array([
        float(bounds.lower_bound_l1(int(a), int(b), Fraction(min(max(e, 0.0), 1.0)), cfg.w))
        for a, b, e in zip(m_r, m_e, 1 - acc_e_n)
    ])  # fmt: skip
    margin_n = y.mean(axis=0) - (per_n - 3 * se)
    slope_ok = dfit.slope_ci[1] >= -1e-12
    per_n_ok = bool(np.all(margin_n >= -1e-9))
    row = RouterRow(
        name=r.name, static=r.static, slope=fit.slope, ci=fit.slope_ci,
        bound=bound_slope if r.static else None, held=is_held,
        passed=(slope_ok and per_n_ok) if is_held else True,
        **_at_largest_n(data, r.name, dict(
            delta_ci_high=float(dfit.slope_ci[1]), per_n_margin=float(margin_n.min()),
            note="" if is_held or not r.static
            else f"not held: acc_e = {acc_e_n[-1]:.3f} < 1 − ε = {1 - cfg.eps:g}",
        )),
    )  # fmt: skip
    if is_held:
        tally.margin = min(tally.margin, float(dfit.slope_ci[1]), float(margin_n.min()))
        if not slope_ok:
            tally.failures.append(
                f"{r.name}: slope {fit.slope:.5f} below its bound {bound_slope:.5f}; the paired CI of "
                f"slope − bound ends at {dfit.slope_ci[1]:.2e} < 0"
            )
        if not per_n_ok:
            j = int(np.argmin(margin_n))
            tally.failures.append(
                f"{r.name}: at n = {ns[j]}, mean A_rec = {y.mean(axis=0)[j]:.2f} < bound − 3 SE = "
                f"{per_n[j] - 3 * se[j]:.2f} (short by {-margin_n[j]:.2f})"
            )
    return row


def _cr_row(cfg: BoundConfig, data: SweepData, K: int) -> RouterRow:
    """CR_K's row of the sweep: its slope with a CI; its verdict comes from the stream (P3)."""
    x = np.asarray(data.ns, dtype=np.float64)
    y = data.seq[f"CR_{K}"]["A_rec"].mean(axis=2).T
    fit = seed_bootstrap_slope(x, y, n_resamples=cfg.n_boot, seed=cfg.seed, level=cfg.level)
    return RouterRow(
        name=f"CR_{K}", static=False, slope=fit.slope, ci=fit.slope_ci, bound=None, held=False,
        passed=True,
        **_at_largest_n(data, f"CR_{K}", dict(
            note=f"consolidating over each seed's {cfg.batch} sequences; held to Theorem 2 (P3)")),
    )  # fmt: skip


def _p2(cfg: BoundConfig, data: SweepData, o_row: RouterRow, f_eff: float) -> Criterion:
    """P2: ORACLE-POS is tight: exact accuracy, A = A_q = n_q, and its slope CI contains f_eff."""
    o, m_r, m_e, n_q = data.seq["ORACLE-POS"], data.m_r, data.m_e, data.n_q
    acc_ok = bool(
        np.all(o["correct_rec"] == m_r[:, None, None])
        and np.all(o["correct_epi"] == m_e[:, None, None])
    )
    aq_ok = bool(np.all(o["A_q"] == n_q[:, None, None]) and np.all(o["A"] == n_q[:, None, None]))
    tol = 1e-9
    ci_ok = o_row.ci[0] - tol <= f_eff <= o_row.ci[1] + tol
    fails = []
    if not acc_ok:
        fails.append("ORACLE-POS accuracy below 1")
    if not aq_ok:
        fails.append("ORACLE-POS A_q differs from n_q")
    if not ci_ok:
        fails.append(f"CI [{o_row.ci[0]:.5f}, {o_row.ci[1]:.5f}] misses f_eff = {f_eff:.5f}")
    return Criterion(
        "P2",
        acc_ok and aq_ok and ci_ok,
        f"ORACLE-POS: acc = 1 and A = A_q = n_q in every sequence; slope CI [{o_row.ci[0]:.5f}, {o_row.ci[1]:.5f}] "
        f"contains f_eff = {f_eff:.5f} (the slope of m_r = round(f·n); f = {cfg.freq:g})",
        margin=min(f_eff - o_row.ci[0], o_row.ci[1] - f_eff),
        failures=fails,
    )

"""What ``cram bound`` measured: :class:`BoundResult` and its rows, with the three views of the
result contract (:meth:`BoundResult.to_json`, :meth:`BoundResult.report`,
:meth:`BoundResult.plot`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from cramkit.jsonable import to_jsonable
from cramkit.result import Result
from cramkit.sim.boundcheck.config import BoundConfig


@dataclass
class RouterRow:
    """One router of the sweep: its slope of A_rec against n and what it is held to."""

    name: str
    static: bool
    slope: float
    ci: tuple[float, float]
    bound: float | None
    held: bool
    passed: bool
    eps_hat: float | None = None  # episodic skip rate at the largest n
    acc_e: float | None = None  # at the largest n
    acc_r: float | None = None
    rho_q: float | None = None
    rho_all: float | None = None
    pi_a: float | None = None  # mean query-key pairs Π_A per sequence
    phi: float | None = None
    delta_ci_high: float | None = None  # paired test: upper end of the CI of slope − bound
    per_n_margin: float | None = None  # min over n of Ā_rec − (per-n bound − 3 SE)
    note: str = ""

    def verdict(self) -> str:
        if self.static and self.held:
            return "pass" if self.passed else "FAIL"
        if self.static:
            return "not held"
        return ("pass" if self.passed else "FAIL") + " (P3)"

    def to_json(self) -> dict[str, Any]:
        return {
            "slope": self.slope, "ci": [self.ci[0], self.ci[1]], "bound": self.bound,
            "static": self.static, "held": self.held, "pass": self.passed, "eps_hat": self.eps_hat,
            "acc_e": self.acc_e, "acc_r": self.acc_r, "rho_q": self.rho_q, "rho_all": self.rho_all,
            "Pi_A": self.pi_a, "phi": self.phi, "delta_ci_high": self.delta_ci_high,
            "per_n_margin": self.per_n_margin, "note": self.note,
        }  # fmt: skip


@dataclass
class Criterion:
    """One of P1–P5: whether it holds, what it compared, and what failed."""

    name: str
    passed: bool
    compared: str
    margin: float | None = None  # how far from failing (negative: by how much it failed)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"pass": self.passed, "compared": self.compared, "margin": self.margin,
                "failures": self.failures}  # fmt: skip


@dataclass
class Control:
    """One negative control F1–F5: the theory's prediction and the measured value."""

    name: str
    quantity: str
    predicted: float
    measured: float
    passed: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "measured": self.measured, "pass": self.passed,
                "quantity": self.quantity, "detail": self.detail}  # fmt: skip


@dataclass
class BoundResult(Result):
    """The sweep's rows, the criteria P1–P5, the controls F1–F5, the stream summary, the curves
    for the figure, and wall times. ``ok`` is True when every criterion holds."""

    config: BoundConfig
    routers: list[RouterRow]
    criteria: dict[str, Criterion]
    controls: dict[str, Control]
    stream: dict[str, Any]
    curves: dict[str, Any]
    seconds: float
    jit_seconds: float
    decisions: int
    decision_seconds: float

    name = "cram bound"

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.criteria.values())

    @property
    def decisions_per_second(self) -> float:
        return self.decisions / self.decision_seconds if self.decision_seconds > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready dict with stable keys (non-finite numbers become null)."""
        cfg = asdict(self.config)
        cfg["routers"] = list(self.config.routers)
        cfg["Ks"] = list(self.config.Ks)
        return to_jsonable({
            "freq": self.config.freq,
            "config": cfg,
            "routers": {r.name: r.to_json() for r in self.routers},
            "criteria": {k: c.passed for k, c in self.criteria.items()},
            "criteria_detail": {k: c.to_json() for k, c in self.criteria.items()},
            "controls": {k: c.to_json() for k, c in self.controls.items()},
            "stream": self.stream,
            "seconds": self.seconds,
            "jit_seconds": self.jit_seconds,
            "decisions_per_second": self.decisions_per_second,
        })  # fmt: skip

    def report(self) -> str:
        """The text ``cram bound`` prints: the router table, the criteria, the stream
        separation, the controls, timings and the verdict."""
        lines = [*self._header(), "", *self._router_table(), "", *self._criteria_lines(), "",
                 *self._stream_lines(), "", *self._control_lines(), "", self._timing_line()]  # fmt: skip
        failed = [k for k, crit in self.criteria.items() if not crit.passed]
        lines.append(
            "Result: every criterion holds." if not failed
            else f"Result: FAILED {', '.join(failed)} (see above)."
        )  # fmt: skip
        return "\n".join(lines)

    def _header(self) -> list[str]:
        c = self.config
        return [
            f"cram bound: f = {c.freq:g}, f_e = {c.f_e:g}, P = {c.P}, alpha = {c.alpha:g}, U = {c.U}, v = {c.v}, "
            f"w = {c.w}, n = {c.n_min}..{c.n_max} (doubling), {c.seeds} seeds x {c.batch} sequences, eps = {c.eps:g}"
        ]

    def _router_table(self) -> list[str]:
        c = self.config
        head = (f"{'router':<15} {'static':<6} {'slope':>8} {'95% CI':>21} {'bound':>8} {'eps_hat':>7} "
                f"{'acc_e':>6} {'rho_q':>6} {'rho_all':>7} {'phi':>6}  result")  # fmt: skip
        out = [
            "Per router: slope of A_rec against n (OLS on seed means, 95% seed-bootstrap CI, B = "
            f"{c.n_boot}); static routers are held to the slope of (1 - eps_hat_n)·m_r(n)",
            head,
            "-" * len(head),
        ]
        for r in self.routers:
            out.append(
                f"{r.name:<15} {'yes' if r.static else 'no':<6} {r.slope:8.5f} [{r.ci[0]:8.5f}, {r.ci[1]:8.5f}] "
                f"{_fmt(r.bound):>8} {_fmt(r.eps_hat, '.3f'):>7} {_fmt(r.acc_e, '.3f'):>6} {_fmt(r.rho_q, '.3f'):>6} "
                f"{_fmt(r.rho_all, '.3f'):>7} {_fmt(r.phi, '.3f'):>6}  {r.verdict()}"
            )
        out.append(
            f"(eps_hat, acc_e, rho_q = A_q/n_q, rho_all = A/n and phi at n = {c.n_max}; phi for one attention "
            f"layer of width d = {c.d_model}; Pi_A in --json)"
        )
        return out

    def _criteria_lines(self) -> list[str]:
        out = ["Criteria"]
        for k, crit in self.criteria.items():
            margin = "" if crit.margin is None else f" [margin {crit.margin:.3g}]"
            out.append(f"  {k} {'pass' if crit.passed else 'FAIL'}: {crit.compared}{margin}")
            out.extend(f"     - {f}" for f in crit.failures)
        return out

    def _stream_lines(self) -> list[str]:
        c, st = self.config, self.stream
        out = [
            f"Stream separation (n = {st['n']}, P = {st['P']}, T = {st['T']}, {c.seeds} streams; m_r = {st['m_r']}, "
            f"m_e = {st['m_e']} per sequence; mean R = {st['R_mean']:.1f}):",
            f"  ORACLE-POS: cumulative recurring attention at T = {st['T']}: {st['oracle_A_rec_cum_T']:.0f}; any static "
            f"router with acc_e = 1 pays at least {st['static_lower_bound_T']:.0f} (Theorem 1, L1 form, w = {c.w})",
        ]
        for name, d in st["cr"].items():
            ratio = st["oracle_A_rec_cum_T"] / d["A_rec_cum_T"] if d["A_rec_cum_T"] else float("inf")
            out.append(
                f"  {name}: {d['A_rec_cum_T']:.1f} (K·D_T = {d['K_times_D_T']:.1f}, K·P = {d['K_times_P']}; ratio {ratio:.0f}), "
                f"last-decade slope {d['last_decade_slope']:.4f} CI [{d['last_decade_ci'][0]:.4f}, {d['last_decade_ci'][1]:.4f}], "
                f"acc_r {d['acc_r']:.4f}, acc_e {d['acc_e']:.5f} (bound {d['acc_e_bound']:.5f}), T_0 = {d['T0']}, "
                f"ratio slope {_fmt(d['ratio_slope'], '.4f')}"
            )
            slopes = ", ".join(  # float noise of a flat curve (~1e-31) prints as 0
                f"{k}: {v if abs(v) > 1e-12 else 0.0:.3f}" for k, v in d["decade_slopes"].items()
            )
            out.append(f"      log-log slope of A_rec^cum vs N_rec per decade of T: {slopes}")
        return out

    def _control_lines(self) -> list[str]:
        out = ["Negative controls (predicted vs measured)"]
        for k, ctl in self.controls.items():
            out.append(
                f"  {k} {'pass' if ctl.passed else 'FAIL'}: {ctl.quantity}: predicted {ctl.predicted:.6g}, measured {ctl.measured:.6g}"
            )
            if ctl.detail:
                out.append(f"     {ctl.detail}")
        return out

    def _timing_line(self) -> str:
        return (
            f"Wall time {self.seconds:.1f} s (numba warm-up {self.jit_seconds:.1f} s); simulator: "
            f"{self.decisions_per_second:.3g} router decisions/s ({self.decisions:.3g} decisions scored)"
        )

    def plot(self, path: str | os.PathLike) -> None:
        """A_rec against n per router with its bound, and cumulative recurring attention against
        T on the stream (log-log), written atomically to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cramkit.io import save_figure

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
        self._plot_sweep(ax1, plt.get_cmap("tab20"))
        self._plot_stream(ax2)
        fig.tight_layout()
        save_figure(fig, path)

    def _plot_sweep(self, ax, cmap) -> None:
        ns = self.curves["n"]
        for i, (name, ys) in enumerate(self.curves["A_rec_mean"].items()):
            color = cmap(i % 20)
            pos = [(x, y) for x, y in zip(ns, ys) if y > 0]  # log axis: A_rec = 0 has no point
            if pos:
                ax.plot(*zip(*pos), "o-", color=color, label=name, ms=3)
            bnd = [(x, y) for x, y in zip(ns, self.curves["bound"].get(name, [])) if y > 0]
            if bnd:
                ax.plot(*zip(*bnd), "--", color=color, lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel("mean recurring attention A_rec per sequence")
        ax.set_title(f"A_rec vs n (dashed: (1 - eps_hat_n)·m_r, f = {self.config.freq:g})")
        ax.legend(fontsize=6, ncol=2)

    def _plot_stream(self, ax) -> None:
        sc = self.curves["stream"]
        T = sc["T"]
        for name, ys in sc.items():
            if name == "T":
                continue
            line = ax.plot(T, ys, "-", label=name)[0]
            if name.startswith("CR_"):
                ax.axhline(int(name[3:]) * self.stream["P"], color=line.get_color(), ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequences in the stream T")
        ax.set_ylabel("cumulative recurring attention")
        ax.set_title(f"stream: n = {self.stream['n']}, P = {self.stream['P']} (dotted: K·P)")
        ax.legend(fontsize=7)


def _fmt(x, spec=".5f"):
    return "—" if x is None else format(x, spec)

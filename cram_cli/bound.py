"""``cram bound``: check the static lower bound and the CR_K upper bound with the exact simulator.

Parses the options, calls :func:`cramkit.sim.bound.run_bound` once, and prints (or plots) its result.
"""

from __future__ import annotations

import json
import sys

import click

from cramkit.cli.main import InputError
from cramkit.errors import CramError

_ROUTERS_HELP = "ALL, STRIDE_<s>, RAND_<p>, ORACLE-POS, LEARNED-STATIC, SKIP-ALL+M"


def _csv(kind, name):
    def convert(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise InputError(f"{name} needs at least one value")
        if kind is str:
            return tuple(items)
        try:
            return tuple(kind(v) for v in items)
        except ValueError:
            raise InputError(
                f"{name} must be a comma-separated list of integers, got {value!r}"
            ) from None

    return convert


def _number(kind):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise InputError(
                f"--{param.name.replace('_', '-')} must be {what}, got {value!r}"
            ) from None

    return convert


@click.command(
    "bound",
    short_help="Check the static lower bound and CR_K's upper bound with the exact simulator.",
)
@click.option(
    "--freq",
    "freq",
    default="0.1",
    callback=_number(float),
    metavar="FLOAT",
    show_default=True,
    help="Recurring-query frequency f = m_r/n; must lie in (0, 1).",
)
@click.option(
    "--fe",
    "f_e",
    default="0.02",
    callback=_number(float),
    metavar="FLOAT",
    show_default=True,
    help="Episodic-query frequency f_e = m_e/n; must lie in (0, 1).",
)
@click.option(
    "--P",
    "P",
    default="1024",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Pool size of the sweep's worlds; it must be at least round(f·n) at the largest n.",
)
@click.option(
    "--alpha",
    default="1.0",
    callback=_number(float),
    metavar="FLOAT",
    show_default=True,
    help="Zipf exponent of pattern recurrence (0 is uniform).",
)
@click.option(
    "--n-min",
    default="256",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Smallest sequence length; n doubles from here.",
)
@click.option(
    "--n-max",
    default="8192",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Largest sequence length.",
)
@click.option(
    "--seeds",
    default="20",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Seeds per configuration: each seed draws its own world and sequences.",
)
@click.option(
    "--batch",
    default="8",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Sequences per seed and n.",
)
@click.option(
    "--routers",
    default=None,
    callback=_csv(str, "--routers"),
    metavar="LIST",
    help=f"Comma-separated static routers to sweep ({_ROUTERS_HELP}); the default is all of them.",
)
@click.option(
    "--K",
    "Ks",
    default="1,2,3,5",
    callback=_csv(int, "--K"),
    metavar="LIST",
    show_default=True,
    help="Comma-separated K values of the consolidating router CR_K.",
)
@click.option(
    "--w",
    default="4",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Cache slots of the simulated state (the last w context bindings).",
)
@click.option(
    "--eps",
    default="0.95",
    callback=_number(float),
    metavar="FLOAT",
    show_default=True,
    help="P1 holds the static routers whose episodic accuracy is at least 1 - eps at the largest n.",
)
@click.option(
    "--T",
    "T",
    default="10000",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Length of each stream of sequences on which CR_K and ORACLE-POS are compared.",
)
@click.option(
    "--stream-P",
    "stream_P",
    default="64",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Pool size of the stream's worlds (the stream uses n = n-min).",
)
@click.option(
    "--seed",
    default="0",
    callback=_number(int),
    metavar="INT",
    show_default=True,
    help="Base seed: worlds and sequences are derived from it.",
)
@click.option(
    "--symbolic",
    is_flag=True,
    help="Print the theorems with their assumptions instead of running the sweep.",
)
@click.option(
    "--latex", is_flag=True, help="With --symbolic, print LaTeX instead of sympy's pretty form."
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    metavar="PATH",
    callback=lambda ctx, param, value: _plot_path(value),
    help="Write a figure: A_rec against n per router with its bound, and cumulative recurring attention against T (log-log).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of the tables."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bound(freq, f_e, P, alpha, n_min, n_max, seeds, batch, routers, Ks, w, eps, T, stream_P, seed,
          symbolic, latex, plot_path, as_json, quiet):  # fmt: skip
    """Check Theorem 1 (static lower bound) and Theorem 2 (CR_K upper bound) with the exact
    L1 simulator.

    The default run sweeps n = 256 … 8192 with 20 seeds, all static routers and CR_K for
    K in {1, 2, 3, 5}, then prints per router the slope of recurring attention A_rec against n
    with its 95% bootstrap CI, the bound (1 - eps_hat)·f it is held to and pass/fail; the criteria
    P1-P5 with what each compared; the stream separation; and the negative controls F1-F5,
    predicted against measured. Exit status: 0 when every criterion holds, 1 when one fails,
    2 on bad input.
    """
    if symbolic:
        _print_symbolic(latex, as_json, dict(n=n_max, f=freq, f_e=f_e, w=w, eps=eps))
        return
    from cramkit.sim.bound import BoundConfig, run_bound
    from cramkit.sim.routers import DEFAULT_STATIC

    try:
        cfg = BoundConfig(
            freq=freq, f_e=f_e, P=P, alpha=alpha, n_min=n_min, n_max=n_max, seeds=seeds, batch=batch,
            routers=routers or DEFAULT_STATIC, Ks=Ks, w=w, eps=eps, T=T, stream_P=stream_P, seed=seed,
        )  # fmt: skip
    except CramError as exc:
        raise InputError(str(exc)) from None
    show = not quiet and not as_json and sys.stderr.isatty()
    result = _with_progress(run_bound, cfg) if show else run_bound(cfg)
    if plot_path:
        _plot(result, plot_path)
    if as_json:
        click.echo(json.dumps(result.to_json(), allow_nan=False, default=_json_default))
    else:
        _print_text(result, plot_path)
    if not result.ok:
        sys.exit(1)


def _plot_path(value):
    import os

    if value is not None and os.path.isdir(value):
        raise InputError(f"--plot needs a file path, got the directory {value!r}")
    if value is not None and not str(value).lower().endswith((".png", ".pdf", ".svg")):
        raise InputError(f"--plot must end in .png, .pdf or .svg, got {value!r}")
    return value


def _json_default(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def _with_progress(fn, cfg):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("warm-up", total=1.0)

        def report(msg, frac):
            bar.update(task, description=msg, completed=frac)

        return fn(cfg, report)


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------


def _fmt(x, spec=".5f"):
    return "—" if x is None else format(x, spec)


def _print_text(res, plot_path):
    c = res.config
    st = res.stream
    out = click.echo
    out(
        f"cram bound: f = {c.freq:g}, f_e = {c.f_e:g}, P = {c.P}, alpha = {c.alpha:g}, U = {c.U}, v = {c.v}, "
        f"w = {c.w}, n = {c.n_min}..{c.n_max} (doubling), {c.seeds} seeds x {c.batch} sequences, eps = {c.eps:g}"
    )
    out("")
    out("Per router: slope of A_rec against n (OLS on seed means, 95% seed-bootstrap CI, B = "
        f"{c.n_boot}); static routers are held to the slope of (1 - eps_hat_n)·m_r(n)")  # fmt: skip
    head = f"{'router':<15} {'static':<6} {'slope':>8} {'95% CI':>21} {'bound':>8} {'eps_hat':>7} {'acc_e':>6} {'rho_q':>6} {'rho_all':>7} {'phi':>6}  result"
    out(head)
    out("-" * len(head))
    for r in res.routers:
        if r.static and r.held:
            verdict = "pass" if r.passed else "FAIL"
        elif r.static:
            verdict = "not held"
        else:
            verdict = ("pass" if r.passed else "FAIL") + " (P3)"
        out(
            f"{r.name:<15} {'yes' if r.static else 'no':<6} {r.slope:8.5f} [{r.ci[0]:8.5f}, {r.ci[1]:8.5f}] "
            f"{_fmt(r.bound):>8} {_fmt(r.eps_hat, '.3f'):>7} {_fmt(r.acc_e, '.3f'):>6} {_fmt(r.rho_q, '.3f'):>6} "
            f"{_fmt(r.rho_all, '.3f'):>7} {_fmt(r.phi, '.3f'):>6}  {verdict}"
        )
    out(
        f"(eps_hat, acc_e, rho_q = A_q/n_q, rho_all = A/n and phi at n = {c.n_max}; phi for one attention "
        f"layer of width d = {c.d_model}; Pi_A in --json)"
    )
    out("")
    out("Criteria")
    for k, crit in res.criteria.items():
        margin = "" if crit.margin is None else f" [margin {crit.margin:.3g}]"
        out(f"  {k} {'pass' if crit.passed else 'FAIL'}: {crit.compared}{margin}")
        for f in crit.failures:
            out(f"     - {f}")
    out("")
    out(
        f"Stream separation (n = {st['n']}, P = {st['P']}, T = {st['T']}, {c.seeds} streams; m_r = {st['m_r']}, "
        f"m_e = {st['m_e']} per sequence; mean R = {st['R_mean']:.1f}):"
    )
    out(
        f"  ORACLE-POS: cumulative recurring attention at T = {st['T']}: {st['oracle_A_rec_cum_T']:.0f}; any static "
        f"router with acc_e = 1 pays at least {st['static_lower_bound_T']:.0f} (Theorem 1, L1 form, w = {c.w})"
    )
    for name, d in st["cr"].items():
        ratio = st["oracle_A_rec_cum_T"] / d["A_rec_cum_T"] if d["A_rec_cum_T"] else float("inf")
        out(
            f"  {name}: {d['A_rec_cum_T']:.1f} (K·D_T = {d['K_times_D_T']:.1f}, K·P = {d['K_times_P']}; ratio {ratio:.0f}), "
            f"last-decade slope {d['last_decade_slope']:.4f} CI [{d['last_decade_ci'][0]:.4f}, {d['last_decade_ci'][1]:.4f}], "
            f"acc_r {d['acc_r']:.4f}, acc_e {d['acc_e']:.5f} (bound {d['acc_e_bound']:.5f}), T_0 = {d['T0']}, "
            f"ratio slope {_fmt(d['ratio_slope'], '.4f')}"
        )
        slopes = ", ".join(  # float noise of a flat curve (~1e-31) prints as 0
            f"{k}: {v if abs(v) > 1e-12 else 0.0:.3f}" for k, v in d["decade_slopes"].items()
        )
        out(f"      log-log slope of A_rec^cum vs N_rec per decade of T: {slopes}")
    out("")
    out("Negative controls (predicted vs measured)")
    for k, ctl in res.controls.items():
        out(
            f"  {k} {'pass' if ctl.passed else 'FAIL'}: {ctl.quantity}: predicted {ctl.predicted:.6g}, measured {ctl.measured:.6g}"
        )
        if ctl.detail:
            out(f"     {ctl.detail}")
    out("")
    out(
        f"Wall time {res.seconds:.1f} s (numba warm-up {res.jit_seconds:.1f} s); simulator: "
        f"{res.decisions_per_second:.3g} router decisions/s ({res.decisions:.3g} decisions scored)"
    )
    if plot_path:
        out(f"Figure written to {plot_path}")
    failed = [k for k, crit in res.criteria.items() if not crit.passed]
    out(
        "Result: every criterion holds."
        if not failed
        else f"Result: FAILED {', '.join(failed)} (see above)."
    )


def _print_symbolic(latex: bool, as_json: bool, at: dict) -> None:
    from fractions import Fraction

    from cramkit.theory.bounds import evaluate_at, theorems

    try:
        values = evaluate_at(
            at["n"],
            Fraction(str(at["f"])),
            Fraction(str(at["f_e"])),
            w_=at["w"],
            U=2**14,
            v_=2**10,
            eps_=0,
        )
    except CramError as exc:
        raise InputError(str(exc)) from None

    items = list(theorems())
    prop3 = _proposition3()
    if prop3 is not None:
        items.append(prop3)
    fmt = "latex" if latex else "pretty"

    def show(v):  # exact fractions unless the denominator is unreadably long (H_{n_q} in kappa1)
        if isinstance(v, Fraction):
            return str(v) if v.denominator <= 10**6 else float(v)
        return v

    numeric = {k: show(v) for k, v in values.items()}
    if as_json:
        theorems_out = [{"name": t.name, "text": t.render(fmt)} for t in items]
        click.echo(json.dumps({"theorems": theorems_out, "evaluated": numeric}))
        return
    for t in items:
        click.echo(t.render(fmt))
        click.echo("")
    click.echo(
        f"Evaluated exactly (long fractions shown as floats) at n = {at['n']}, f = {at['f']:g}, f_e = {at['f_e']:g}, w = {at['w']}, "
        "U = 2^14, v = 2^10, eps = 0, d = 64:"
    )
    for k, v in numeric.items():
        approx = f" ≈ {float(values[k]):.6g}" if isinstance(numeric[k], str) else ""
        click.echo(f"  {k} = {v}{approx}")


def _proposition3():
    """Proposition 3 from cramkit.theory.count_model (owned by the fit-gamma task), when it is present."""
    try:
        from cramkit.theory import count_model
    except ImportError:
        return None
    expr_fn = getattr(count_model, "asymptotic_expr", None)
    if not callable(expr_fn):
        return None
    import sympy as sp

    from cramkit.theory.bounds import Theorem

    N, alpha = sp.symbols("N alpha", positive=True)
    return Theorem(
        "Proposition 3 (count model of CR_K)",
        "[P]",
        (
            "CR_K with Zipf(alpha) recurrence; pattern j seen ~ Poi(N p_j) times after N recurring queries",
            "alpha > 1 and P -> infinity (for finite P the curve drops to 0 near N = K zeta(alpha) P^alpha)",
        ),
        (
            sp.Eq(sp.Function("E_rec")(N), expr_fn()),
            sp.Eq(sp.Symbol("gamma"), 1 - 1 / alpha),
        ),
        note="from cramkit.theory.count_model.asymptotic_expr",
    )


def _plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cramkit.io import save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    ns = res.curves["n"]
    cmap = plt.get_cmap("tab20")
    for i, (name, ys) in enumerate(res.curves["A_rec_mean"].items()):
        color = cmap(i % 20)
        pos = [(x, y) for x, y in zip(ns, ys) if y > 0]  # log axis: A_rec = 0 has no point
        if pos:
            ax1.plot(*zip(*pos), "o-", color=color, label=name, ms=3)
        bnd = [(x, y) for x, y in zip(ns, res.curves["bound"].get(name, [])) if y > 0]
        if bnd:
            ax1.plot(*zip(*bnd), "--", color=color, lw=0.8)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("sequence length n")
    ax1.set_ylabel("mean recurring attention A_rec per sequence")
    ax1.set_title(f"A_rec vs n (dashed: (1 - eps_hat_n)·m_r, f = {res.config.freq:g})")
    ax1.legend(fontsize=6, ncol=2)
    sc = res.curves["stream"]
    T = sc["T"]
    for name, ys in sc.items():
        if name == "T":
            continue
        line = ax2.plot(T, ys, "-", label=name)[0]
        if name.startswith("CR_"):
            ax2.axhline(int(name[3:]) * res.stream["P"], color=line.get_color(), ls=":", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("sequences in the stream T")
    ax2.set_ylabel("cumulative recurring attention")
    ax2.set_title(f"stream: n = {res.stream['n']}, P = {res.stream['P']} (dotted: K·P)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)

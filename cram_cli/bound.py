"""``cram bound``: check the static lower bound and the CR_K upper bound with the exact simulator.

Options, then one library call: :func:`cramkit.sim.boundcheck.run` (or, with ``--symbolic``,
:func:`cramkit.sim.boundcheck.symbolic.run`); the Result prints, plots and sets the exit status.
"""

from __future__ import annotations

import click

from cramkit.cli.options import CommaList, emit, output_options
from cramkit.progress import progress_bar

_ROUTERS_HELP = "ALL, STRIDE_<s>, RAND_<p>, ORACLE-POS, LEARNED-STATIC, SKIP-ALL+M"


def _number(flag, kind, default, help, dest=None):
    args = (flag, dest) if dest else (flag,)
    return click.option(*args, type=kind, default=default, metavar="INT" if kind is int else "FLOAT",
                        show_default=True, help=help)  # fmt: skip


@click.command(
    "bound",
    short_help="Check the static lower bound and CR_K's upper bound with the exact simulator.",
)
@_number("--freq", float, 0.1, "Recurring-query frequency f = m_r/n; must lie in (0, 1).", "freq")
@_number("--fe", float, 0.02, "Episodic-query frequency f_e = m_e/n; must lie in (0, 1).", "f_e")
@_number("--P", int, 1024, "Pool size of the sweep's worlds; it must be at least round(f·n) at the largest n.", "P")
@_number("--alpha", float, 1.0, "Zipf exponent of pattern recurrence (0 is uniform).")
@_number("--n-min", int, 256, "Smallest sequence length; n doubles from here.")
@_number("--n-max", int, 8192, "Largest sequence length.")
@_number("--seeds", int, 20, "Seeds per configuration: each seed draws its own world and sequences.")
@_number("--batch", int, 8, "Sequences per seed and n.")
@click.option("--routers", type=CommaList(str, what="router names"), default=None, metavar="LIST",
              help=f"Comma-separated static routers to sweep ({_ROUTERS_HELP}); the default is all of them.")
@click.option("--K", "Ks", type=CommaList(int, lo=1, hi=10**6), default="1,2,3,5", metavar="LIST",
              show_default=True, help="Comma-separated K values of the consolidating router CR_K.")
@_number("--w", int, 4, "Cache slots of the simulated state (the last w context bindings).")
@_number("--eps", float, 0.95,
         "P1 holds the static routers whose episodic accuracy is at least 1 - eps at the largest n.")
@_number("--T", int, 10000, "Length of each stream of sequences on which CR_K and ORACLE-POS are compared.", "T")
@_number("--stream-P", int, 64, "Pool size of the stream's worlds (the stream uses n = n-min).", "stream_P")
@_number("--seed", int, 0, "Base seed: worlds and sequences are derived from it.")
@click.option("--symbolic", is_flag=True,
              help="Print the theorems with their assumptions instead of running the sweep.")
@click.option("--latex", is_flag=True, help="With --symbolic, print LaTeX instead of sympy's pretty form.")
@output_options(
    plot_help="Write a figure: A_rec against n per router with its bound, and cumulative recurring "
              "attention against T (log-log).",
    json_help="Print one JSON object instead of the tables.",
)  # fmt: skip
def bound(freq, f_e, P, alpha, n_min, n_max, seeds, batch, routers, Ks, w, eps, T, stream_P, seed,
          symbolic, latex, plot, as_json, quiet):  # fmt: skip
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
        from cramkit.sim.boundcheck import symbolic as sym

        emit(sym.run(sym.SymbolicConfig(n=n_max, f=freq, f_e=f_e, w=w, latex=latex)),
             as_json=as_json, plot=plot)  # fmt: skip
        return
    from cramkit.sim.boundcheck import BoundConfig, run
    from cramkit.sim.routers import DEFAULT_STATIC

    config = BoundConfig(
        freq=freq, f_e=f_e, P=P, alpha=alpha, n_min=n_min, n_max=n_max, seeds=seeds, batch=batch,
        routers=routers or DEFAULT_STATIC, Ks=Ks, w=w, eps=eps, T=T, stream_P=stream_P, seed=seed,
    )  # fmt: skip
    with progress_bar(enabled=not quiet) as progress:
        result = run(config, progress)
    emit(result, as_json=as_json, plot=plot)

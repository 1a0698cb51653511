"""``cram fit-gamma``: fit consolidation curves, estimate gamma, judge the transition.

Options, then one library call: :func:`cramkit.theory.fit.analysis.run` (or, with
``--list-human``, :func:`cramkit.theory.human.catalogue`); the Result prints and plots.
"""

from __future__ import annotations

import math

import click

from cramkit.cli.options import CommaList, emit, output_options
from cramkit.progress import progress_bar
from cramkit.runs import TIME_FIELDS
from cramkit.theory.curves import MODEL_NAMES


def _fixed(ctx, param, value) -> dict[str, float]:
    out = {}
    for item in value:
        name, sep, num = item.partition("=")
        try:
            out[name.strip()] = float(num)
        except ValueError:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}") from None
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        if not math.isfinite(out[name.strip()]):
            raise click.BadParameter(f"the fixed value must be a finite number, got {item!r}")
    return out


@click.command(
    "fit-gamma",
    short_help="Fit consolidation curves (M1-M8), estimate gamma, judge the transition.",
)
@click.argument("runs", nargs=-1, type=click.Path(dir_okay=True, path_type=str))
@click.option("--human", "human", metavar="NAME", default=None,
              help="Fit a bundled human forgetting data set instead of runs (see --list-human).")
@click.option("--list-human", is_flag=True,
              help="List the bundled human data sets with what each measures, and exit.")
@click.option("--count-model", is_flag=True,
              help="Fit Proposition 3's exact count-model curve (needs --alpha and --K).")
@click.option("--alpha", type=click.FloatRange(min=0), default=None,
              help="Zipf exponent of the count model (gamma is expected near 1 - 1/alpha).")
@click.option("--K", "K", type=click.IntRange(min=1, max=1000), default=None,
              help="Consolidation threshold K of the count model.")
@click.option("--P", "P", type=click.IntRange(min=1, max=10**7), default=10**6, show_default=True,
              help="Number of recurring patterns in the count model.")
@click.option("--n-range", nargs=2, type=float, default=None,
              help="Range of N (recurring queries) on which the count-model curve is fitted "
                   "[default: 1e3 1e7 for alpha > 1, K*P/100 to 10*K*P otherwise].")
@click.option("--time", "time_unit", type=click.Choice(list(TIME_FIELDS)),
              default="step", show_default=True,
              help="Time axis read from metrics.jsonl: optimizer steps, exposures per pattern, "
                   "or cumulative learning rate.")
@click.option("--models", type=CommaList(str, what="model names"), default=",".join(MODEL_NAMES),
              show_default=True, help="Comma-separated models to fit and compare.")
@click.option("--primary", type=click.Choice(MODEL_NAMES, case_sensitive=False), default=None,
              help="The model whose gamma is reported with bootstrap and profile CIs [default: M1; "
                   "with --human, M2 with Einf fixed at 0, the pure power law Q = mu t^-a that "
                   "Murre & Dros fit: seven points cannot pin down M1's four parameters].")
@click.option("--fix", "fixed", multiple=True, callback=_fixed, metavar="NAME=VALUE",
              help="Hold a parameter of the primary model fixed (repeatable), e.g. "
                   "--primary M2 --fix Einf=0 for the pure power law Q = a t^-gamma.")
@click.option("--t-min", type=float, default=None,
              help="Fit only the points with t >= T_MIN.")
@click.option("--resamples", type=click.IntRange(min=0, max=100000), default=2000, show_default=True,
              help="Bootstrap resamples for the CIs (0 skips the bootstrap).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--all-models", is_flag=True, help="Print the full report of every model, not only "
                                                 "the best and the primary one.")
@click.option("--no-human", is_flag=True, help="Leave out the fits of the bundled human data.")
@output_options(plot_help="Draw the data, the fits and the bootstrap band to this file (.png, .pdf, .svg).",
                json_help="Print one JSON object instead of the report.")  # fmt: skip
def fit_gamma(runs, human, list_human, count_model, alpha, K, P, n_range, time_unit, models,
              primary, fixed, t_min, resamples, seed, all_models, no_human, as_json, plot, quiet):  # fmt: skip
    """Fit the consolidation curve E(t) of one or more runs with the eight models M1-M8.

    RUN is a `cram train` output directory, its metrics.jsonl, or a CSV with columns t,k,N
    (attended k of N probe queries) or t,E (values only). Several RUNs are seeds of one setting:
    they are pooled and gamma's CI comes from a bootstrap over runs; one RUN gets a parametric
    bootstrap and profile-likelihood CIs. Instead of runs, --human NAME fits a bundled human
    data set and --count-model fits Proposition 3's exact curve. The report gives each fit the
    lmfit way, the AIC/BIC comparison, gamma with its CI, the transition step t_c three ways
    with the sharpness verdict, and the tool's own power-law fits of the human data.
    """
    from cramkit.theory.fit.analysis import CountModelSpec, FitConfig, run

    if list_human:
        from cramkit.theory.human import catalogue

        emit(catalogue(), as_json=as_json, plot=plot)
        return
    if count_model and (alpha is None or K is None):
        raise click.UsageError("--count-model needs --alpha and --K")
    if not count_model and (alpha is not None or K is not None):
        raise click.UsageError("--alpha and --K only apply with --count-model")
    cm = CountModelSpec(alpha, K, P, *(n_range or (None, None))) if count_model else None
    config = FitConfig(runs=runs, human=human, count_model=cm, time=time_unit, models=models,
                       primary=primary, fixed=fixed or None, t_min=t_min, resamples=resamples,
                       seed=seed, with_human=not no_human, all_models=all_models)  # fmt: skip
    with progress_bar(enabled=not quiet) as progress:
        result = run(config, progress)
    emit(result, as_json=as_json, plot=plot)

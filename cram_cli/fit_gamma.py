"""``cram fit-gamma``: fit consolidation curves, estimate gamma, judge the transition."""

from __future__ import annotations

import json
import math

import click

MODEL_CHOICES = [f"M{i}" for i in range(1, 9)]


def _models(ctx, param, value: str) -> list[str]:
    names = [v.strip().upper() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in MODEL_CHOICES]
    if bad or not names:
        raise click.BadParameter(f"unknown model(s) {', '.join(bad) or '(none)'}; "
                                 f"choose from {', '.join(MODEL_CHOICES)}")
    return names


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


def _positive(ctx, param, value):
    if value is not None and not value > 0:
        raise click.BadParameter("must be positive")
    return value


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
@click.option("--time", "time_unit", type=click.Choice(["step", "exposures", "cum_lr"]),
              default="step", show_default=True,
              help="Time axis read from metrics.jsonl: optimizer steps, exposures per pattern, "
                   "or cumulative learning rate.")
@click.option("--models", default=",".join(MODEL_CHOICES), show_default=True, callback=_models,
              help="Comma-separated models to fit and compare.")
@click.option("--primary", type=click.Choice(MODEL_CHOICES, case_sensitive=False), default=None,
              help="The model whose gamma is reported with bootstrap and profile CIs [default: M1; "
                   "with --human, M2 with Einf fixed at 0, the pure power law Q = mu t^-a that "
                   "Murre & Dros fit: seven points cannot pin down M1's four parameters].")
@click.option("--fix", "fixed", multiple=True, callback=_fixed, metavar="NAME=VALUE",
              help="Hold a parameter of the primary model fixed (repeatable), e.g. "
                   "--primary M2 --fix Einf=0 for the pure power law Q = a t^-gamma.")
@click.option("--t-min", type=float, default=None, callback=_positive,
              help="Fit only the points with t >= T_MIN.")
@click.option("--resamples", type=click.IntRange(min=0, max=100000), default=2000, show_default=True,
              help="Bootstrap resamples for the CIs (0 skips the bootstrap).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--all-models", is_flag=True, help="Print the full report of every model, not only "
                                                 "the best and the primary one.")
@click.option("--no-human", is_flag=True, help="Leave out the fits of the bundled human data.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw the data, the fits and the bootstrap band to this file (.png, .pdf, .svg).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fit_gamma(runs, human, list_human, count_model, alpha, K, P, n_range, time_unit, models,
              primary, fixed, t_min, resamples, seed, all_models, no_human, as_json, plot_path, quiet):
    """Fit the consolidation curve E(t) of one or more runs with the eight models M1-M8.

    RUN is a `cram train` output directory, its metrics.jsonl, or a CSV with columns t,k,N
    (attended k of N probe queries) or t,E (values only). Several RUNs are seeds of one setting:
    they are pooled and gamma's CI comes from a bootstrap over runs; one RUN gets a parametric
    bootstrap and profile-likelihood CIs. Instead of runs, --human NAME fits a bundled human
    data set and --count-model fits Proposition 3's exact curve. The report gives each fit the
    lmfit way, the AIC/BIC comparison, gamma with its CI, the transition step t_c three ways
    with the sharpness verdict, and the tool's own power-law fits of the human data.
    """
    from cramkit.theory.fit.analysis import fit_gamma as run_fit
    from cramkit.theory.fit.analysis import format_report

    if list_human:
        from cramkit.theory.human import human_info, human_names

        rows = [human_info(n) for n in human_names()]
        if as_json:
            click.echo(json.dumps({"human": rows}, indent=2))
            return
        for r in rows:
            click.echo(f"{r['name']}: {r['title']}")
            click.echo(f"    measures: {r['measure']}")
            click.echo(f"    source: {r['citation']} ({r['licence']})")
        click.echo("Every one is savings on relearning against the retention delay, a different "
                   "quantity from gamma: comparing them is an analogy, not evidence.")
        return
    cm = None
    if count_model:
        if alpha is None or K is None:
            raise click.UsageError("--count-model needs --alpha and --K")
        cm = {"alpha": alpha, "K": K, "P": P}
        if n_range is not None:
            if not 0 < n_range[0] < n_range[1] <= 1e15:
                raise click.BadParameter("needs 0 < N_MIN < N_MAX <= 1e15", param_hint="--n-range")
            cm.update(n_min=n_range[0], n_max=n_range[1])
    elif alpha is not None or K is not None:
        raise click.UsageError("--alpha and --K only apply with --count-model")
    n_inputs = sum([bool(runs), human is not None, cm is not None])
    if n_inputs != 1:
        raise click.UsageError("give exactly one input: RUN paths, --human NAME or --count-model")
    if primary is None:
        primary = "M2" if human is not None else "M1"
        if human is not None and not fixed:
            fixed = {"Einf": 0.0}
    res = run_fit(runs=list(runs) or None, human=human, count_model=cm, time=time_unit,
                  models=models, primary=primary.upper(), t_min=t_min, resamples=resamples,
                  seed=seed, with_human=not no_human, quiet=quiet or as_json,
                  fixed=fixed or None)
    if plot_path:
        from cramkit.theory.fit.plot import plot_fit_gamma

        plot_fit_gamma(res, plot_path)
    if as_json:
        out = {k: v for k, v in res.items() if k != "plot"}
        click.echo(json.dumps(out, indent=2, allow_nan=False))
    else:
        click.echo(format_report(res, all_models=all_models))
        if plot_path:
            click.echo(f"\nplot written to {plot_path}")

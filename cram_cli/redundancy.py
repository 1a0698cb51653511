"""``cram redundancy``: how much attention output the model's own state already predicts."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import click


@contextmanager
def progress_reporter(enabled: bool = True):
    """Yield ``tick(stage, done, total)`` drawing a rich progress bar on stderr (a TTY only)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda stage, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:  # fmt: skip

        def tick(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield tick


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got '{value}'") from None
    if not out:
        raise click.BadParameter("give at least one number")
    return out


def _ints(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'") from None


def _names(ctx, param, value):
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _max_tokens(ctx, param, value):
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number of tokens or 'all', got '{value}'") from None
    if n < 14:
        raise click.BadParameter("must be at least 14 tokens")
    return n


@click.command(
    "redundancy",
    short_help="Measure how predictable attention outputs are from the state (GPT-2 or a cram run).",
)
@click.argument("path", required=False, type=click.Path(path_type=str))
@click.option(
    "--model",
    "model_opt",
    type=click.Path(path_type=str),
    help="A local Hugging Face GPT-2 directory (config.json + weights; never downloaded) or a cram "
    "checkpoint. Same as the PATH argument.",
)
@click.option(
    "--text",
    type=click.Path(path_type=str),
    default=None,
    help="Corpus: a UTF-8 file (documents separated by a line <|endoftext|> or by two blank lines) "
    "or a folder of .txt files, one document each. Default: the small bundled corpus.",
)
@click.option(
    "--tokenizer",
    default="auto",
    show_default=True,
    help="'auto' uses the tokenizer files in the model directory, 'bytes' uses UTF-8 bytes (for "
    "byte-level models), anything else is a local tokenizer directory.",
)
@click.option(
    "--max-tokens",
    default="3000",
    show_default=True,
    callback=_max_tokens,
    help="Token budget of FIT + VAL + TEST together (split 4:1:2), or 'all' for the whole corpus.",
)
@click.option(
    "--window",
    type=click.IntRange(2),
    default=None,
    help="Tokens per window (default: min(1024, context)).",
)
@click.option(
    "--min-pos",
    type=click.IntRange(0),
    default=32,
    show_default=True,
    help="Exclude positions t < this from fits, fractions and dNLL (control C4).",
)
@click.option(
    "--predictors",
    default=None,
    callback=_names,
    help="Comma-separated predictors to fit: p0 (constant), p1 (ridge), plocal (ridge on a window "
    "of states), p2 (MLP). Default: p0,p1, plus plocal when (local window + 1) x width <= 1536 "
    "and p2 when width <= 512 (their fits dominate the run time for GPT-2-sized models).",
)
@click.option(
    "--local-window",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="P-local reads the states t, t-1, ..., t-w.",
)
@click.option(
    "--taus",
    default="0.05,0.1,0.2,0.3",
    show_default=True,
    callback=_floats,
    help="Thresholds tau of the redundant fraction pi(tau) = P(e_t < tau).",
)
@click.option(
    "--sweep-taus",
    default="0.05,0.1,0.2,0.3",
    show_default=True,
    callback=_floats,
    help="Thresholds tried by the patching sweep (C5) that picks the headline.",
)
@click.option(
    "--patch-predictor",
    default=None,
    help="Predictor whose output is patched in (C5) and gated (C6). Default: p1 when it is "
    "measured, else the first non-constant predictor of --predictors.",
)
@click.option(
    "--budget",
    type=float,
    default=0.01,
    show_default=True,
    help="dNLL budget in nats/token for the headline.",
)
@click.option(
    "--layers",
    default=None,
    callback=_ints,
    help="Comma-separated layers to measure (default: all).",
)
@click.option(
    "--gate/--no-gate",
    default=True,
    show_default=True,
    help="Train and test the deployable gate (C6).",
)
@click.option(
    "--per-layer/--no-per-layer",
    default=False,
    show_default=True,
    help="Also patch each layer alone at the headline tau (one more TEST pass per layer; part of the full SPEC C5 measurement, off by default to keep the default run short).",
)
@click.option(
    "--context-swap/--no-context-swap",
    default=True,
    show_default=True,
    help="Run the context-swap control (C3).",
)
@click.option(
    "--mlp-tokens",
    type=click.IntRange(16),
    default=4000,
    show_default=True,
    help="FIT tokens per layer kept to train P2 (a quarter as many from VAL for early stopping).",
)
@click.option(
    "--mlp-epochs",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Most epochs of P2 training (early stopping on VAL).",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Windows per forward pass.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples over TEST documents (0 turns the CIs off).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the document split, subsampling and MLP.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of the text report."
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Write per-layer fractions and the error CDFs (or the training trajectory) to this image.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def redundancy(path, model_opt, text, tokenizer, max_tokens, window, min_pos, predictors, local_window, taus,
               sweep_taus, patch_predictor, budget, layers, gate, per_layer, context_swap, mlp_tokens,
               mlp_epochs, batch, bootstrap, seed, as_json, plot, quiet):  # fmt: skip
    """Measure how much of each attention layer's output is predictable from the state it reads.

    PATH (or --model) is a local GPT-2 directory, a cram checkpoint, or a cram run directory; for
    a run directory every checkpoint is measured and the trajectory over training is printed.
    The text is split by document into FIT, VAL and TEST. Predictors of the attention output
    from LN1(h_t) are fitted on FIT, tuned on VAL and scored on TEST with the controls C1-C7 of
    SPEC §7. The headline is the largest fraction of attention outputs that can be replaced by
    the prediction while the TEST NLL rises by at most --budget nats/token, with a bootstrap CI
    over documents.

    GPT-2 is never downloaded. To measure the real model, save it once on a machine with
    internet access (see docs/redundancy.md) and pass its directory.
    """
    from cramkit.gpu.redundancy import RedundancyConfig, measure_path
    from cramkit.gpu.redundancy.report import format_report, format_trajectory, plot_report, plot_trajectory

    if path and model_opt and path != model_opt:
        raise click.UsageError("give the model either as PATH or with --model, not both")
    target = path or model_opt
    if not target:
        raise click.UsageError(
            "name a model: cram redundancy PATH (a GPT-2 directory, cram checkpoint or run)"
        )
    cfg = RedundancyConfig(
        window=window, max_tokens=max_tokens, batch_windows=batch, min_pos=min_pos,
        predictors=predictors, local_window=local_window, taus=taus, sweep_taus=sweep_taus,
        patch_predictor=patch_predictor, budget=budget, per_layer_patch=per_layer, gate=gate,
        context_swap=context_swap, mlp_tokens=mlp_tokens, mlp_epochs=mlp_epochs,
        gate_tokens=mlp_tokens, layers=layers, bootstrap=bootstrap, seed=seed,
    )  # fmt: skip
    with progress_reporter(enabled=not quiet) as tick:
        result = measure_path(target, text=text, tokenizer=tokenizer, config=cfg, progress=tick)
    trajectory = "trajectory" in result
    if plot:
        (plot_trajectory if trajectory else plot_report)(result, plot)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))
    else:
        click.echo(format_trajectory(result) if trajectory else format_report(result))
        if plot:
            click.echo(f"plot written to {plot}", file=sys.stderr)

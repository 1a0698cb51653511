"""``cram redundancy``: how much attention output the model's own state already predicts."""

from __future__ import annotations

import click

from cramkit.cli.options import CommaList, emit, json_option, plot_option, quiet_option
from cramkit.progress import progress_bar


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
    type=CommaList(str),
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
    type=CommaList(float),
    help="Thresholds tau of the redundant fraction pi(tau) = P(e_t < tau).",
)
@click.option(
    "--sweep-taus",
    default="0.05,0.1,0.2,0.3",
    show_default=True,
    type=CommaList(float),
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
    type=CommaList(int),
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
    help="Also patch each layer alone at the headline tau (one more TEST pass per layer; part of the full C5 measurement, off by default to keep the default run short).",
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
@json_option()
@plot_option("Write per-layer fractions and the error CDFs (or the training trajectory) to this image "
             "(.png, .pdf or .svg; not a folder).")  # fmt: skip
@quiet_option()
def redundancy(path, model_opt, text, tokenizer, max_tokens, window, min_pos, predictors, local_window, taus,
               sweep_taus, patch_predictor, budget, layers, gate, per_layer, context_swap, mlp_tokens,
               mlp_epochs, batch, bootstrap, seed, as_json, plot, quiet):  # fmt: skip
    """Measure how much of each attention layer's output is predictable from the state it reads.

    PATH (or --model) is a local GPT-2 directory, a cram checkpoint, or a cram run directory; for
    a run directory every checkpoint is measured and the trajectory over training is printed.
    The text is split by document into FIT, VAL and TEST. Predictors of the attention output
    from LN1(h_t) are fitted on FIT, tuned on VAL and scored on TEST with the controls C1-C7 of
    docs/redundancy.md. The headline is the largest fraction of attention outputs that can be
    replaced by the prediction while the TEST NLL rises by at most --budget nats/token, with a
    bootstrap CI over documents.

    GPT-2 is never downloaded. To measure the real model, save it once on a machine with
    internet access (see docs/redundancy.md) and pass its directory.
    """
    from cramkit.gpu.redundancy import RedundancyConfig, RedundancyRun, run

    if path and model_opt and path != model_opt:
        raise click.UsageError("give the model either as PATH or with --model, not both")
    if not (path or model_opt):
        raise click.UsageError("name a model: cram redundancy PATH (a GPT-2 directory, cram checkpoint or run)")
    options = RedundancyConfig(
        window=window, max_tokens=max_tokens, batch_windows=batch, min_pos=min_pos,
        predictors=predictors, local_window=local_window, taus=taus, sweep_taus=sweep_taus,
        patch_predictor=patch_predictor, budget=budget, per_layer_patch=per_layer, gate=gate,
        context_swap=context_swap, mlp_tokens=mlp_tokens, mlp_epochs=mlp_epochs,
        gate_tokens=mlp_tokens, layers=layers, bootstrap=bootstrap, seed=seed,
    )  # fmt: skip
    with progress_bar(enabled=not quiet) as progress:
        result = run(RedundancyRun(path or model_opt, text, tokenizer, options), progress)
    emit(result, as_json=as_json, plot=plot)

"""``cram transfer``: a trained router on pools that share a fraction s of its training pool."""

from __future__ import annotations

import click

from cramkit.cli.options import CommaList, emit, json_option, plot_option, quiet_option
from cramkit.progress import progress_bar


@click.command(
    "transfer",
    short_help="Attention reduction of a trained router on TRANSFER(s) and CONFLICT(s) pools.",
)
@click.argument("ckpt", type=click.Path(path_type=str))
@click.option(
    "--overlap",
    default="0,0.25,0.5,0.75,1",
    show_default=True,
    type=CommaList(float, lo=0, hi=1, what="numbers in [0, 1]"),
    help="Comma-separated overlaps s in [0, 1]: the fraction of the training pool's patterns "
    "the evaluation pool shares.",
)
@click.option(
    "--sequences",
    type=click.IntRange(2),
    default=512,
    show_default=True,
    help="Evaluation sequences per split.",
)
@click.option(
    "--chunk",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Sequences per evaluation call; the bootstrap unit of R (all-position counts).",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the CIs (0 turns them off).",
)
@click.option(
    "--r0-tol",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="The guard passes when the CI of R(0) reaches within this distance of 0.",
)
@click.option(
    "--acc-tol",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="The guard also needs accuracy at s=0 within this much of the IID accuracy.",
)
@click.option(
    "--conflict/--no-conflict",
    default=True,
    show_default=True,
    help="Also evaluate CONFLICT(s), where the shared keys carry new values.",
)
@json_option()
@plot_option("Write R(s) with CIs and the accuracies against s to this image (.png, .pdf or .svg; not a folder).")
@quiet_option()
def transfer(ckpt, overlap, sequences, chunk, bootstrap, r0_tol, acc_tol, conflict, as_json, plot, quiet):  # fmt: skip
    """Evaluate a trained SRCD checkpoint, without retraining, on pools that share a fraction s of
    its training pool.

    For each s it reports the attention reduction R(s) = 1 - A_CR/A_ORACLE against ORACLE-POS
    (which attends every query slot) with a bootstrap CI, the effective overlap s_eff, the
    accuracy on shared and on new patterns, and the CONFLICT(s) control, where the shared keys
    are bound to new values. It flags a failure of the guard R(0) ~ 0: with nothing shared, a
    router that still skips attention is not transferring anything.
    """
    from cramkit.gpu.transfer import TransferConfig, run

    config = TransferConfig(checkpoint=ckpt, overlaps=overlap, sequences=sequences, chunk=chunk,
                            bootstrap=bootstrap, r0_tol=r0_tol, acc_tol=acc_tol, conflict=conflict)  # fmt: skip
    with progress_bar(enabled=not quiet) as progress:
        result = run(config, progress)
    emit(result, as_json=as_json, plot=plot)

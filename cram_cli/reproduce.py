"""``cram reproduce``: re-measure every claim of the CRAM paper and write the verdict table."""

from __future__ import annotations

import click

from cramkit.cli.options import CommaList, emit, json_option, quiet_option
from cramkit.progress import progress_bar


@click.command("reproduce", short_help="Re-measure every claim of the CRAM paper and write the verdict table.")
@click.option("--scale", metavar="quick|full", default="quick", show_default=True,
              help="quick: at most 30 minutes on a 2-core CPU; full: the paper preset, several seeds, a GPU when present.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="reproduce", show_default=True,
              help="Folder for the step cache (steps/), the training runs (runs/) and report.md, report.json, report.png.")
@click.option("--only", type=CommaList(str, what="claim ids"), default=None,
              help="Run only these claims (comma-separated: static-bound, accuracy-budget, attention-fall, gamma, "
                   "transfer, redundancy, compute); the others are taken from the cache when there.")
@click.option("--gpt2", type=click.Path(file_okay=False), default=None, envvar="CRAM_GPT2_DIR",
              help="A local Hugging Face GPT-2 folder for the redundancy claim (never downloaded; default: $CRAM_GPT2_DIR).")
@json_option()
@quiet_option()
def reproduce(scale, out, only, gpt2, as_json, quiet) -> None:
    """Run, for every claim of the paper, the library calls of the command that measures it, and
    write DIR/report.md, DIR/report.json and DIR/report.png: the paper's figure, cram's definition,
    the measured figure with its CI and seeds, a verdict computed from the numbers (holds / holds
    by construction of the task / fails / not measured) and the command that reproduces the row.

    Finished steps are cached in DIR/steps (keyed by their settings) and training runs resume
    from their last checkpoint, so a reproduction stopped at any point continues where it
    stopped when rerun with the same options.
    """
    from cramkit.gpu.reproduce import ReproduceConfig, run

    with progress_bar(enabled=not quiet) as progress:
        result = run(ReproduceConfig(scale=scale, out=out, only=tuple(only or ()), gpt2=gpt2), progress)
    emit(result, as_json=as_json)

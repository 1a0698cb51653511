"""``cram eval``: evaluate checkpoints on an SRCD split (or a token file, or text checkpoints on
text) and print the accuracy-vs-attention table."""

from __future__ import annotations

import click

from cramkit.cli.options import emit, json_option, plot_option
from cramkit.progress import progress_bar


@click.command("eval", short_help="Evaluate checkpoints on an SRCD split, a token file or text (accuracy or bpb, attention use).")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--split", default="iid", show_default=True,
              help="The split: iid, fresh, transfer:S, conflict:S (S = overlap in [0, 1]) or struct.")
@click.option("--sequences", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Number of probe sequences to evaluate (with --data: at most this many).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Evaluate on this token file (.npz or .safetensors, see docs/tasks.md) instead of an SRCD split; "
                   "for text checkpoints, any other file is a text corpus, encoded with the run's tokenizer.")
@click.option("--errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True,
              help="A --data text file that is not UTF-8: refuse it (strict) or read bad bytes as U+FFFD (replace).")
@json_option("Print one JSON object instead of tables.")
@plot_option("Save an accuracy-vs-attention plot (PNG) to this path (text: bits per byte vs attention use).")
def eval_cmd(checkpoints, split, sequences, data, errors, as_json, plot) -> None:
    """Evaluate one or more checkpoints (files or run folders) on an SRCD split.

    For each checkpoint it prints the recurring, episodic and overall accuracy (acc_r, acc_e, acc)
    and the attention use per query slot (rho_q), per position (rho_all) and as a FLOP fraction
    (phi). With several checkpoints it also prints the accuracy-vs-attention (Pareto) table.
    With --data FILE any checkpoint is scored on a token file instead: accuracy on its target
    positions, attention use over target positions (rho_target) and over all (rho_all), and a
    per-label breakdown when the file has labels.
    Text checkpoints are scored on a text file (--data corpus.txt) or, without --data, on their
    own validation split (and held-out corpus, text.eval_data): loss, bits per UTF-8 byte,
    attention use, and the same split between recall tokens (a bigram seen earlier in the
    context) and the rest, in windows of the run's context length (at most --sequences).
    A missing, corrupt or foreign file stops with one clear line and a non-zero exit status.
    """
    from cramkit.gpu.run.eval_report import EvalSettings, run

    with progress_bar(enabled=not as_json) as progress:
        result = run(EvalSettings(tuple(checkpoints), split, sequences, data, errors), progress)
    emit(result, as_json=as_json, plot=plot)

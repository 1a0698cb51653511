"""``cram eval``: evaluate checkpoints on an SRCD split (or a token file) and print the
accuracy-vs-attention table."""

from __future__ import annotations

import click

from cramkit.cli.options import emit, json_option, plot_option
from cramkit.progress import progress_bar


@click.command("eval", short_help="Evaluate checkpoints on an SRCD split or a token file (accuracy and attention use).")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--split", default="iid", show_default=True,
              help="The split: iid, fresh, transfer:S, conflict:S (S = overlap in [0, 1]) or struct.")
@click.option("--sequences", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Number of probe sequences to evaluate (with --data: at most this many).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Evaluate on this token file (.npz or .safetensors, see docs/tasks.md) instead of an SRCD split.")
@json_option("Print one JSON object instead of tables.")
@plot_option("Save an accuracy-vs-attention plot (PNG) to this path.")
def eval_cmd(checkpoints, split, sequences, data, as_json, plot) -> None:
    """Evaluate one or more checkpoints (files or run folders) on an SRCD split.

    For each checkpoint it prints the recurring, episodic and overall accuracy (acc_r, acc_e, acc)
    and the attention use per query slot (rho_q), per position (rho_all) and as a FLOP fraction
    (phi). With several checkpoints it also prints the accuracy-vs-attention (Pareto) table.
    With --data FILE any checkpoint is scored on a token file instead: accuracy on its target
    positions, attention use over target positions (rho_target) and over all (rho_all), and a
    per-label breakdown when the file has labels.
    A missing, corrupt or foreign file stops with one clear line and a non-zero exit status.
    """
    from cramkit.gpu.run.eval_report import EvalSettings, run

    with progress_bar(enabled=not as_json) as progress:
        result = run(EvalSettings(tuple(checkpoints), split, sequences, data), progress)
    emit(result, as_json=as_json, plot=plot)

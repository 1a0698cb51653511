"""``cram train``: train a hybrid SSM + attention model with CRAM routing on SRCD, text or a token file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cramkit import runs
from cramkit.cli.options import emit, json_option, plot_option, quiet_option
from cramkit.progress import progress_bar


@click.command(
    "train",
    short_help="Train a CRAM model on SRCD (default: the quick CPU preset), a text file or a token file.",
)
@click.option("--preset", type=str, default=None,
              help="Named preset: quick (the default, minutes on a CPU), paper (longer) or text.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A TOML configuration file to use instead of a preset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one setting, e.g. --set router.name=random --set train.steps=500 (repeatable).")
@click.option("--task", type=click.Choice(["srcd", "text", "tokens"]), default=None,
              help="The task: srcd (the default), text (byte-level language modelling) or tokens "
                   "(a token file, docs/tasks.md); text and tokens need --data.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="The text file (--task text) or token file (--task tokens: .npz or .safetensors) to train on.")
@click.option("--eval-data", type=click.Path(dir_okay=False), default=None,
              help="A held-out text file scored beside the validation split at every evaluation "
                   "(--task text; sets text.eval_data; heldout_* fields in metrics.jsonl).")
@click.option("--tensorboard", is_flag=True,
              help="Also write every evaluation's metrics to OUT/tensorboard/ (needs the tensorboard extra); "
                   "metrics.jsonl stays the record.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for metrics.jsonl, config.toml, checkpoints and summary.json "
                   "(default: runs/<preset>-<time>).")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the run saved in this folder (or from this checkpoint file); --set may "
                   "change the settings that are safe to change on resume (e.g. train.lr).")
@click.option("--from", "from_checkpoint", type=click.Path(dir_okay=False), default=None,
              help="With --resume DIR: continue the run in DIR from this checkpoint file, even one of "
                   "another run (a checkpoint of another run is otherwise refused); recorded in metrics.jsonl.")
@click.option("--overwrite", is_flag=True,
              help="Start a new run in an --out folder that holds one; the old run's files are moved "
                   "to DIR/replaced-<time>/, never deleted.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps in total (the schedule still follows train.steps); "
                   "continue later with --resume.")
@plot_option("Save the attention-utilization and accuracy curves over training (PNG) to this path.")
@quiet_option("Do not show the progress bar.")
@json_option("Print the final summary as one JSON object.")
def train(preset, config_file, overrides, task, data, eval_data, tensorboard, out_dir, resume, from_checkpoint,
          overwrite, max_steps, plot, quiet, as_json) -> None:  # fmt: skip
    """Train a hybrid SSM + attention model whose router learns when to attend.

    With no arguments this runs the quick preset on the CPU (a small SRCD task, minutes on two
    cores) and writes its results to runs/quick-<time>. Settings come from a preset or a TOML file,
    then --set overrides; unknown keys and wrong types are errors. Each evaluation appends one
    JSON line to metrics.jsonl; checkpoints are safetensors files with JSON metadata; --resume
    continues a stopped run and ends with the same metrics as an uninterrupted one (on a finished
    run it only reprints the summary, writing nothing, and --plot redraws the curves); --resume
    DIR --set train.lr=... continues it with a changed learning rate (other settings:
    docs/reliability.md). An --out folder belongs to one run (its run_id file, also in every
    checkpoint): another run there needs --overwrite, and a checkpoint of another run is resumed
    only on purpose, with --resume DIR --from FILE. Launch with torchrun for data-parallel
    training (rank 0 logs and saves).
    """
    from cramkit.errors import CramError
    from cramkit.gpu.run.config import config_task, load_config, preset_task
    from cramkit.gpu.run.train import TrainSettings, run

    if from_checkpoint is not None and resume is None:
        raise CramError("--from names a checkpoint to continue a run from; give the run folder with --resume DIR "
                        "(a new run starts from scratch)")  # fmt: skip
    if resume is not None:
        given = [name for name, v in (("--preset", preset), ("--config", config_file), ("--task", task),
                                      ("--data", data), ("--eval-data", eval_data), ("--out", out_dir),
                                      ("--overwrite", overwrite)) if v]  # fmt: skip
        if given:
            raise click.UsageError(f"--resume continues the run with its own configuration and folder; drop "
                                   f"{', '.join(given)} (--set may change train.lr and the other settings "
                                   "that are safe to change on resume)")  # fmt: skip
    cfg = None
    if resume is not None and overrides:
        cfg = _resume_config(Path(resume), list(overrides))
    if resume is None:
        if task in ("text", "tokens") and not data:
            raise click.UsageError(f"--task {task} needs --data FILE")
        if task == "text" and preset is None and config_file is None:
            preset = "text"
        data_task = task or (preset_task(preset) if preset else config_task(config_file) if config_file else None)
        if data and data_task not in ("text", "tokens"):
            raise click.UsageError("--data is for --task text or --task tokens (or a text preset)")
        sets = list(overrides)
        if task is not None:
            sets.insert(0, f"task={json.dumps(task)}")
        if data:
            sets.append(f"{data_task}.data={json.dumps(str(data))}")
        if eval_data:
            if data_task != "text":
                raise click.UsageError("--eval-data is a held-out text corpus, for --task text (or a text preset)")
            sets.append(f"text.eval_data={json.dumps(str(eval_data))}")
        cfg = load_config(config_file, sets, preset=preset)
        if out_dir is None:
            name = preset or (Path(config_file).stem if config_file else "quick")
            out_dir = str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if not as_json and not quiet:
            click.echo(f"writing to {out_dir}", err=True)
    with progress_bar(enabled=not quiet) as progress:
        result = run(TrainSettings(cfg, out_dir, resume, max_steps, overwrite, tensorboard, from_checkpoint),
                     progress)
    if result.stopped_early:
        click.echo(f"stopped at step {result.step} (--max-steps); "
                   f"continue with: cram train --resume {result.out_dir}", err=True)
    emit(result, as_json=as_json, plot=plot)


def _resume_config(resume: Path, overrides: list[str]):
    """``--resume DIR --set K=V``: the run's config.toml with the overrides (the library then
    refuses, by name, any that may not change on resume)."""
    from cramkit.gpu.run.config import load_config
    from cramkit.gpu.run.runfolder import RunFolder

    if not resume.exists():
        raise click.UsageError(f"nothing to resume: {resume} does not exist")
    run_dir = runs.run_dir_of(resume)
    if RunFolder.saved_config(run_dir) is None:
        raise click.UsageError(f"--resume --set needs the run's config.toml, and {run_dir} has none")
    return load_config(run_dir / runs.CONFIG, overrides, record=True)

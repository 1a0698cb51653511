"""``cram train``: train a hybrid SSM + attention model with CRAM routing (or a byte-level GPT)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cramkit.io import save_figure


def _print_summary(summary: dict, out_dir: Path | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"out": str(out_dir) if out_dir else None, **summary}, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="final evaluation" + (f" ({out_dir})" if out_dir else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
    Console().print(table)


def _plot(metrics: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if metrics and "rho_q" in metrics[0]:
        pts = [m for m in metrics if m["step"] > 0]
        steps = [m["step"] for m in pts]
        for key, style in (("E_rec", "-o"), ("rho_q", "-s"), ("rho_all", "-^")):
            ax1.plot(steps, [m[key] for m in pts], style, ms=3, label=key)
        ax1.axhline(metrics[-1]["floor_rho_q"], color="k", ls=":", lw=1, label="floor m_e/n_q")
        ax1.set_xscale("log")
        ax1.set_xlabel("optimizer step")
        ax1.set_ylabel("attention utilization")
        ax1.set_title("attention use over training (IID probe set)")
        ax1.legend(fontsize=8)
        for key in ("acc_r", "acc_e", "acc"):
            ax2.plot(steps, [m[key] for m in pts], "-o", ms=3, label=key)
        ax2.set_xscale("log")
        ax2.set_ylabel("accuracy")
    else:
        pts = [m for m in metrics if m.get("val_loss") is not None]
        ax1.plot([m["step"] for m in pts], [m["bpb"] for m in pts], "-o", ms=3, label="validation bits per byte")
        ax1.set_ylabel("bits per byte")
        ax1.legend(fontsize=8)
    ax2.set_xlabel("optimizer step")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@click.command(
    "train",
    short_help="Train a CRAM model on SRCD (default: the quick CPU preset) or on a text file.",
)
@click.option("--preset", type=str, default=None,
              help="Named preset: quick (the default, minutes on a CPU), paper (longer) or text.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A TOML configuration file to use instead of a preset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one setting, e.g. --set router.name=random --set train.steps=500 (repeatable).")
@click.option("--task", type=click.Choice(["srcd", "text"]), default=None,
              help="The task: srcd (the default) or text (byte-level language modelling; needs --data).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="The text file to train on with --task text.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for metrics.jsonl, config.toml, checkpoints and summary.json "
                   "(default: runs/<preset>-<time>).")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the run saved in this folder (or from this checkpoint file).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps in total (the schedule still follows train.steps); "
                   "continue later with --resume.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Save the attention-utilization and accuracy curves over training (PNG) to this path.")
@click.option("--quiet", is_flag=True, help="Do not show the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as one JSON object.")
def train(preset, config_file, overrides, task, data, out_dir, resume, max_steps, plot_path, quiet, as_json) -> None:
    """Train a hybrid SSM + attention model whose router learns when to attend.

    With no arguments this runs the quick preset on the CPU (a small SRCD task, minutes on two
    cores) and writes its results to runs/quick-<time>. Settings come from a preset or a TOML file,
    then --set overrides; unknown keys and wrong types are errors. Each evaluation appends one
    JSON line to metrics.jsonl; checkpoints are safetensors files with JSON metadata; --resume
    continues a stopped run and ends with the same metrics as an uninterrupted one (on a finished
    run it only reprints the summary, and --plot redraws the curves). Launch with
    torchrun for data-parallel training (rank 0 logs and saves).
    """
    from cramkit.gpu.config import load_config
    from cramkit.gpu.train import train as run_train

    if resume is not None and (preset or config_file or overrides or task or data):
        raise click.UsageError("--resume takes the configuration from the checkpoint; drop --preset/--config/--set/--task/--data")
    if task == "text" and not data and resume is None:
        raise click.UsageError("--task text needs --data FILE")
    if data and task != "text":
        raise click.UsageError("--data is for --task text")
    cfg = None
    if resume is None:
        if task == "text" and preset is None and config_file is None:
            preset = "text"
        sets = list(overrides)
        if task is not None:
            sets.insert(0, f"task={json.dumps(task)}")
        if data:
            sets.append(f"text.data={json.dumps(str(data))}")
        cfg = load_config(config_file, sets, preset=preset)
        if out_dir is None:
            out_dir = str(Path("runs") / f"{preset or (Path(config_file).stem if config_file else 'quick')}-{time.strftime('%Y%m%d-%H%M%S')}")
    elif out_dir is not None:
        raise click.UsageError("--resume writes into the run's own folder; drop --out")
    if not as_json and not quiet and resume is None:
        click.echo(f"writing to {out_dir}", err=True)
    result = run_train(cfg, out_dir, resume=resume, max_steps=max_steps, progress=not quiet)
    if result.stopped_early:
        click.echo(f"stopped at step {result.step} (--max-steps); "
                   f"continue with: cram train --resume {result.out_dir}", err=True)
    if plot_path:
        _plot(result.metrics, plot_path)
    _print_summary(result.summary, result.out_dir, as_json)

"""``cram train``'s driver: segments, the run folder and the result, for any task (docs/tasks.md) --
SRCD, byte-level text, token files. The step loop is :mod:`.trainer`, resume :mod:`.resume`, the
schedule :mod:`.schedule`.

Single process::

    cram train                                   # quick preset on the CPU
    cram train --preset paper --out runs/paper   # longer run
    cram train --set router.name=random --set train.steps=500 --out runs/rand

From Python, with your own task (any object with the :class:`cramkit.gpu.tasks.Task` protocol)::

    result = train(load_config(overrides=["train.steps=200"]), "runs/mine", task=MyTask())

Data parallel (one process per GPU, or ``--nproc_per_node=2`` CPU processes on gloo)::

    torchrun --standalone --nproc_per_node=4 -m cramkit.cli.main train --preset paper --out runs/p

Every rank holds the full model; gradients are averaged with one all-reduce per step (what DDP
does, without bucketing), so all ranks stay bit-identical; rank 0 logs and saves. Each rank takes a
disjoint slice of the global batch (``train.batch_size`` is the global batch).

Determinism: the batch of step s comes from the task and step s (SRCD: the sequence seeds of step
s), and the exploration mask / random router / sampled windows of step s from a generator seeded by
(seed, step, rank). Model, optimizer and step therefore fully determine the rest of a run, and
``--resume`` reproduces an uninterrupted run bit for bit (same machine, same thread count).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramkit import runs
from cramkit.errors import CramError, OSFault
from cramkit.gpu.run import config as C
from cramkit.gpu.run.distributed import dist_info, init_distributed, pick_device
from cramkit.gpu.run.resume import RunState, finished_run, open_resume
from cramkit.gpu.run.runfolder import RunFolder
from cramkit.gpu.run.textrun import check_resumed_tokenizer, write_run_files
from cramkit.gpu.run.trainer import _Trainer, is_val_jump  # noqa: F401 (is_val_jump: re-exported)
from cramkit.gpu.tasks import Task, check_task
from cramkit.io import atomic_write_json, save_figure
from cramkit.memory import check_fits, check_training_fits, tensor_bytes
from cramkit.progress import Progress, report_to
from cramkit.result import Result, render_text


@dataclass(frozen=True)
class TrainSettings:
    """What ``cram train`` runs: a run config (with ``resume``: None for the checkpoint's own, or
    the run's config with changed :data:`cramkit.gpu.run.runfolder.RESUMABLE_KEYS`), the output
    folder, a run to resume, a step to stop at, whether a new run may replace the run in
    ``out`` (moved aside into ``out/replaced-<time>/``), and a checkpoint to continue the resumed
    run from on purpose (``from_checkpoint``: even one of another run)."""

    run: C.RunConfig | None = None
    out: str | Path | None = None
    resume: str | Path | None = None
    max_steps: int | None = None
    overwrite: bool = False
    tensorboard: bool = False  # mirror metrics.jsonl into RUN/tensorboard/ (the tensorboard extra)
    from_checkpoint: str | Path | None = None

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise CramError("--max-steps must be >= 1")
        if self.resume is not None and self.out is not None:
            raise CramError("--resume writes into the run's own folder; give no output folder")
        if self.resume is not None and self.overwrite:
            raise CramError("--resume continues the run in the folder and --overwrite replaces it; give one")
        if self.from_checkpoint is not None and self.resume is None:
            raise CramError("--from names a checkpoint to continue a run from; give the run folder with "
                            "--resume DIR (a new run starts from scratch)")  # fmt: skip


@dataclass
class TrainResult(Result):
    out_dir: Path | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    stopped_early: bool = False
    step: int = 0
    config: C.RunConfig | None = field(default=None, repr=False)

    name = "cram train"

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out_dir) if self.out_dir else None, **self.summary}

    def report(self) -> str:
        from rich.table import Table

        table = Table(title="final evaluation" + (f" ({self.out_dir})" if self.out_dir else ""))
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in self.summary.items():
            table.add_row(k, "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        text = render_text(table)
        if self.summary.get("val_jumps"):
            factor = self.config.train.jump_factor if self.config else "train.jump_factor"
            text += (f"\nwarning: the validation loss jumped above {factor}x its best "
                     f"at step(s) {', '.join(map(str, self.summary['val_jumps']))} (the jump guard)\n")
        return text

    def plot(self, path: str | os.PathLike) -> None:
        save_figure(_training_figure(self.metrics), path)


def run(config: TrainSettings, progress: Progress | None = None) -> TrainResult:
    """Train (or resume) the run ``config`` describes."""
    logger = None
    if config.tensorboard:
        from cramkit.gpu.run.tensorboard import TensorBoardLogger

        out = config.out if config.resume is None else runs.run_dir_of(Path(config.resume))
        if out is None:
            raise CramError("--tensorboard writes into the run folder; give --out DIR")
        logger = TensorBoardLogger(out)
    try:
        return train(config.run, config.out, resume=config.resume, max_steps=config.max_steps, progress=progress,
                     overwrite=config.overwrite, on_eval=logger,
                     resume_from=config.from_checkpoint)
    finally:
        if logger is not None:
            logger.close()


def _training_figure(metrics: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if metrics and "rho_q" in metrics[0] and "E_rec" in metrics[0]:
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
        key = "bpb" if metrics and "bpb" in metrics[-1] else "val_loss"
        pts = [m for m in metrics if m.get(key) is not None]
        ax1.plot([m["step"] for m in pts], [m[key] for m in pts], "-o", ms=3, label=f"validation {key}")
        ax1.set_ylabel("bits per byte" if key == "bpb" else "validation loss")
        ax1.legend(fontsize=8)
        for k in ("acc", "rho_all", "rho_target"):
            got = [m for m in metrics if m.get(k) is not None]
            if got:
                ax2.plot([m["step"] for m in got], [m[k] for m in got], "-o", ms=3, label=k)
    ax2.set_xlabel("optimizer step")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attention_reduction(metrics: list[dict[str, Any]], key: str = "E_rec") -> dict[str, Any]:
    """Attention reduction from the first to the last evaluation, and the transition step: where
    ``key`` falls fastest per decade of steps (``cramkit.theory.transition``'s model-free
    estimate: isotonic fit, steepest windowed slope against log step; docs/theory.md)."""
    from cramkit.theory.transition import isotonic_decreasing, windowed_slope_tc

    out: dict[str, Any] = {"reduction_rho_q": None, "reduction_rho_all": None, "transition_step": None}
    if len(metrics) >= 2:
        first, last = metrics[0], metrics[-1]
        for k in ("rho_q", "rho_all"):
            if first.get(k) is not None and last.get(k):
                out[f"reduction_{k}"] = first[k] / last[k]
    pts = [(m["step"], m[key], m.get("rec_total") or 1) for m in metrics if m.get(key) is not None and m["step"] > 0]
    if len(pts) >= 3 and pts[0][1] > pts[-1][1]:
        t, y, w = (np.array(v, dtype=np.float64) for v in zip(*pts))
        out["transition_step"] = windowed_slope_tc(t, isotonic_decreasing(y, w))
    return out


def summarize_run(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    if not metrics:
        return {}
    last = metrics[-1]
    keys = ("step", "exposures", "acc_r", "acc_e", "acc", "rho_q", "rho_all", "rho_target", "phi", "floor_rho_q",
            "router_precision", "router_recall", "wall_s", "val_loss", "bpb")  # fmt: skip
    s = {k: last[k] for k in keys if k in last}
    if any("val_loss" in m for m in metrics):
        s["val_jumps"] = [m["step"] for m in metrics if m.get("val_jump")]
    if "rho_q" in last:
        s.update(attention_reduction(metrics))
    return s


def check_probe_fits(cfg: C.RunConfig) -> None:
    """Refuse (one line) an SRCD probe set that cannot fit in memory, before the task makes it."""
    if cfg.task == "srcd":
        n, k = cfg.srcd.n, cfg.train.eval_sequences
        check_fits(3 * tensor_bytes(k, n, dtype_bytes=8), f"the probe set (train.eval_sequences={k} sequences of {n} tokens)")


def check_memory(cfg: C.RunConfig, task: Task, world_size: int, device: torch.device) -> None:
    """Refuse (one line) a model and batch that cannot fit in memory, before allocating them (a
    lower-bound estimate: cramkit.memory)."""
    batch = max(1, cfg.train.batch_size // world_size)
    scfg = getattr(task, "scfg", None)
    if getattr(task, "name", "") == "srcd" and scfg is not None:
        check_training_fits(cfg.model, task.vocab_size, batch, scfg.n, device, logit_rows=scfg.n_q,
                            logit_width=scfg.v)  # fmt: skip
    else:
        seq_len = int(getattr(task, "seq_len", 0) or getattr(task, "n_targets", 1))
        check_training_fits(cfg.model, task.vocab_size, batch, seq_len, device)




def train(
    cfg: C.RunConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    task: Task | None = None,
    resume: str | Path | None = None,
    max_steps: int | None = None,
    progress: Progress | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume) a run; returns the metrics of every evaluation and a summary.

    ``task``: any object with the task protocol (docs/tasks.md); default: the run config's own
    (``cfg.build_task()``). ``out_dir`` is owned by this run while it trains (docs/reliability.md):
    a folder that holds another run is refused unless ``overwrite`` (the old run is moved into
    ``out_dir/replaced-<time>/``). ``resume`` (a run folder or a checkpoint file) continues a run
    in its own folder; ``cfg`` is then None (the checkpoint's config) or the run's config with
    changed :data:`cramkit.gpu.run.runfolder.RESUMABLE_KEYS`. ``max_steps`` stops after that many
    optimizer steps in total (the schedule still follows ``train.steps``), saving a checkpoint
    there, so the run can be continued with ``resume`` (pass the same ``task`` again for a task of
    your own). ``progress(stage, done, total)`` hears about every step; ``on_eval(record)`` about
    every evaluation. ``resume_from`` (with ``resume``, a run folder) continues that run from this
    checkpoint file, even one of another run (recorded as an "adopt" event). A finished run
    resumed without changes is only read: its summary is returned and nothing is written.
    """
    if isinstance(progress, bool):  # older callers passed a flag
        progress = None
    if max_steps is not None and max_steps < 1:
        raise CramError("--max-steps must be >= 1")
    rank, world_size = dist_info()
    state = RunState()
    folder: RunFolder | None = None
    if resume is not None and rank == 0 and world_size == 1:
        done = finished_run(resume, cfg, resume_from)
        if done is not None and _end_step(done[0].train, max_steps, done[1].start_step) == done[1].start_step:
            cfg, state = done
            return TrainResult(runs.run_dir_of(Path(resume)), state.metrics, summarize_run(state.metrics), False,
                               state.start_step, cfg)  # fmt: skip
    try:
        if resume is not None:
            folder, cfg, state = open_resume(resume, cfg, rank, resume_from)
            out_dir = runs.run_dir_of(Path(resume))
        cfg = cfg or C.load_config()
        end_step = _end_step(cfg.train, max_steps, state.start_step)
        out = Path(out_dir) if out_dir is not None else None
        trainer = _train_segment(cfg, task, state, end_step, rank=rank, world_size=world_size, progress=progress,
                                 on_eval=on_eval, open_folder=lambda: _own_folder(folder, out, cfg, state, overwrite))  # fmt: skip
        folder = trainer.folder
        stopped_early = end_step < cfg.train.steps
        summary = summarize_run(trainer.metrics)
        if folder is not None and not stopped_early:
            try:
                atomic_write_json(folder.path / runs.SUMMARY, summary)
            except OSFault as exc:  # the run is done and saved; only its summary is missing
                done = "the run finished and its checkpoints are saved"
                raise OSFault(f"{exc}; {folder.fault_hint(exc.errno, done)} (writes the summary)", exc.errno) from None
    finally:
        if folder is not None:
            folder.close()
    return TrainResult(out, trainer.metrics, summary, stopped_early, end_step, cfg)


def _end_step(tcfg: C.TrainConfig, max_steps: int | None, start_step: int) -> int:
    """The step this segment stops at; a stop behind the run's step is refused."""
    if max_steps is not None and max_steps < start_step:
        raise CramError(f"the run is already at step {start_step}; --max-steps {max_steps} is behind it "
                        f"(give a larger --max-steps, or none to finish the run)")  # fmt: skip
    if tcfg.steps < start_step:
        raise CramError(f"the run is already at step {start_step}; train.steps = {tcfg.steps} is behind it")
    return tcfg.steps if max_steps is None else min(tcfg.steps, max_steps)


def _own_folder(folder: RunFolder | None, out: Path | None, cfg: C.RunConfig, state: RunState,
                overwrite: bool) -> RunFolder | None:  # fmt: skip
    """Rank 0's run folder, ready for the loop: a new run takes ``out`` over (refused when it holds
    another run, unless ``overwrite``); a resumed one (``folder``, already held) gets the metrics
    log of its checkpoint."""
    if folder is not None:
        folder.begin_resume(state.metrics, state.start_step, state.adopted)
        return folder
    if out is None:
        return None
    return RunFolder.open(out, cfg.to_toml(), overwrite=overwrite)


def _train_segment(cfg: C.RunConfig, task: Task | None, state: RunState, end_step: int, *, rank: int,
                   world_size: int, progress: Progress | None, on_eval: Callable | None,
                   open_folder: Callable[[], RunFolder | None]) -> _Trainer:  # fmt: skip
    """Build the task and model, restore ``state``, open the run folder (rank 0) and train to
    ``end_step``; returns the trainer (its metrics and folder)."""
    tcfg = cfg.train
    owns_group = init_distributed(tcfg, rank, world_size)
    trainer = None
    try:
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        device = pick_device(tcfg, rank)
        if task is None:
            check_probe_fits(cfg)
            task = cfg.build_task(device=device, rank=rank, world_size=world_size,
                                  progress=progress if rank == 0 else None)  # fmt: skip
        check_task(task)
        check_resumed_tokenizer(task, state.meta, state.path)
        check_memory(cfg, task, world_size, device)
        trainer = _Trainer(cfg, task, state, None, rank=rank, world_size=world_size, device=device,
                           on_eval=on_eval)  # fmt: skip
        trainer.restore()
        trainer.broadcast()
        if trainer.is_main:
            trainer.folder = open_folder()
            if trainer.folder is not None:
                write_run_files(trainer.folder.path, task)  # the tokenizer of a subword text run
        trainer.loop(end_step, report_to(progress))
    except BaseException:
        if trainer is not None and trainer.folder is not None:
            trainer.folder.close()  # the lock goes with the failure (closing twice is harmless)
        raise
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return trainer

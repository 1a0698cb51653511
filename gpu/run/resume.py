"""Resuming a run: the state a run carries between segments (:class:`RunState`), reading it from
a checkpoint, and taking over the run folder of a checkpoint (:func:`open_resume`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cramkit import runs
from cramkit.errors import CramError
from cramkit.gpu.run import config as C
from cramkit.gpu.run.checkpoint import ARCHES, read_checkpoint
from cramkit.gpu.run.runfolder import RunFolder, check_resume_changes


@dataclass
class RunState:
    """What a run carries between segments (all in the checkpoint's metadata)."""

    start_step: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    wall0: float = 0.0
    cum_lr: float = 0.0
    pending: dict[str, float] = field(default_factory=dict)  # training statistics since the last evaluation
    tensors: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] | None = None
    path: Path | None = None


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint file (or the folder itself)."""
    if checkpoint.is_dir():
        return checkpoint
    return checkpoint.parent.parent if checkpoint.parent.name == runs.CHECKPOINTS else checkpoint.parent


def read_resume_state(resume: str | Path) -> tuple[C.RunConfig, RunState]:
    """The config and training state stored in a checkpoint file (a folder: its last.safetensors);
    one line naming the file for anything corrupt."""
    resume = Path(resume)
    tensors, meta = read_checkpoint(resume)
    if meta.get("arch") not in ARCHES:
        raise CramError(f"{resume} is not a cram training checkpoint")
    bad = f"checkpoint {resume} has corrupt training metadata; it cannot be resumed"
    try:
        cfg = C.from_dict(meta["config"])
        state = RunState(int(meta["step"]), list(meta.get("metrics", [])), float(meta.get("wall_s", 0.0)),
                         float(meta.get("cum_lr", 0.0)), dict(meta.get("pending", {})), tensors, meta, resume)  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise CramError(bad) from None
    if state.start_step < 0 or not all(isinstance(m, dict) for m in state.metrics):
        raise CramError(bad)
    return cfg, state


def _checkpoint_to_resume(resume: Path, run_dir: Path) -> Path:
    """The checkpoint a resume starts from: the given file, or the folder's newest checkpoint that
    verifies (a corrupt last.safetensors is skipped with a warning naming it)."""
    if not resume.is_dir():
        return resume
    good = RunFolder(run_dir, None).last_good_checkpoint()  # an unlocked view: reads only
    if good is None:
        if not (runs.last_checkpoint(run_dir).is_file() or runs.kept_checkpoints(run_dir)):
            raise CramError(f"nothing to resume in {run_dir}: it holds no checkpoint")
        raise CramError(f"nothing to resume in {run_dir}: no checkpoint in it passes verification")
    return good


def _folder_config_toml(cfg: C.RunConfig | None, run_dir: Path, resume: Path) -> str:
    """The config a resume opens the folder with: the given one, else the folder's config.toml,
    else (a folder without one) the checkpoint's own."""
    if cfg is not None:
        return cfg.to_toml()
    saved = RunFolder.saved_config(run_dir)
    if saved is not None:
        return saved
    return read_resume_state(resume)[0].to_toml()


def open_resume(resume: str | Path, cfg: C.RunConfig | None, rank: int) -> tuple[RunFolder | None, C.RunConfig, RunState]:
    """Take over the run folder of ``resume`` (rank 0: locked, its config checked against ``cfg``)
    and read the checkpoint to continue from; ``cfg`` (None: the folder's config.toml, else the
    checkpoint's config) may differ from the checkpoint's in
    :data:`cramkit.gpu.run.runfolder.RESUMABLE_KEYS` only."""
    resume = Path(resume)
    if not resume.exists():
        raise CramError(f"nothing to resume: {resume} does not exist")
    run_dir = run_dir_of(resume)
    folder = None
    if rank == 0:
        folder = RunFolder.open(run_dir, _folder_config_toml(cfg, run_dir, resume), resume=True,
                                complete=lambda saved: C.from_dict(saved).to_dict())
    try:
        ck_cfg, state = read_resume_state(_checkpoint_to_resume(resume, run_dir))
        if cfg is None and (run_dir / runs.CONFIG).is_file():
            cfg = C.load_config(run_dir / runs.CONFIG)  # the folder's config is the run's (a checkpoint
            # of another run is then refused by name, like a changed config)
        cfg = cfg or ck_cfg
        check_resume_changes(ck_cfg.to_dict(), cfg.to_dict(), str(run_dir))
    except BaseException:
        if folder is not None:
            folder.close()
        raise
    return folder, cfg, state

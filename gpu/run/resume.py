"""Resuming a run: the state a run carries between segments (:class:`RunState`), reading it from
a checkpoint, and taking over the run folder of a checkpoint (:func:`open_resume`).

A run folder knows its run: ``DIR/run_id`` and the ``run_id`` in every checkpoint's signed
metadata. A checkpoint of another run is refused, naming both runs, unless it is adopted on
purpose (``cram train --resume DIR --from FILE``); checkpoints and folders written before run ids
resume as before. A folder whose run stopped before its first checkpoint resumes from step 0 with
its config.toml. A finished run is only read (:func:`finished_run`): reprinting it writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cramkit import runs
from cramkit.errors import CramError
from cramkit.gpu.run import config as C
from cramkit.gpu.run.checkpoint import ARCHES, model_state, read_checkpoint
from cramkit.gpu.run.runfolder import RESUMABLE_KEYS, RunFolder, check_resume_changes, diff_configs


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
    #: the event line recording a checkpoint of another run adopted with ``--from`` (None: none)
    adopted: dict[str, Any] | None = None


def read_resume_state(resume: str | Path) -> tuple[C.RunConfig, RunState]:
    """The config and training state stored in a checkpoint file (a folder: its last.safetensors);
    one line naming the file for anything corrupt."""
    resume = Path(resume)
    tensors, meta = read_checkpoint(resume)
    if meta.get("arch") not in ARCHES:
        raise CramError(f"{resume} is not a cram training checkpoint")
    bad = f"checkpoint {resume} has corrupt training metadata; it cannot be resumed"
    try:
        cfg = C.from_record(meta["config"])
        state = RunState(int(meta["step"]), list(meta.get("metrics", [])), float(meta.get("wall_s", 0.0)),
                         float(meta.get("cum_lr", 0.0)), dict(meta.get("pending", {})), tensors, meta, resume)  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise CramError(bad) from None
    if state.start_step < 0 or not all(isinstance(m, dict) for m in state.metrics):
        raise CramError(bad)
    return cfg, state


def _checkpoint_to_resume(resume: Path, run_dir: Path) -> Path | None:
    """The checkpoint a resume starts from: the given file, or the folder's newest checkpoint that
    verifies (a corrupt last.safetensors is skipped with a warning naming it); None for a folder
    whose run stopped before its first checkpoint (it starts again from its config.toml)."""
    if not resume.is_dir():
        return resume
    view = RunFolder(run_dir, None)  # an unlocked view: reads only
    good = view.last_good_checkpoint()
    if good is None:
        if not view.has_checkpoint():
            if (run_dir / runs.CONFIG).is_file():
                return None
            raise CramError(f"nothing to resume in {run_dir}: it holds no checkpoint")
        raise CramError(f"nothing to resume in {run_dir}: no checkpoint in it passes verification")
    return good


def check_identity(state: RunState, run_dir: Path, folder_id: str | None, ck_cfg: C.RunConfig,
                   cfg: C.RunConfig | None) -> None:  # fmt: skip
    """Refuse a checkpoint of another run: its run id differs from the folder's (a checkpoint or a
    folder from before run ids, without one, passes). The message names both runs and, when the
    checkpoint fits the folder's config, the command that adopts it on purpose."""
    ck_id = (state.meta or {}).get("run_id")
    if folder_id is None or ck_id is None or ck_id == folder_id:
        return
    head = f"{state.path} is a checkpoint of run {ck_id}, not of the run in {run_dir} (run {folder_id})"
    changes = diff_configs(ck_cfg.to_dict(), (cfg or ck_cfg).to_dict())
    refused = [k for k in changes if k not in RESUMABLE_KEYS]
    if refused:
        differs = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused[:6])
        raise CramError(f"{head}, and its config differs in {differs}; it is not resumed")
    raise CramError(f"{head}; it is not resumed. To continue this folder from it on purpose: cram train "
                    f"--resume {run_dir} --from {state.path}")  # fmt: skip


def _folder_config_toml(cfg: C.RunConfig | None, run_dir: Path, resume: Path) -> str:
    """The config a resume opens the folder with: the given one, else the folder's config.toml,
    else (a folder without one) the checkpoint's own."""
    if cfg is not None:
        return cfg.to_toml()
    saved = RunFolder.saved_config(run_dir)
    if saved is not None:
        return saved
    return read_resume_state(resume)[0].to_toml()


def _read_state(resume: Path, run_dir: Path, cfg: C.RunConfig | None,
                from_file: Path | None) -> tuple[C.RunConfig, RunState]:  # fmt: skip
    """The config a resume runs with and the state it starts from (the checkpoint of ``resume``,
    or ``from_file`` adopted on purpose); a checkpoint of another run is refused unless adopted,
    a config that differs from the checkpoint's outside the resumable keys is refused by name."""
    ck = from_file if from_file is not None else _checkpoint_to_resume(resume, run_dir)
    if cfg is None and (run_dir / runs.CONFIG).is_file():
        cfg = C.load_config(run_dir / runs.CONFIG, record=True)  # the folder's config is the run's
    if ck is None:  # stopped before its first checkpoint: start again from step 0
        return cfg, RunState()
    ck_cfg, state = read_resume_state(ck)
    folder_id = runs.read_run_id(run_dir)
    if from_file is None:
        check_identity(state, run_dir, folder_id, ck_cfg, cfg)
    else:
        state.adopted = {"event": "adopt", "step": state.start_step, "from": str(from_file),
                         "from_run": (state.meta or {}).get("run_id")}  # fmt: skip
    cfg = cfg or ck_cfg
    check_resume_changes(ck_cfg.to_dict(), cfg.to_dict(), str(run_dir))
    return cfg, state


def open_resume(resume: str | Path, cfg: C.RunConfig | None, rank: int,
                from_file: str | Path | None = None) -> tuple[RunFolder | None, C.RunConfig, RunState]:  # fmt: skip
    """Take over the run folder of ``resume`` (rank 0: locked, its config checked against ``cfg``)
    and read the checkpoint to continue from (``from_file``: that checkpoint instead, even one of
    another run); ``cfg`` (None: the folder's config.toml, else the checkpoint's config) may
    differ from the checkpoint's in :data:`cramkit.gpu.run.runfolder.RESUMABLE_KEYS` only."""
    resume = Path(resume)
    if not resume.exists():
        raise CramError(f"nothing to resume: {resume} does not exist")
    if from_file is not None:
        from_file = Path(from_file)
        if not resume.is_dir():
            raise CramError(f"--from names the checkpoint to continue from; --resume then names the run folder, "
                            f"not the file {resume}")  # fmt: skip
        if not from_file.is_file():
            raise CramError(f"--from: checkpoint {from_file} does not exist")
    run_dir = runs.run_dir_of(resume)
    if resume.is_dir() and from_file is None:
        RunFolder(run_dir, None).check_resumable()  # an unlocked view: reads only
    folder = None
    if rank == 0:
        folder = RunFolder.open(run_dir, _folder_config_toml(cfg, run_dir, from_file or resume), resume=True,
                                complete=lambda saved: C.from_record(saved).to_dict())  # fmt: skip
    try:
        cfg, state = _read_state(resume, run_dir, cfg, from_file)
        if folder is not None:
            folder.ensure_run_id(None if state.adopted else (state.meta or {}).get("run_id"))
    except BaseException:
        if folder is not None:
            folder.close()
        raise
    return folder, cfg, state


def finished_run(resume: str | Path, cfg: C.RunConfig | None,
                 from_file: str | Path | None = None) -> tuple[C.RunConfig, RunState] | None:  # fmt: skip
    """The config and final state of a finished run, read without writing anything (no lock, no
    temp clean-up): what ``cram train --resume DIR`` on a finished run reprints, even from a
    read-only folder. None when the resume has work to do: settings to change (``cfg``), a
    checkpoint to adopt, steps left, or a summary.json to write."""
    resume = Path(resume)
    if cfg is not None or from_file is not None or not resume.exists():
        return None
    run_dir = runs.run_dir_of(resume)
    if not (run_dir / runs.CONFIG).is_file() or not (run_dir / runs.SUMMARY).is_file():
        return None
    cfg, state = _read_state(resume, run_dir, None, None)
    if state.tensors is None or state.start_step < cfg.train.steps:
        return None
    model_state(state.tensors, state.meta or {})  # its weights are named consistently (tied entries)
    return cfg, state

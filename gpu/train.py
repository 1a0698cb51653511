"""Training loop for ``cram train``: any task (docs/tasks.md) -- SRCD, byte-level text, token files.

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

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramkit import runs
from cramkit.errors import CramError
from cramkit.gpu import config as C
from cramkit.gpu.build import check_vocab_matches, model_for_task, model_meta
from cramkit.gpu.checkpoint import (
    code_version,
    load_model_state,
    load_optimizer,
    read_checkpoint,
    restore_rng,
)
from cramkit.gpu.model import CramModel
from cramkit.gpu.runfolder import RunFolder, check_resume_changes
from cramkit.gpu.tasks import Task, TaskBatch, check_task
from cramkit.io import atomic_write_json, save_figure
from cramkit.memory import check_fits, check_training_fits, tensor_bytes
from cramkit.progress import Progress, report_to
from cramkit.result import Result, render_text

ARCH = "cram-hybrid"  # checkpoint architecture tag (text runs: "gpt-bytes", kept for older readers)
TEXT_ARCH = "gpt-bytes"


def _divergence_advice(folder: RunFolder | None, tcfg: C.TrainConfig) -> str:
    """Where a diverged run stands and a command that continues it with half the learning rate
    (from the last good checkpoint; at step 1, before any checkpoint, a command that starts it
    again). Without a run folder: what to change."""
    lr = tcfg.lr / 2
    if folder is None:
        return f"; lower train.lr (e.g. --set train.lr={lr!r})"
    good = folder.last_good_checkpoint()
    if good is None:
        cfg_file = folder.path / runs.CONFIG
        return (f"; no checkpoint was saved yet: start again with a lower learning rate: cram train --config "
                f"{cfg_file} --out {folder.path} --overwrite --set train.lr={lr!r}")  # fmt: skip
    return f"; the last good checkpoint is {good}; lower the learning rate: {folder.resume_hint({'train.lr': lr})}"


class TrainingDiverged(CramError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# the command contract: run(config, progress) -> TrainResult
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """What ``cram train`` runs: a run config (with ``resume``: None for the checkpoint's own, or
    the run's config with changed :data:`cramkit.gpu.runfolder.RESUMABLE_KEYS`), the output
    folder, a run to resume, a step to stop at, and whether a new run may replace the run in
    ``out`` (moved aside into ``out/replaced-<time>/``)."""

    run: C.RunConfig | None = None
    out: str | Path | None = None
    resume: str | Path | None = None
    max_steps: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise CramError("--max-steps must be >= 1")
        if self.resume is not None and self.out is not None:
            raise CramError("--resume writes into the run's own folder; give no output folder")
        if self.resume is not None and self.overwrite:
            raise CramError("--resume continues the run in the folder and --overwrite replaces it; give one")


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
        return render_text(table)

    def plot(self, path: str | os.PathLike) -> None:
        save_figure(_training_figure(self.metrics), path)


def run(config: TrainSettings, progress: Progress | None = None) -> TrainResult:
    """Train (or resume) the run ``config`` describes."""
    return train(config.run, config.out, resume=config.resume, max_steps=config.max_steps, progress=progress,
                 overwrite=config.overwrite)


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


# ----------------------------------------------------------------------------------------------
# schedule, evaluation steps, optimizer
# ----------------------------------------------------------------------------------------------


def lr_at(cfg: C.TrainConfig, step: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up, then cosine to min_lr_frac·lr (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    prog = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def log_eval_steps(cfg: C.TrainConfig) -> set[int]:
    """The ``eval_log_points`` log-spaced steps in [1, steps] (duplicates merged; O(points), and
    the config bounds the points)."""
    k = cfg.eval_log_points
    if not k:
        return set()
    return {max(1, min(cfg.steps, round(cfg.steps ** (i / (k - 1 if k > 1 else 1))))) for i in range(k)}


def is_eval_step(cfg: C.TrainConfig, step: int, log_steps: set[int]) -> bool:
    """Whether the run evaluates after ``step`` (``log_steps`` = :func:`log_eval_steps`)."""
    return step % cfg.eval_every == 0 or step == cfg.steps or step in log_steps


def eval_steps(cfg: C.TrainConfig) -> set[int]:
    """Steps after which the run evaluates: every ``eval_every`` steps, the last step, and
    ``eval_log_points`` log-spaced steps in [1, steps] (duplicates merged). The training loop
    tests steps with :func:`is_eval_step` instead of building this set."""
    return set(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every)) | {cfg.steps} | log_eval_steps(cfg)


def make_optimizer(model: CramModel, tcfg: C.TrainConfig) -> tuple[torch.optim.Optimizer, list]:
    """AdamW with weight decay on matrices only, and the router's parameters in their own group
    (named "router", so a learned-static router can be frozen by its learning rate)."""
    router_ids = {id(p) for p in model.router_parameters()}
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2 and id(p) not in router_ids]
    no_decay = [p for p in params if p.dim() < 2 and id(p) not in router_ids]
    router = [p for p in params if id(p) in router_ids]
    groups = [
        {"params": decay, "weight_decay": tcfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        {"params": router, "weight_decay": 0.0, "name": "router"},
    ]
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(0.9, 0.95), foreach=False)
    return opt, params


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of a step's random draws (exploration, random routers, sampled batches)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


# ----------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------


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
    if "rho_q" in last:
        s.update(attention_reduction(metrics))
    return s


# ----------------------------------------------------------------------------------------------
# set-up: resume, distributed, run folder
# ----------------------------------------------------------------------------------------------


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
    if meta.get("arch") not in (ARCH, TEXT_ARCH):
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


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(cfg: C.TrainConfig, rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CramError("train.device = 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(tcfg: C.TrainConfig, rank: int, world_size: int) -> bool:
    """Join the process group when launched by torchrun; True when this call created it."""
    if tcfg.batch_size % world_size:
        raise CramError(f"train.batch_size ({tcfg.batch_size}) must be divisible by the number of processes ({world_size})")
    if world_size == 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if pick_device(tcfg, rank).type == "cuda" else "gloo")
    return True


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
    :data:`cramkit.gpu.runfolder.RESUMABLE_KEYS` only."""
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


def allreduce_grads(params: list[torch.nn.Parameter], world_size: int) -> None:
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    off = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        new = flat[off : off + n].view_as(p)
        if p.grad is None:
            p.grad = new.clone()
        else:
            p.grad.copy_(new)
        off += n


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


class _Trainer:
    """One training segment: model, optimizer, task and the run's bookkeeping."""

    def __init__(self, cfg: C.RunConfig, task: Task, state: RunState, folder: RunFolder | None, *, rank: int,
                 world_size: int, device: torch.device, on_eval: Callable | None):  # fmt: skip
        self.cfg, self.tcfg, self.task, self.state, self.folder = cfg, cfg.train, task, state, folder
        self.rank, self.ws, self.device, self.on_eval = rank, world_size, device, on_eval
        self.is_main = rank == 0
        torch.manual_seed(self.tcfg.seed)
        self.model = model_for_task(cfg.model, cfg.router, task).to(device)
        self.opt, self.params = make_optimizer(self.model, self.tcfg)
        self.metrics = state.metrics
        self.cum_lr = state.cum_lr
        p = state.pending
        self.acc_loss, self.acc_frac, self.n_acc = float(p.get("loss", 0.0)), float(p.get("attn_frac", 0.0)), int(p.get("n", 0))
        self.static = cfg.router.name == "learned-static"
        self.static_steps = int(round(cfg.router.static_frac * self.tcfg.steps))
        provenance = task.provenance() if hasattr(task, "provenance") else {}
        self.meta_base = {"arch": TEXT_ARCH if cfg.task == "text" and getattr(task, "name", "") == "text" else ARCH,
                          "config": cfg.to_dict(), "code_version": code_version(), "task": getattr(task, "name", "task"),
                          **model_meta(self.model), **provenance}  # fmt: skip
        self.meta_base["target_range"] = list(task.target_range) if getattr(task, "target_range", None) else None

    # --- restore ------------------------------------------------------------------------------
    def restore(self) -> None:
        st = self.state
        if st.tensors is None:
            return
        check_vocab_matches(self.model, st.tensors, st.meta or {}, st.path)
        load_model_state(self.model, st.tensors, st.meta or {}, st.path)
        try:
            load_optimizer(self.opt, self.params, st.tensors, st.meta or {})
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CramError(f"checkpoint {st.path} does not match its own config ({first})") from None
        for g in self.opt.param_groups:  # train.weight_decay may change on resume
            if g.get("name") == "decay":
                g["weight_decay"] = self.tcfg.weight_decay
        restore_rng(st.tensors)

    def broadcast(self) -> None:
        if self.ws > 1:
            import torch.distributed as dist

            for p in self.model.state_dict().values():
                dist.broadcast(p, 0)

    # --- records ------------------------------------------------------------------------------
    def checkpoint(self, step: int, wall: float) -> None:
        if self.folder is None:
            return
        meta = self.meta_base | {"step": step, "metrics": self.metrics, "wall_s": wall, "cum_lr": self.cum_lr,
                                 "pending": {"loss": self.acc_loss, "attn_frac": self.acc_frac, "n": self.n_acc}}  # fmt: skip
        self.folder.save_checkpoint(step, self.model, self.opt, meta, keep=self.tcfg.keep_checkpoints)

    def record(self, step: int, wall: float, train_stats: dict[str, Any]) -> dict[str, Any]:
        m = {"step": step, **self.task.evaluate(self.model, step=step), **train_stats,
             "lr": lr_at(self.tcfg, max(step - 1, 0)), "cum_lr": self.cum_lr, "wall_s": wall}  # fmt: skip
        self.metrics.append(m)
        if self.folder is not None:
            self.folder.append_metrics(m)
        if self.on_eval is not None and self.is_main:
            self.on_eval(m)
        return m

    def train_stats(self, fout) -> dict[str, Any]:
        stats: dict[str, Any] = {"loss": self.acc_loss / self.n_acc if self.n_acc else None,
                                 "train_attn_frac": self.acc_frac / self.n_acc if self.n_acc else None}  # fmt: skip
        if fout is not None and (self.model.cram_layers or self.cfg.task == "srcd"):
            stats.update({f"loss_{k}": v for k, v in fout.parts.items() if k != "total"})
        return stats

    # --- one step -----------------------------------------------------------------------------
    def forward(self, step: int, gen: torch.Generator):
        """The batch of ``step`` through the model: (output, routed fraction, batch)."""
        router_phase = self.static and step < self.static_steps
        get = getattr(self.task, "router_batch", self.task.batch) if router_phase else self.task.batch
        tb: TaskBatch = get(step, self.tcfg.batch_size, generator=gen, rank=self.rank, world_size=self.ws)
        explore = None
        if self.cfg.router.explore > 0 and self.model.cram_layers:
            explore = (torch.rand(tb.tokens.shape, generator=gen) < self.cfg.router.explore).to(self.device)
        t = self.tcfg
        out = self.model(tb.tokens, tb.targets, query_mask=tb.query_mask, explore=explore, generator=gen,
                         weights={"epi": t.epi_weight, "sem": t.sem_weight, "distill": t.distill_weight})  # fmt: skip
        if out.traces:
            frac = sum(float(tr.route.float().mean()) for tr in out.traces) / len(out.traces)
        else:
            frac = 1.0 if set("GW") & set(self.cfg.model.pattern) else 0.0  # dense or windowed attention
        return out, frac, tb

    def step(self, step: int) -> tuple[float | None, Any]:
        """One optimizer step; returns the (global) training loss, None for a batch without targets."""
        self.model.train()
        lr = lr_at(self.tcfg, step)
        frozen = self.static and step >= self.static_steps
        for g in self.opt.param_groups:
            g["lr"] = 0.0 if (g["name"] == "router" and frozen) else lr
        gen = step_generator(self.tcfg.seed, step, self.rank)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else _nullcontext()
        with autocast:
            fout, frac, tb = self.forward(step, gen)
        has_targets = bool((tb.targets >= 0).any())  # a batch without targets teaches nothing: no gradient, no loss
        loss = fout.loss
        if has_targets and not torch.isfinite(loss).all():
            raise TrainingDiverged(f"training stopped: the loss became {float(loss.detach())} at step {step + 1}"
                                   f"{_divergence_advice(self.folder, self.tcfg)}")  # fmt: skip
        self.opt.zero_grad(set_to_none=True)
        if has_targets:
            loss.backward()
        if self.ws > 1:
            allreduce_grads(self.params, self.ws)
        if self.tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.tcfg.grad_clip)
        self.opt.step()
        self.cum_lr += lr
        loss_val = float(loss.detach()) if has_targets else 0.0
        n = 1.0 if has_targets else 0.0
        if self.ws > 1:  # log the global batch's mean, not rank 0's share
            import torch.distributed as dist

            stats = torch.tensor([loss_val, frac, n], dtype=torch.float64, device=self.device)
            dist.all_reduce(stats)
            loss_val, frac, n = stats[0].item() / max(stats[2].item(), 1.0), stats[1].item() / self.ws, stats[2].item()
        if n:
            self.acc_loss += loss_val
            self.acc_frac += frac
            self.n_acc += 1
        return (loss_val if n else None), fout

    # --- the loop -----------------------------------------------------------------------------
    def loop(self, end_step: int, progress: Progress) -> None:
        t_start = time.perf_counter()
        st = self.state
        if st.start_step == 0 and not self.metrics:
            self.model.eval()
            self.record(0, 0.0, {"loss": None, "train_attn_frac": None})
        log_steps = log_eval_steps(self.tcfg)
        tick = progress if self.is_main else report_to(None)
        tick("train", st.start_step, end_step)
        stepped = False
        step = done = st.start_step
        try:
            for step in range(st.start_step, end_step):
                _, fout = self.step(step)
                stepped = True
                s1 = done = step + 1
                wall = st.wall0 + time.perf_counter() - t_start
                if is_eval_step(self.tcfg, s1, log_steps):
                    self.record(s1, wall, self.train_stats(fout))
                    self.acc_loss = self.acc_frac = 0.0
                    self.n_acc = 0
                tick("train", s1, end_step)
                if s1 % self.tcfg.ckpt_every == 0 or s1 == end_step:
                    self.checkpoint(s1, wall)
        except KeyboardInterrupt:
            if self.folder is None:
                raise
            raise self.folder.interrupted(done) from None
        except CramError as exc:
            # Once this process has taken an optimizer step, an op's input check failing inside the
            # model (training or evaluation forward) means the weights blew up before a loss existed.
            if not stepped or isinstance(exc, TrainingDiverged):
                raise
            raise TrainingDiverged(
                f"training stopped: non-finite values inside the model after step {step + 1} ({exc})"
                f"{_divergence_advice(self.folder, self.tcfg)}"
            ) from None


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


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
) -> TrainResult:
    """Train (or resume) a run; returns the metrics of every evaluation and a summary.

    ``task``: any object with the task protocol (docs/tasks.md); default: the run config's own
    (``cfg.build_task()``). ``out_dir`` is owned by this run while it trains (docs/reliability.md):
    a folder that holds another run is refused unless ``overwrite`` (the old run is moved into
    ``out_dir/replaced-<time>/``). ``resume`` (a run folder or a checkpoint file) continues a run
    in its own folder; ``cfg`` is then None (the checkpoint's config) or the run's config with
    changed :data:`cramkit.gpu.runfolder.RESUMABLE_KEYS`. ``max_steps`` stops after that many
    optimizer steps in total (the schedule still follows ``train.steps``), saving a checkpoint
    there, so the run can be continued with ``resume`` (pass the same ``task`` again for a task of
    your own). ``progress(stage, done, total)`` hears about every step; ``on_eval(record)`` about
    every evaluation.
    """
    if isinstance(progress, bool):  # older callers passed a flag
        progress = None
    if max_steps is not None and max_steps < 1:
        raise CramError("--max-steps must be >= 1")
    rank, world_size = dist_info()
    state = RunState()
    folder: RunFolder | None = None
    try:
        if resume is not None:
            folder, cfg, state = open_resume(resume, cfg, rank)
            out_dir = run_dir_of(Path(resume))
        cfg = cfg or C.load_config()
        end_step = _end_step(cfg.train, max_steps, state.start_step)
        out = Path(out_dir) if out_dir is not None else None
        trainer = _train_segment(cfg, task, state, end_step, rank=rank, world_size=world_size, progress=progress,
                                 on_eval=on_eval, open_folder=lambda: _own_folder(folder, out, cfg, state, overwrite))  # fmt: skip
        folder = trainer.folder
        stopped_early = end_step < cfg.train.steps
        summary = summarize_run(trainer.metrics)
        if folder is not None and not stopped_early:
            atomic_write_json(folder.path / runs.SUMMARY, summary)
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
        folder.begin_resume(state.metrics, state.start_step)
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
            task = cfg.build_task(device=device, rank=rank, world_size=world_size)
        check_task(task)
        check_memory(cfg, task, world_size, device)
        trainer = _Trainer(cfg, task, state, None, rank=rank, world_size=world_size, device=device,
                           on_eval=on_eval)  # fmt: skip
        trainer.restore()
        trainer.broadcast()
        if trainer.is_main:
            trainer.folder = open_folder()
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

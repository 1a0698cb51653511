"""Training loop for ``cram train``: SRCD (CRAM routing) and byte-level text.

Single process::

    cram train                                   # quick preset on the CPU
    cram train --preset paper --out runs/paper   # longer run
    cram train --set router.name=random --set train.steps=500 --out runs/rand

Data parallel (one process per GPU, or ``--nproc_per_node=2`` CPU processes on gloo)::

    torchrun --standalone --nproc_per_node=4 -m cramkit.cli.main train --preset paper --out runs/p

Every rank holds the full model; gradients are averaged with one all-reduce per step (what DDP
does, without bucketing), so all ranks stay bit-identical; rank 0 logs and saves. Each rank takes a
disjoint slice of the global batch (``train.batch_size`` is the global batch).

Determinism: the batch of step s comes from the sequence seeds of step s, and the exploration
mask / random router of step s from a generator seeded by (seed, step, rank). Model, optimizer and
step therefore fully determine the rest of a run, and ``--resume`` reproduces an uninterrupted run
bit for bit (same machine, same thread count).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cramkit.gpu import config as C
from cramkit.gpu.checkpoint import (
    LAST,
    code_version,
    load_model_state,
    load_optimizer,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from cramkit.gpu.data import load_text, probe_seeds, router_pool_world, text_batch, train_batch, train_world
from cramkit.gpu.eval import ARCH, evaluate
from cramkit.gpu.model import CramModel, build_model
from cramkit.errors import CramError
from cramkit.io import append_jsonl, atomic_write_json, atomic_write_text

_DIVERGED_HINT = "(lower train.lr or raise train.grad_clip, then --resume)"


def _last_good(out: Path | None) -> str:
    last = (out / LAST) if out is not None else None
    return f"; the last good checkpoint is {last}" if last is not None and last.is_file() else ""


class TrainingDiverged(CramError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    out_dir: Path | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    stopped_early: bool = False
    step: int = 0
    config: C.RunConfig | None = field(default=None, repr=False)


def lr_at(cfg: C.TrainConfig, step: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up, then cosine to min_lr_frac·lr (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    prog = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def eval_steps(cfg: C.TrainConfig) -> set[int]:
    """Steps after which the run evaluates: every ``eval_every`` steps, the last step, and
    ``eval_log_points`` log-spaced steps in [1, steps] (duplicates merged)."""
    out = set(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every)) | {cfg.steps}
    k = cfg.eval_log_points
    if k:
        out |= {max(1, min(cfg.steps, round(cfg.steps ** (i / (k - 1 if k > 1 else 1))))) for i in range(k)}
    return out


def _dist_info() -> tuple[int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, ws


def _device(cfg: C.TrainConfig, rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CramError("train.device = 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def _make_optimizer(model: CramModel, tcfg: C.TrainConfig) -> tuple[torch.optim.Optimizer, list]:
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


def _allreduce_grads(params: list[torch.nn.Parameter], world_size: int) -> None:
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


def _transition(metrics: list[dict], key: str = "E_rec") -> dict[str, Any]:
    """Attention reduction from the first to the last evaluation and the transition step: the first
    evaluation step where ``key`` falls below the midpoint of its start and end values (linear
    interpolation in log step between the two evaluations around the crossing)."""
    pts = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
    out: dict[str, Any] = {"reduction_rho_q": None, "reduction_rho_all": None, "transition_step": None}
    if len(metrics) >= 2:
        first, last = metrics[0], metrics[-1]
        for k in ("rho_q", "rho_all"):
            if first.get(k) is not None and last.get(k):
                out[f"reduction_{k}"] = first[k] / last[k]
    if len(pts) >= 2 and pts[0][1] > pts[-1][1]:
        mid = 0.5 * (pts[0][1] + pts[-1][1])
        for (s0, e0), (s1, e1) in zip(pts, pts[1:]):
            if e0 > mid >= e1:
                if s0 > 0 and e0 != e1:
                    frac = (e0 - mid) / (e0 - e1)
                    out["transition_step"] = float(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))
                else:
                    out["transition_step"] = float(s1)
                break
    return out


def summarize_run(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    if not metrics:
        return {}
    last = metrics[-1]
    keys = ("step", "exposures", "acc_r", "acc_e", "acc", "rho_q", "rho_all", "phi", "floor_rho_q",
            "router_precision", "router_recall", "wall_s", "val_loss", "bpb")  # fmt: skip
    s = {k: last[k] for k in keys if k in last}
    if "rho_q" in last:
        s.update(_transition(metrics))
    return s


def train(
    cfg: C.RunConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or resume) a run; returns the metrics of every evaluation and a summary.

    ``max_steps`` stops after that many optimizer steps in total (the schedule still follows
    ``train.steps``), saving a checkpoint there, so the run can be continued with ``resume``.
    """
    rank, world_size = _dist_info()
    start_step, metrics, wall0, cum_lr = 0, [], 0.0, 0.0
    owns_group = False
    pending: dict[str, float] = {}  # training statistics accumulated since the last evaluation
    ck_tensors = ck_meta = None
    if resume is not None:
        resume = Path(resume)
        ck_tensors, ck_meta = read_checkpoint(resume)
        if ck_meta.get("arch") not in (ARCH, "gpt-bytes"):
            raise CramError(f"{resume} is not a cram training checkpoint")
        try:
            cfg = C.from_dict(ck_meta["config"])
            start_step = int(ck_meta["step"])
            metrics = list(ck_meta.get("metrics", []))
            wall0 = float(ck_meta.get("wall_s", 0.0))
            cum_lr = float(ck_meta.get("cum_lr", 0.0))
            pending = dict(ck_meta.get("pending", {}))
        except (KeyError, TypeError, ValueError):
            raise CramError(f"checkpoint {resume} has corrupt training metadata; it cannot be resumed") from None
        if start_step < 0 or not all(isinstance(m, dict) for m in metrics):
            raise CramError(f"checkpoint {resume} has corrupt training metadata; it cannot be resumed")
        out_dir = resume if resume.is_dir() else resume.parent.parent if resume.parent.name == "checkpoints" else resume.parent
    cfg = cfg or C.load_config()
    tcfg = cfg.train
    if max_steps is not None and max_steps < 1:
        raise CramError("--max-steps must be >= 1")
    if tcfg.batch_size % world_size:
        raise CramError(f"train.batch_size ({tcfg.batch_size}) must be divisible by the number of processes ({world_size})")
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if _device(tcfg, rank).type == "cuda" else "gloo")
            owns_group = True
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = _device(tcfg, rank)
    torch.manual_seed(tcfg.seed)
    model = build_model(cfg).to(device)
    opt, params = _make_optimizer(model, tcfg)
    if ck_tensors is not None:
        load_model_state(model, ck_tensors, ck_meta, resume)
        try:
            load_optimizer(opt, params, ck_tensors, ck_meta)
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CramError(f"checkpoint {resume} does not match its own config ({first})") from None
        restore_rng(ck_tensors)
    if world_size > 1:
        import torch.distributed as dist

        for p in model.state_dict().values():
            dist.broadcast(p, 0)
    is_main = rank == 0
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CramError(f"cannot create the output folder {out}: {exc.strerror}") from None
        atomic_write_text(out / "config.toml", cfg.to_toml())
        # the log holds exactly the evaluations the checkpoint knows about
        atomic_write_text(out / "metrics.jsonl", "".join(_jsonl(m) for m in metrics))

    task = _SRCDTask(cfg, device, rank, world_size) if cfg.task == "srcd" else _TextTask(cfg, device, rank, world_size)
    end_step = tcfg.steps if max_steps is None else min(tcfg.steps, max_steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _nullcontext()
    meta_base = {"arch": ARCH if cfg.task == "srcd" else "gpt-bytes", "config": cfg.to_dict(),
                 "code_version": code_version(), **task.provenance()}  # fmt: skip

    def checkpoint(step: int, wall: float) -> None:
        if out is None or not is_main:
            return
        meta = meta_base | {"step": step, "metrics": metrics, "wall_s": wall, "cum_lr": cum_lr,
                            "pending": {"loss": acc_loss, "attn_frac": acc_frac, "n": n_acc}}
        name = out / "checkpoints" / f"step_{step:07d}.safetensors"
        save_checkpoint(out / LAST, model, opt, meta)
        if tcfg.keep_checkpoints:
            save_checkpoint(name, model, opt, meta)

    def record(step: int, wall: float, train_stats: dict[str, float]) -> dict[str, Any]:
        m = {"step": step, **task.evaluate(model, step), **train_stats, "lr": lr_at(tcfg, max(step - 1, 0)),
             "cum_lr": cum_lr, "wall_s": wall}  # fmt: skip
        metrics.append(m)
        if out is not None and is_main:
            append_jsonl(out / "metrics.jsonl", m)
        if on_eval is not None and is_main:
            on_eval(m)
        return m

    t_start = time.perf_counter()
    if start_step == 0 and not metrics:
        model.eval()
        record(0, 0.0, {"loss": None, "train_attn_frac": None})
    evals = eval_steps(tcfg)
    bar = _Progress(end_step, start_step, enabled=progress and is_main)
    acc_loss, acc_frac = float(pending.get("loss", 0.0)), float(pending.get("attn_frac", 0.0))
    n_acc = int(pending.get("n", 0))
    stopped_early = False
    stepped = False
    try:
        for step in range(start_step, end_step):
            model.train()
            lr = lr_at(tcfg, step)
            for g in opt.param_groups:
                g["lr"] = 0.0 if (g["name"] == "router" and task.router_frozen(step)) else lr
            gen = _step_generator(tcfg.seed, step, rank)
            with autocast:
                fout, attn_frac = task.forward(model, step, gen)
            loss = fout.loss
            if not torch.isfinite(loss).all():
                raise TrainingDiverged(
                    f"training stopped: the loss became {float(loss.detach())} at step {step + 1}"
                    f"{_last_good(out)} {_DIVERGED_HINT}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world_size > 1:
                _allreduce_grads(params, world_size)
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            opt.step()
            stepped = True
            cum_lr += lr
            loss_val = float(loss.detach())
            if world_size > 1:  # log the global batch's mean, not rank 0's share
                import torch.distributed as dist

                stats = torch.tensor([loss_val, attn_frac], dtype=torch.float64, device=device)
                dist.all_reduce(stats)
                loss_val, attn_frac = (stats / world_size).tolist()
            acc_loss += loss_val
            acc_frac += attn_frac
            n_acc += 1
            s1 = step + 1
            wall = wall0 + time.perf_counter() - t_start
            if s1 in evals:
                m = record(s1, wall, {"loss": acc_loss / n_acc, "train_attn_frac": acc_frac / n_acc, **task.train_parts(fout)})
                acc_loss = acc_frac = 0.0
                n_acc = 0
                bar.update(s1, m, loss_val)
            else:
                bar.update(s1, None, loss_val)
            if s1 % tcfg.ckpt_every == 0 or s1 == end_step:
                checkpoint(s1, wall)
        stopped_early = end_step < tcfg.steps
    except CramError as exc:
        # Once this process has taken an optimizer step, an op's input check failing inside the
        # model (training or evaluation forward) means the weights blew up before a loss existed.
        if not stepped or isinstance(exc, TrainingDiverged):
            raise
        raise TrainingDiverged(
            f"training stopped: non-finite values inside the model after step {step + 1} ({exc})"
            f"{_last_good(out)} {_DIVERGED_HINT}"
        ) from None
    finally:
        bar.close()
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    summary = summarize_run(metrics)
    if out is not None and is_main and not stopped_early:
        atomic_write_json(out / "summary.json", summary)
    return TrainResult(out, metrics, summary, stopped_early, end_step, cfg)


def _jsonl(m: dict) -> str:
    import json

    return json.dumps(m, allow_nan=False) + "\n"


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _SRCDTask:
    def __init__(self, cfg: C.RunConfig, device: torch.device, rank: int, world_size: int):
        self.cfg, self.device, self.rank, self.ws = cfg, device, rank, world_size
        self.scfg = cfg.srcd_config()
        self.world = train_world(self.scfg, cfg.srcd.world_seed)
        self.static = cfg.router.name == "learned-static"
        self.static_steps = int(round(cfg.router.static_frac * cfg.train.steps))
        self.router_world = router_pool_world(self.scfg, self.world) if self.static else None
        self.probe = probe_seeds("iid", cfg.train.eval_sequences)

    def provenance(self) -> dict[str, Any]:
        return {"srcd": self.scfg.to_dict(), "world_seed": self.cfg.srcd.world_seed}

    def router_frozen(self, step: int) -> bool:
        return self.static and step >= self.static_steps

    def forward(self, model: CramModel, step: int, gen: torch.Generator):
        world = self.router_world if (self.static and step < self.static_steps) else self.world
        tb = train_batch(self.scfg, world, step, self.cfg.train.batch_size, rank=self.rank,
                         world_size=self.ws, device=self.device)  # fmt: skip
        explore = None
        if self.cfg.router.explore > 0:
            explore = (torch.rand(tb.tokens.shape, generator=gen) < self.cfg.router.explore).to(self.device)
        t = self.cfg.train
        out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, explore=explore, generator=gen,
                    weights={"epi": t.epi_weight, "sem": t.sem_weight, "distill": t.distill_weight})  # fmt: skip
        frac = sum(float(tr.route.float().mean()) for tr in out.traces) / max(1, len(out.traces))
        return out, frac

    def train_parts(self, fout) -> dict[str, float]:
        return {f"loss_{k}": v for k, v in fout.parts.items() if k != "total"}

    def evaluate(self, model: CramModel, step: int) -> dict[str, Any]:
        res = evaluate(model, self.scfg, self.world, self.probe, device=self.device)
        t = self.cfg.train
        return {"exposures": step * t.batch_size * self.scfg.m_r / self.scfg.P, **res.metrics}


class _TextTask:
    def __init__(self, cfg: C.RunConfig, device: torch.device, rank: int, world_size: int):
        self.cfg, self.device, self.rank, self.ws = cfg, device, rank, world_size
        self.train_data, self.val_data = load_text(cfg.text.data, cfg.text.val_frac, cfg.text.seq_len)

    def provenance(self) -> dict[str, Any]:
        return {"text_data": str(self.cfg.text.data), "text_bytes": int(len(self.train_data) + len(self.val_data))}

    def router_frozen(self, step: int) -> bool:
        return False

    def forward(self, model: CramModel, step: int, gen: torch.Generator):
        per = self.cfg.train.batch_size // self.ws
        x, y = text_batch(self.train_data, self.cfg.text.seq_len, per, gen)
        out = model(x.to(self.device), y.to(self.device))
        return out, 1.0

    def train_parts(self, fout) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def evaluate(self, model: CramModel, step: int) -> dict[str, Any]:
        was = model.training
        model.eval()
        gen = torch.Generator().manual_seed(4242)
        tot = 0.0
        for _ in range(self.cfg.text.eval_batches):
            x, y = text_batch(self.val_data, self.cfg.text.seq_len, self.cfg.train.batch_size, gen)
            tot += float(model(x.to(self.device), y.to(self.device)).loss)
        model.train(was)
        val = tot / self.cfg.text.eval_batches
        return {"val_loss": val, "bpb": val / math.log(2)}


class _Progress:
    """A rich progress bar on stderr with live loss, accuracy and rho (off when not a TTY)."""

    def __init__(self, total: int, start: int, *, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.p = None
        self.last = ""
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False,
        )  # fmt: skip
        self.p.start()
        self.task = self.p.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, m: dict | None, loss: float | None = None) -> None:
        if self.p is None:
            return
        if m is not None:
            if "acc" in m:
                self.last = (f"acc_r {m['acc_r'] or 0:.3f}  acc_e {m['acc_e'] or 0:.3f}  acc {m['acc'] or 0:.3f}  "
                             f"rho_q {m['rho_q'] or 0:.3f}  rho_all {m['rho_all'] or 0:.3f}")  # fmt: skip
            else:
                self.last = f"val {m['val_loss']:.3f}  bpb {m['bpb']:.3f}"
        info = (f"loss {loss:.3f}  " if loss is not None else "") + self.last
        self.p.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()

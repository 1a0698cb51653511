"""The trainer: one optimizer step (:meth:`_Trainer.step`), evaluation, logging and checkpoints
inside the training loop (:meth:`_Trainer.loop`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from cramkit.errors import CramError, NonFiniteValues, OSFault
from cramkit.gpu.run import config as C
from cramkit.gpu.run.build import check_vocab_matches, model_for_task, model_meta
from cramkit.gpu.run.checkpoint import (
    ARCH,
    TEXT_ARCH,
    code_version,
    load_model_state,
    load_optimizer,
    restore_rng,
)
from cramkit.gpu.run.distributed import allreduce_grads
from cramkit.gpu.run.resume import RunState
from cramkit.gpu.run.runfolder import RunFolder
from cramkit.gpu.run.schedule import (
    is_eval_step,
    log_eval_steps,
    lr_at,
    make_optimizer,
    step_generator,
)
from cramkit.gpu.tasks import Task, TaskBatch
from cramkit.gpu.tasks.recall import batch_class_sums, class_means, route_per_position
from cramkit.progress import Progress, report_to


def _divergence_advice(folder: RunFolder | None, tcfg: C.TrainConfig) -> str:
    """Where a diverged run stands and a command that continues it with half the learning rate
    (from the last good checkpoint; before any checkpoint, the resume starts the run again from
    step 0). Without a run folder: what to change."""
    lr = tcfg.lr / 2
    if folder is None:
        return f"; lower train.lr (e.g. --set train.lr={lr!r})"
    good = folder.last_good_checkpoint()
    if good is None:
        return (f"; no checkpoint was saved yet: start it again with a lower learning rate: "
                f"{folder.resume_hint({'train.lr': lr})}")  # fmt: skip
    return f"; the last good checkpoint is {good}; lower the learning rate: {folder.resume_hint({'train.lr': lr})}"


def is_val_jump(earlier: list[float], value: float, factor: float) -> bool:
    """The jump guard: whether validation loss ``value`` exceeds ``factor`` times the best (lowest)
    of the ``earlier`` ones (False when there are none)."""
    return bool(earlier) and value > factor * min(earlier)


class TrainingDiverged(CramError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False



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
        self.clip_groups = self._clip_groups()
        self.metrics = state.metrics
        self.cum_lr = state.cum_lr
        p = state.pending
        self.acc_loss, self.acc_frac, self.n_acc = float(p.get("loss", 0.0)), float(p.get("attn_frac", 0.0)), int(p.get("n", 0))
        # text and token files: loss and attention use on recall hits and the rest, every batch
        self.by_class = bool(getattr(task, "recall_classes", False))
        self.acc_class = [float(v) for v in p.get("classes", [0.0] * 6)]
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
        meta = self.meta_base | {"run_id": self.folder.run_id, "step": step, "metrics": self.metrics, "wall_s": wall,
                                 "cum_lr": self.cum_lr,
                                 "pending": {"loss": self.acc_loss, "attn_frac": self.acc_frac, "n": self.n_acc,
                                             "classes": self.acc_class}}  # fmt: skip
        self.folder.save_checkpoint(step, self.model, self.opt, meta, keep=self.tcfg.keep_checkpoints)

    def record(self, step: int, wall: float, train_stats: dict[str, Any]) -> dict[str, Any]:
        m = {"step": step, **self.task.evaluate(self.model, step=step), **train_stats,
             "lr": lr_at(self.tcfg, max(step - 1, 0)), "cum_lr": self.cum_lr, "wall_s": wall}  # fmt: skip
        if m.get("val_loss") is not None:
            earlier = [r["val_loss"] for r in self.metrics if r.get("val_loss") is not None]
            m["val_jump"] = is_val_jump(earlier, m["val_loss"], self.tcfg.jump_factor)
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
        if self.by_class:
            stats.update(class_means(self.acc_class, bool(self.model.cram_layers)))
        probes = [tr.probe for tr in (fout.traces if fout is not None else []) if tr.probe is not None]
        if probes:  # router.target = "gain": the positions where attention ran for the label only (this step)
            stats["train_probe_frac"] = sum(float(p.float().mean()) for p in probes) / len(probes)
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

    def _clip_groups(self) -> list[list[torch.nn.Parameter]]:
        """The parameter groups whose gradients are clipped each on its own norm: the CRAM layers'
        own modules apart from the rest when ``train.clip_apart`` and their losses are isolated
        (router.aux_grad != "shared"), else all parameters together."""
        if not (self.tcfg.clip_apart and self.model.cram_layers and self.model.rcfg.aux_grad != "shared"):
            return [self.params]
        own = {id(p) for p in self.model.own_parameters()}
        return [[p for p in self.params if id(p) in own], [p for p in self.params if id(p) not in own]]

    def step(self, step: int) -> tuple[float | None, Any]:
        """One optimizer step; returns the (global) training loss, None for a batch without targets."""
        self.model.train()
        lr = lr_at(self.tcfg, step)
        # learned-static freezes its router after its phase; router.open_steps holds it before training
        held = (self.static and step >= self.static_steps) or step < self.cfg.router.open_steps
        for g in self.opt.param_groups:
            g["lr"] = 0.0 if (g["name"] == "router" and held) else lr
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
            for group in self.clip_groups:
                torch.nn.utils.clip_grad_norm_(group, self.tcfg.grad_clip)
        self.opt.step()
        self.cum_lr += lr
        loss_val = float(loss.detach()) if has_targets else 0.0
        n = 1.0 if has_targets else 0.0
        sums = batch_class_sums(tb.tokens, tb.targets, fout.logits, route_per_position(fout.traces),
                                fout.parts["task"]) if self.by_class and has_targets else None  # fmt: skip
        if self.ws > 1:  # log the global batch's mean, not rank 0's share
            import torch.distributed as dist

            stats = torch.tensor([loss_val, frac, n], dtype=torch.float64, device=self.device)
            dist.all_reduce(stats)
            loss_val, frac, n = stats[0].item() / max(stats[2].item(), 1.0), stats[1].item() / self.ws, stats[2].item()
            if self.by_class:  # every rank takes part, with zeros for a batch without targets
                sums = sums if sums is not None else torch.zeros(6, dtype=torch.float64, device=self.device)
                dist.all_reduce(sums)
        if n:
            self.acc_loss += loss_val
            self.acc_frac += frac
            self.n_acc += 1
        if sums is not None:
            self.acc_class = [a + b for a, b in zip(self.acc_class, sums.tolist())]
        return (loss_val if n else None), fout

    # --- the loop -----------------------------------------------------------------------------
    def loop(self, end_step: int, progress: Progress) -> None:
        t_start = time.perf_counter()
        st = self.state
        log_steps = log_eval_steps(self.tcfg)
        tick = progress if self.is_main else report_to(None)
        stepped = False
        step = done = st.start_step
        try:
            if st.start_step == 0 and not self.metrics:
                self.model.eval()
                self.record(0, 0.0, {"loss": None, "train_attn_frac": None})
            tick("train", st.start_step, end_step)
            for step in range(st.start_step, end_step):
                _, fout = self.step(step)
                stepped = True
                s1 = done = step + 1
                wall = st.wall0 + time.perf_counter() - t_start
                if is_eval_step(self.tcfg, s1, log_steps):
                    self.record(s1, wall, self.train_stats(fout))
                    self.acc_loss = self.acc_frac = 0.0
                    self.n_acc, self.acc_class = 0, [0.0] * 6
                tick("train", s1, end_step)
                if s1 % self.tcfg.ckpt_every == 0 or s1 == end_step:
                    self.checkpoint(s1, wall)
        except KeyboardInterrupt:
            if self.folder is None:
                raise
            raise self.folder.interrupted(done) from None
        except OSFault as exc:
            # a full disk or an unwritable folder while logging or saving: the weights are fine
            if self.folder is None:
                raise
            raise OSFault(f"{exc}; {self.folder.fault_hint(exc.errno)}", exc.errno) from None
        except NonFiniteValues as exc:
            # Once this process has taken an optimizer step, NaN reaching an op inside the model
            # (training or evaluation forward) means the weights blew up before a loss existed.
            # Any other CramError (bad data, a corrupt file) keeps its own message.
            if not stepped:
                raise
            raise TrainingDiverged(
                f"training stopped: non-finite values inside the model after step {step + 1} ({exc})"
                f"{_divergence_advice(self.folder, self.tcfg)}"
            ) from None

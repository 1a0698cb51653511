"""The training schedule: the learning rate at a step, the steps that evaluate, the optimizer and
its parameter groups, and the per-step generator that makes a run's randomness a function of
(seed, step, rank).
"""

from __future__ import annotations

import math

import torch

from cramkit.gpu.model.network import CramModel
from cramkit.gpu.run import config as C


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

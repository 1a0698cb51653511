"""Build a model from a model config plus a vocabulary, and load weights into it, with one clear
line for every mistake (docs/tasks.md).

    model = build_model(ModelConfig(pattern="SA", d_model=64), RouterConfig(name="cram"), vocab_size=512)
    model = build_model(run_cfg)                       # convenience: sizes from the run's task
    model = model_for_task(run_cfg.model, run_cfg.router, task)

``router.budget`` < 0 means the task's default budget (SRCD: m_e / n_q); ``n_targets`` is the
number of target (query) positions per sequence, the unit of the learned-static router's capacity.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cramkit.errors import CramError
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.network import CramModel
from cramkit.gpu.run.config import RunConfig

#: checkpoint metadata keys that describe the model's task-given sizes
VOCAB_KEY, BUDGET_KEY, N_Q_KEY = "vocab_size", "budget", "n_q"


def resolve_budget(router_cfg: RouterConfig, default_budget: float) -> float:
    """``router.budget``, or ``default_budget`` when it is negative (the default)."""
    return float(router_cfg.budget) if router_cfg.budget >= 0 else float(default_budget)


def check_model_args(model_cfg: ModelConfig, router_cfg: RouterConfig, vocab_size: Any, target_range: Any,
                     n_targets: Any, budget: float) -> None:  # fmt: skip
    """The checks of :func:`build_model`, each failure one line naming the setting."""
    if not isinstance(model_cfg, ModelConfig):
        raise CramError(f"build_model needs a ModelConfig, got {type(model_cfg).__name__}")
    if not isinstance(router_cfg, RouterConfig):
        raise CramError(f"build_model needs a RouterConfig, got {type(router_cfg).__name__}")
    model_cfg.validate("model")
    router_cfg.validate("router")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise CramError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    if target_range is not None:
        lo, hi = target_range
        if not (0 <= lo < hi <= vocab_size):
            raise CramError(f"target_range {tuple(target_range)} must satisfy 0 <= lo < hi <= vocab_size ({vocab_size})")
    if isinstance(n_targets, bool) or not isinstance(n_targets, int) or n_targets < 1:
        raise CramError(f"n_targets (target positions per sequence) must be an integer >= 1, got {n_targets!r}")
    if not (math.isfinite(budget) and 0 <= budget <= 1):
        raise CramError(f"router.budget must be in [0, 1], got {budget}")
    if router_cfg.name == "learned-static" and budget > 0 and round(budget * n_targets) == 0:
        raise CramError(f"router.budget {budget} x {n_targets} target position(s) per sequence rounds to 0: "
                        f"the learned-static router would attend nothing; raise router.budget")  # fmt: skip


def build_model(
    model_cfg: ModelConfig | RunConfig,
    router_cfg: RouterConfig | None = None,
    vocab_size: int | None = None,
    *,
    target_range: tuple[int, int] | None = None,
    n_targets: int = 1,
    default_budget: float = 1.0,
) -> CramModel:
    """A validated :class:`CramModel` of ``vocab_size`` tokens.

    ``target_range`` restricts the logits to token ids [lo, hi) (SRCD: the value tokens);
    ``n_targets`` is the number of target positions per sequence; ``default_budget`` is what a
    negative ``router.budget`` means. ``build_model(run_cfg)`` (a :class:`RunConfig` alone) takes
    all of these from the run's task.
    """
    if isinstance(model_cfg, RunConfig):
        if router_cfg is not None:
            raise CramError("build_model(run_cfg) takes the router from the run config; give no router_cfg")
        return build_run_model(model_cfg, vocab_size)
    if router_cfg is None:
        router_cfg = RouterConfig()
    budget = resolve_budget(router_cfg, default_budget)
    check_model_args(model_cfg, router_cfg, vocab_size, target_range, n_targets, budget)
    return CramModel(model_cfg, router_cfg, vocab_size, target_range=target_range, budget=budget, n_q=n_targets)


def model_for_task(model_cfg: ModelConfig, router_cfg: RouterConfig, task: Any) -> CramModel:
    """The model for a :class:`cramkit.gpu.tasks.Task` (its vocabulary, target range, targets
    per sequence and default budget)."""
    return build_model(model_cfg, router_cfg, task.vocab_size, target_range=getattr(task, "target_range", None),
                       n_targets=int(getattr(task, "n_targets", 1)),
                       default_budget=float(getattr(task, "default_budget", 1.0)))  # fmt: skip


def run_model_sizes(cfg: RunConfig, vocab_size: int | None = None) -> dict[str, Any]:
    """Vocabulary, target range, targets per sequence and default budget of a run's task, without
    loading its data (a tokens run needs ``vocab_size``: from the checkpoint or its config)."""
    if cfg.task == "srcd":
        s = cfg.srcd
        return {"vocab_size": s.vocab_size, "target_range": (s.value_offset, s.value_offset + s.v),
                "n_targets": s.n_q, "default_budget": s.m_e / s.n_q}  # fmt: skip
    if cfg.task == "text":
        return {"vocab_size": int(vocab_size or 256), "target_range": None, "n_targets": cfg.text.seq_len,
                "default_budget": 1.0}  # a subword run's vocabulary comes from its checkpoint
    vocab = vocab_size or cfg.tokens.vocab_size
    if not vocab:
        raise CramError("a tokens model needs its vocabulary: set tokens.vocab_size or build it from the task")
    return {"vocab_size": int(vocab), "target_range": None, "n_targets": 1, "default_budget": 1.0}


def build_run_model(cfg: RunConfig, vocab_size: int | None = None, n_targets: int | None = None) -> CramModel:
    """The model of a run config (``build_model(run_cfg)``)."""
    sizes = run_model_sizes(cfg, vocab_size)
    if n_targets is not None:
        sizes["n_targets"] = n_targets
    return build_model(cfg.model, cfg.router, **sizes)


def model_meta(model: CramModel) -> dict[str, Any]:
    """What a checkpoint records about the model's task-given sizes."""
    return {VOCAB_KEY: int(model.vocab_size), BUDGET_KEY: float(model.budget), N_Q_KEY: int(model.n_q)}


def checkpoint_vocab(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> int | None:
    """The vocabulary a checkpoint was trained with (metadata, else the embedding's rows)."""
    v = meta.get(VOCAB_KEY)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    emb = tensors.get("model/embed.weight")
    return int(emb.shape[0]) if emb is not None and emb.dim() == 2 else None


def check_vocab_matches(model: CramModel, tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Any) -> None:
    """Weights of another vocabulary: one line naming the cause."""
    v = checkpoint_vocab(tensors, meta)
    if v is not None and v != model.vocab_size:
        raise CramError(f"checkpoint {path}: checkpoint vocabulary {v} != model vocabulary {model.vocab_size}")


def load_weights(model: CramModel, path: Any) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (vocabulary checked first); returns its metadata."""
    from cramkit.gpu.run.checkpoint import load_model_state, read_checkpoint

    tensors, meta = read_checkpoint(path)
    check_vocab_matches(model, tensors, meta, path)
    load_model_state(model, tensors, meta, path)
    return meta

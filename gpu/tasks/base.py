"""The task protocol: what ``train()`` and ``evaluate`` need from a task (docs/tasks.md).

A task gives batches of token sequences with their targets and measures a model on its own
evaluation data. SRCD (:mod:`.srcd`), byte-level text (:mod:`.text`) and token files
(:mod:`.tokens`) implement it; any object with these attributes and methods works::

    class Task(Protocol):
        name: str                                  # "srcd", "text", "tokens", or your own
        vocab_size: int                            # token ids are in [0, vocab_size)
        target_range: tuple[int, int] | None       # logits restricted to [lo, hi) (None: all)
        n_targets: int                             # target positions per sequence (the budget's unit)
        default_budget: float                      # router.budget < 0 means this

        def batch(self, step, batch_size, *, generator, rank=0, world_size=1) -> TaskBatch: ...
        def evaluate(self, model, *, step=0) -> dict[str, Any]: ...

Optional (:class:`BaseTask` supplies the defaults): ``router_batch`` (the batch a learned-static
router trains on during its own phase; default: ``batch``), ``provenance()`` (metadata written
into checkpoints), ``progress_info(metrics)`` (a short text for the progress bar),
``recall_classes`` (True: the trainer logs loss and attention use on recall tokens and the rest at
every batch, ``train_*`` in metrics.jsonl; default False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from cramkit.errors import CramError

IGNORE = -1  # the ignore index of ``targets``


@dataclass
class TaskBatch:
    """One batch: ``tokens`` (B, T) int64; ``targets`` (B, T) int64 with :data:`IGNORE` (-1)
    where a position has no target; ``query_mask`` (B, T) bool where the task marks query slots
    (only the oracle-pos and learned-static ``queries`` routers read it); ``labels`` (B, T) int64
    per-position labels for a breakdown of the metrics (never seen by the model)."""

    tokens: torch.Tensor
    targets: torch.Tensor
    query_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TaskBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TaskBatch(move(self.tokens), move(self.targets), move(self.query_mask), move(self.labels))

    @property
    def n_targets(self) -> int:
        return int((self.targets >= 0).sum())


@runtime_checkable
class Task(Protocol):
    name: str
    vocab_size: int
    target_range: tuple[int, int] | None
    n_targets: int
    default_budget: float

    def batch(self, step: int, batch_size: int, *, generator: torch.Generator, rank: int = 0,
              world_size: int = 1) -> TaskBatch: ...  # fmt: skip

    def evaluate(self, model: Any, *, step: int = 0) -> dict[str, Any]: ...


class BaseTask:
    """Defaults for the optional parts of the protocol."""

    name = "task"
    target_range: tuple[int, int] | None = None
    n_targets = 1
    default_budget = 1.0
    device: torch.device | str = "cpu"
    recall_classes = False  # per training batch: loss and attention on recall tokens and the rest

    def router_batch(self, step: int, batch_size: int, *, generator: torch.Generator, rank: int = 0,
                     world_size: int = 1) -> TaskBatch:  # fmt: skip
        return self.batch(step, batch_size, generator=generator, rank=rank, world_size=world_size)  # type: ignore[attr-defined]

    def provenance(self) -> dict[str, Any]:
        return {}

    def progress_info(self, metrics: dict[str, Any]) -> str:
        return " ".join(f"{k} {metrics[k]:.3f}" for k in ("acc", "rho_all", "bpb") if isinstance(metrics.get(k), float))


def check_task(task: Any) -> None:
    """One clear line when ``task`` lacks a part of the protocol."""
    missing = [a for a in ("name", "vocab_size", "batch", "evaluate") if not hasattr(task, a)]
    if missing:
        raise CramError(f"{type(task).__name__} is not a task: it has no {', '.join(missing)} (see docs/tasks.md)")
    if not isinstance(task.vocab_size, int) or task.vocab_size < 1:
        raise CramError(f"task {task.name!r}: vocab_size must be an integer >= 1, got {task.vocab_size!r}")


def check_token_range(tokens: torch.Tensor, vocab_size: int, where: str) -> None:
    """One clear line when a token id is negative or >= the vocabulary (checked once, on load)."""
    if tokens.numel() == 0:
        return
    hi, lo = int(tokens.max()), int(tokens.min())
    if hi >= vocab_size:
        raise CramError(f"{where}: token id {hi} >= vocabulary size {vocab_size}")
    if lo < 0:
        raise CramError(f"{where}: token id {lo} is negative")


@torch.no_grad()
def attention_use(traces: list, mask: torch.Tensor | None = None) -> float | None:
    """Mean routed fraction over CRAM layers (over ``mask`` positions when given); None without
    CRAM layers or masked positions."""
    if not traces:
        return None
    if mask is not None and not bool(mask.any()):
        return None
    vals = [float((tr.route[mask] if mask is not None else tr.route).float().mean()) for tr in traces]
    return sum(vals) / len(vals)

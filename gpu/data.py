"""Compatibility names: the SRCD and text data helpers now live in :mod:`cramkit.gpu.tasks`."""

from __future__ import annotations

from cramkit.gpu.tasks.srcd import (  # noqa: F401
    CONFLICT_SEED,
    FRESH_SEED,
    ROUTER_POOL_SEED,
    TRANSFER_SEED,
    TensorBatch,
    probe_seeds,
    router_pool_world,
    to_tensors,
    train_batch,
    train_world,
)
from cramkit.gpu.tasks.text import load_text, text_batch  # noqa: F401

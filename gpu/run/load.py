"""Loading a checkpoint for use: :func:`load_checkpoint` rebuilds the model of a checkpoint file or
run folder (architecture from the checkpoint), one clear :class:`CramError` for anything wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cramkit import runs as R
from cramkit.errors import CramError
from cramkit.gpu.model.network import CramModel
from cramkit.gpu.run import config as C
from cramkit.gpu.run.build import (
    BUDGET_KEY,
    N_Q_KEY,
    VOCAB_KEY,
    build_run_model,
    check_vocab_matches,
)
from cramkit.gpu.run.checkpoint import ARCHES, load_model_state, read_checkpoint


@dataclass
class LoadedCheckpoint:
    path: Path
    model: CramModel
    cfg: C.RunConfig
    meta: dict[str, Any]


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint file or run folder; one clear :class:`CramError` for anything wrong."""
    tensors, meta = read_checkpoint(path)
    if meta.get("arch") not in ARCHES:
        raise CramError(f"{path} is a checkpoint of architecture {meta.get('arch')!r}, not a cram model")
    try:
        cfg = C.from_record(meta["config"])
    except (KeyError, TypeError):
        raise CramError(f"checkpoint {path} has no valid config in its metadata") from None
    model = checkpoint_model(cfg, tensors, meta)
    check_vocab_matches(model, tensors, meta, path)
    load_model_state(model, tensors, meta, path)
    model.to(device).eval()
    p = Path(path)
    return LoadedCheckpoint(R.last_checkpoint(p) if p.is_dir() else p, model, cfg, meta)


def _meta_int(meta: dict[str, Any], key: str) -> int | None:
    v = meta.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def checkpoint_model(cfg: C.RunConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> CramModel:
    """The (untrained) model a checkpoint's weights belong to: the run config's architecture with
    the vocabulary, target range, query count and budget the checkpoint recorded (older
    checkpoints: the ones the config implies)."""
    from cramkit.gpu.run.build import build_model, checkpoint_vocab

    vocab, n_q, budget = _meta_int(meta, VOCAB_KEY), _meta_int(meta, N_Q_KEY), meta.get(BUDGET_KEY)
    if vocab is None or n_q is None or not isinstance(budget, (int, float)) or isinstance(budget, bool):
        if cfg.task == "tokens" and vocab is None:
            vocab = checkpoint_vocab(tensors, meta)
        return build_run_model(cfg, vocab, n_q)
    tr = meta.get("target_range")
    if tr is not None and not (isinstance(tr, list) and len(tr) == 2 and all(isinstance(v, int) for v in tr)):
        raise CramError("checkpoint has corrupt model metadata (target_range)")
    return build_model(cfg.model, cfg.router, vocab, target_range=tuple(tr) if tr else None, n_targets=n_q,
                       default_budget=float(budget))  # fmt: skip

"""Byte-level language modelling (``task = "text"``): every position is a target.

Training batches are random windows of the file's first (1 - val_frac) bytes, drawn with the
step's generator; evaluation is the mean task loss (and bits per byte) on ``eval_batches`` fixed
windows of the validation tail. With CRAM (``A``) layers the evaluation also reports the routed
fraction of positions (``rho_all``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cramkit.gpu.tasks.base import BaseTask, TaskBatch, attention_use

from cramkit.errors import CramError

VOCAB = 256


def load_text(path: str | Path, val_frac: float, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of a text file split into (train, validation) int64 tensors (validation = the tail)."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise CramError(f"text data file {str(path)!r} does not exist (give --data FILE)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CramError(f"cannot read the text file {path}: {exc.strerror}") from None
    data = np.frombuffer(raw, dtype=np.uint8)
    n_val = int(len(data) * val_frac)
    if len(data) - n_val < seq_len + 2 or n_val < seq_len + 2:
        raise CramError(
            f"text file {path} has {len(data)} bytes: too short for seq_len {seq_len} with a "
            f"{val_frac:.0%} validation tail"
        )
    t = torch.from_numpy(data.astype(np.int64))
    return t[: len(data) - n_val], t[len(data) - n_val :]


def text_batch(
    data: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: tokens (B, T) and next-byte targets (B, T)."""
    starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
    offs = starts[:, None] + torch.arange(seq_len + 1)
    win = data[offs]
    return win[:, :-1], win[:, 1:]


class TextTask(BaseTask):
    name = "text"
    vocab_size = VOCAB
    target_range = None
    default_budget = 1.0

    def __init__(self, data: str | Path, *, seq_len: int = 128, val_frac: float = 0.05, eval_batches: int = 8,
                 eval_batch_size: int = 32, device: torch.device | str = "cpu"):  # fmt: skip
        self.data, self.seq_len, self.eval_batches = str(data), seq_len, eval_batches
        self.eval_batch_size, self.device = eval_batch_size, device
        self.n_targets = seq_len
        self.train_data, self.val_data = load_text(data, val_frac, seq_len)

    @classmethod
    def from_config(cls, cfg, *, device: torch.device | str = "cpu") -> TextTask:
        t = cfg.text
        return cls(t.data, seq_len=t.seq_len, val_frac=t.val_frac, eval_batches=t.eval_batches,
                   eval_batch_size=cfg.train.batch_size, device=device)  # fmt: skip

    def provenance(self) -> dict[str, Any]:
        return {"text_data": self.data, "text_bytes": int(len(self.train_data) + len(self.val_data))}

    def batch(self, step: int, batch_size: int, *, generator: torch.Generator, rank: int = 0,
              world_size: int = 1) -> TaskBatch:  # fmt: skip
        x, y = text_batch(self.train_data, self.seq_len, batch_size // world_size, generator)
        return TaskBatch(x.to(self.device), y.to(self.device))

    @torch.no_grad()
    def evaluate(self, model, *, step: int = 0) -> dict[str, Any]:
        was = model.training
        model.eval()
        gen = torch.Generator().manual_seed(4242)
        router_gen = torch.Generator().manual_seed(12345)  # random routers draw from this one
        tot, rho = 0.0, []
        for _ in range(self.eval_batches):
            x, y = text_batch(self.val_data, self.seq_len, self.eval_batch_size, gen)
            out = model(x.to(self.device), y.to(self.device), generator=router_gen)
            tot += float(out.parts.get("task", out.loss))
            r = attention_use(out.traces)
            if r is not None:
                rho.append(r)
        model.train(was)
        val = tot / self.eval_batches
        m: dict[str, Any] = {"val_loss": val, "bpb": val / math.log(2)}
        if rho:
            m["rho_all"] = sum(rho) / len(rho)
        return m

    def progress_info(self, m: dict[str, Any]) -> str:
        return f"val {m['val_loss']:.3f}  bpb {m['bpb']:.3f}"

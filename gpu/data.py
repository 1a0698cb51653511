"""Training and evaluation batches: SRCD sequences from the one generator (``cramkit.sim.srcd``) as tensors,
and byte-level text windows for ``task = "text"``.

SRCD data depends only on (config, world, seeds): training step s uses the seeds
``split_seeds("train", B, start=s·B)``, so a resumed run sees exactly the batches an uninterrupted
run would have seen, and data-parallel ranks take disjoint slices of the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cramkit.sim.srcd import Batch, SRCDConfig, World, derive_world, generate, make_world, split_seeds
from cramkit.errors import CramError

# world seeds of the derived evaluation pools, relative to the training world's seed
FRESH_SEED, TRANSFER_SEED, CONFLICT_SEED, ROUTER_POOL_SEED = 1, 2, 3, 7


@dataclass
class TensorBatch:
    """One SRCD batch as tensors plus the generator's numpy record (for scoring only)."""

    tokens: torch.Tensor  # (B, n) int64
    targets: torch.Tensor  # (B, n) int64, value token id at query slots, -1 elsewhere
    query_mask: torch.Tensor  # (B, n) bool layout of query slots
    raw: Batch


def to_tensors(cfg: SRCDConfig, batch: Batch, device: torch.device | str = "cpu") -> TensorBatch:
    tokens = torch.from_numpy(batch.tokens)
    targets = torch.full_like(tokens, -1)
    qpos = torch.from_numpy(batch.query_pos)
    targets.scatter_(1, qpos, torch.from_numpy(batch.query_target))
    qmask = torch.zeros(tokens.shape, dtype=torch.bool)
    qmask.scatter_(1, qpos, True)
    return TensorBatch(tokens.to(device), targets.to(device), qmask.to(device), batch)


def train_world(cfg: SRCDConfig, world_seed: int) -> World:
    return make_world(cfg, seed=world_seed)


def router_pool_world(cfg: SRCDConfig, world: World) -> World:
    """A pool disjoint from the training pool, for training a LEARNED-STATIC router before freezing."""
    return derive_world(world, cfg, "fresh", seed=ROUTER_POOL_SEED)


def train_batch(
    cfg: SRCDConfig,
    world: World,
    step: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> TensorBatch:
    """This rank's share of the global training batch of ``step`` (deterministic)."""
    if batch_size % world_size:
        raise CramError(f"train.batch_size ({batch_size}) must be divisible by the number of processes ({world_size})")
    per = batch_size // world_size
    seeds = split_seeds("train", per, start=step * batch_size + rank * per)
    return to_tensors(cfg, generate(cfg, world, seeds), device)


def probe_seeds(split: str, count: int) -> np.ndarray:
    """The fixed probe set of a split (the same seeds at every evaluation)."""
    return split_seeds(split, count, start=0)


# ----------------------------------------------------------------------------------------------
# byte-level text
# ----------------------------------------------------------------------------------------------


def load_text(path: str | Path, val_frac: float, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of a text file split into (train, validation) uint8 tensors (validation = the tail)."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise CramError(f"text data file {str(path)!r} does not exist (give --data FILE)")
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
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

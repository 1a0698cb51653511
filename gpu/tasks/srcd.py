"""The SRCD task: sequences from the one generator (``cramkit.sim.srcd``) as tensors.

SRCD data depends only on (config, world, seeds): training step s uses the seeds
``split_seeds("train", B, start=s·B)``, so a resumed run sees exactly the batches an uninterrupted
run would have seen, and data-parallel ranks take disjoint slices of the same global batch.
Targets are the value tokens at the query slots; the model's logits are restricted to the value
tokens (``target_range``), and the default attention budget is the floor m_e / n_q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cramkit.errors import CramError
from cramkit.gpu.tasks.base import BaseTask, TaskBatch
from cramkit.sim.srcd import (
    Batch,
    SRCDConfig,
    World,
    derive_world,
    generate,
    make_world,
    split_seeds,
)

# world seeds of the derived evaluation pools, relative to the training world's seed
FRESH_SEED, TRANSFER_SEED, CONFLICT_SEED, ROUTER_POOL_SEED = 1, 2, 3, 7


@dataclass
class TensorBatch(TaskBatch):
    """One SRCD batch as tensors plus the generator's numpy record (for scoring only)."""

    raw: Batch | None = None


def to_tensors(cfg: SRCDConfig, batch: Batch, device: torch.device | str = "cpu") -> TensorBatch:
    tokens = torch.from_numpy(batch.tokens)
    targets = torch.full_like(tokens, -1)
    qpos = torch.from_numpy(batch.query_pos)
    targets.scatter_(1, qpos, torch.from_numpy(batch.query_target))
    qmask = torch.zeros(tokens.shape, dtype=torch.bool)
    qmask.scatter_(1, qpos, True)
    return TensorBatch(tokens.to(device), targets.to(device), qmask.to(device), None, raw=batch)


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


class SRCDTask(BaseTask):
    """SRCD on one world: batches by step, evaluation on a fixed IID probe set."""

    name = "srcd"

    def __init__(self, scfg: SRCDConfig, *, world_seed: int = 0, eval_sequences: int = 512,
                 train_batch_size: int = 64, device: torch.device | str = "cpu"):  # fmt: skip
        self.scfg, self.world_seed, self.device = scfg, world_seed, device
        self.train_batch_size = train_batch_size  # for the exposures count
        self.world = train_world(scfg, world_seed)
        self._router_world: World | None = None
        self.probe = probe_seeds("iid", eval_sequences)
        self.vocab_size = scfg.vocab_size
        self.target_range = (scfg.value_offset, scfg.value_offset + scfg.v)
        self.n_targets = scfg.n_q
        self.default_budget = scfg.m_e / scfg.n_q

    @classmethod
    def from_config(cls, cfg, *, device: torch.device | str = "cpu") -> SRCDTask:
        """From a :class:`cramkit.gpu.run.config.RunConfig`."""
        return cls(cfg.srcd, world_seed=cfg.train.world_seed, eval_sequences=cfg.train.eval_sequences,
                   train_batch_size=cfg.train.batch_size, device=device)  # fmt: skip

    @property
    def router_world(self) -> World:
        if self._router_world is None:
            self._router_world = router_pool_world(self.scfg, self.world)
        return self._router_world

    def batch(self, step: int, batch_size: int, *, generator: torch.Generator | None = None, rank: int = 0,
              world_size: int = 1) -> TensorBatch:  # fmt: skip
        return train_batch(self.scfg, self.world, step, batch_size, rank=rank, world_size=world_size,
                           device=self.device)  # fmt: skip

    def router_batch(self, step: int, batch_size: int, *, generator: torch.Generator | None = None, rank: int = 0,
                     world_size: int = 1) -> TensorBatch:  # fmt: skip
        """The learned-static router's phase trains on another pool (docs/training.md)."""
        return train_batch(self.scfg, self.router_world, step, batch_size, rank=rank, world_size=world_size,
                           device=self.device)  # fmt: skip

    def provenance(self) -> dict[str, Any]:
        return {"srcd": self.scfg.to_dict(), "world_seed": self.world_seed}

    def evaluate(self, model, *, step: int = 0) -> dict[str, Any]:
        from cramkit.gpu.tasks.srcd_eval import evaluate

        res = evaluate(model, self.scfg, self.world, self.probe, device=self.device)
        exposures = step * self.train_batch_size * self.scfg.m_r / self.scfg.P
        return {"exposures": exposures, **res.metrics}

    def progress_info(self, m: dict[str, Any]) -> str:
        return (f"acc_r {m['acc_r'] or 0:.3f}  acc_e {m['acc_e'] or 0:.3f}  acc {m['acc'] or 0:.3f}  "
                f"rho_q {m['rho_q'] or 0:.3f}  rho_all {m['rho_all'] or 0:.3f}")  # fmt: skip

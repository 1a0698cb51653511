"""Data-parallel set-up for torchrun: rank and world size, the device of a rank, joining the process
group, and the one all-reduce of the gradients per step (what DDP does, without bucketing).
"""

from __future__ import annotations

import os

import torch

from cramkit.errors import CramError
from cramkit.gpu.run import config as C


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(cfg: C.TrainConfig, rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CramError("train.device = 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(tcfg: C.TrainConfig, rank: int, world_size: int) -> bool:
    """Join the process group when launched by torchrun; True when this call created it."""
    if tcfg.batch_size % world_size:
        raise CramError(f"train.batch_size ({tcfg.batch_size}) must be divisible by the number of processes ({world_size})")
    if world_size == 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if pick_device(tcfg, rank).type == "cuda" else "gloo")
    return True


def allreduce_grads(params: list[torch.nn.Parameter], world_size: int) -> None:
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

"""Memory estimates before allocating, so sizes that cannot fit are one clear refusal instead of a
raw allocator error or a MemoryError deep inside torch.

- :func:`available_bytes` -- memory free for a new allocation: on the CPU the smaller of
  ``MemAvailable`` in /proc/meminfo (fallback ``os.sysconf``) and the cgroup v2 limit minus usage;
  on CUDA ``torch.cuda.mem_get_info``.
- :func:`check_fits` -- refuse (CramError, one line) ``nbytes`` that exceed what is available.
- :func:`model_param_count` / :func:`training_bytes` -- the estimate for a model config.

The training estimate is deliberately a **lower bound** of what training needs, so a refusal is
never wrong (a run that passes may still run out later; the CLI then reports that in one line):

    params      = exact count of the cram model's parameters for the config (see model_param_count)
    state       = 4 bytes x params x (1 weights + 1 gradients + 2 AdamW moments)      [fp32]
    activations = 4 bytes x batch x seq_len x d_model x n_layers                     [one saved
                  tensor per layer; real training keeps several]
    logits      = 4 bytes x batch x logit_rows x logit_width                         [the head's
                  output: rows = positions with a target (default seq_len), width = the scored
                  vocabulary (default vocab)]
    training_bytes = state + activations + logits

(The real peak is higher: every block keeps its norms, projections and MLP hidden activations and
attention keeps scores; those terms are left out so the bound stays a bound for every router.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cramkit.errors import CramError

FLOAT_BYTES = 4


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_bytes(device: Any = "cpu") -> int:
    """Bytes free for a new allocation on ``device`` ("cpu", "cuda", "cuda:1" or a torch.device)."""
    dev = str(device)
    if dev.startswith("cuda"):
        import torch

        index = int(dev.split(":")[1]) if ":" in dev else torch.cuda.current_device()
        return int(torch.cuda.mem_get_info(index)[0])
    found = [x for x in (_meminfo_available(), _cgroup_available()) if x is not None]
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            return 1 << 62
    return min(found)


def check_fits(nbytes: float, what: str, device: Any = "cpu") -> None:
    """Refuse with one CramError line when ``nbytes`` exceed the memory available on ``device``.

    ``what`` names the allocation, e.g. ``"training this model (d_model=4096, batch 64)"``.
    """
    avail = available_bytes(device)
    if nbytes > avail:
        place = "GPU memory" if str(device).startswith("cuda") else "memory"
        raise CramError(
            f"{what} needs at least {format_bytes(nbytes)} but only {format_bytes(avail)} of {place} is "
            "available; use a smaller model, batch or sequence length"
        )


def tensor_bytes(*shape: int, dtype_bytes: int = FLOAT_BYTES) -> int:
    """Bytes of a dense tensor of ``shape`` (Python ints: no overflow)."""
    n = dtype_bytes
    for s in shape:
        n *= int(s)
    return n


def _linear(d_in: int, d_out: int, bias: bool = True) -> int:
    return d_in * d_out + (d_out if bias else 0)


def model_param_count(model_cfg: Any, vocab: int) -> int:
    """Parameters of a cram model (``cramkit.gpu.model.CramModel``) for a ModelConfig-like object
    (``pattern``, ``d_model``, ``mlp_mult``, ``ssm_heads``, ``ssm_head_dim``, ``d_state``,
    ``conv_width``, ``memory_hidden``, ``router_hidden``, ``max_len``, ``tie_embeddings``).

    Per block: two RMSNorms and an MLP d -> mlp_mult*d -> d, plus its mixer --
    S (SSM): in_proj d -> 2hp + 2hn + h, depthwise conv over hp + 2hn channels, 3h scalars, a norm
    and out_proj hp -> d; A (CRAM attention): q, k, v (bias) and k_prev, o (no bias) d x d, the
    memory MLP d -> memory_hidden -> d, the router and two norms; G (dense attention): qkv and proj.
    """
    g = lambda k, default=0: int(getattr(model_cfg, k, default))  # noqa: E731
    d, m = g("d_model"), g("mlp_mult", 2)
    h, p, n, w = g("ssm_heads", 1), g("ssm_head_dim", 1), g("d_state", 1), g("conv_width", 4)
    hm, r = g("memory_hidden"), g("router_hidden")
    total = vocab * d + g("max_len") * d + d  # embedding, positions, final norm
    if not getattr(model_cfg, "tie_embeddings", True):
        total += vocab * d
    for kind in str(getattr(model_cfg, "pattern", "SA")):
        total += 2 * d + _linear(d, m * d) + _linear(m * d, d)
        if kind == "S":
            conv_ch = h * p + 2 * h * n
            total += _linear(d, h * p + conv_ch + h, bias=False) + conv_ch * w + conv_ch + 3 * h + h * p
            total += _linear(h * p, d, bias=False)
        elif kind == "A":
            total += 3 * _linear(d, d) + 2 * _linear(d, d, bias=False) + _linear(d, hm) + _linear(hm, d)
            total += (_linear(d, r) + _linear(r, 1)) if r else _linear(d, 1)
            total += 2 * d
        else:  # G
            total += _linear(d, 3 * d) + _linear(d, d)
    return total


def training_bytes(model_cfg: Any, vocab: int, batch: int, seq_len: int, *, logit_rows: int | None = None,
                   logit_width: int | None = None) -> int:
    """A lower bound of the memory one training step needs (formula in the module docstring).
    SRCD scores only its query slots (``logit_rows = n_q``) over the value tokens (``logit_width = v``)."""
    params = model_param_count(model_cfg, vocab)
    layers = len(str(getattr(model_cfg, "pattern", "SA")))
    d = int(model_cfg.d_model)
    state = FLOAT_BYTES * params * 4
    activations = tensor_bytes(batch, seq_len, d, layers)
    logits = tensor_bytes(batch, seq_len if logit_rows is None else logit_rows, vocab if logit_width is None else logit_width)
    return state + activations + logits


def check_training_fits(model_cfg: Any, vocab: int, batch: int, seq_len: int, device: Any = "cpu", *,
                        logit_rows: int | None = None, logit_width: int | None = None) -> int:
    """:func:`check_fits` for :func:`training_bytes`; returns the estimate."""
    need = training_bytes(model_cfg, vocab, batch, seq_len, logit_rows=logit_rows, logit_width=logit_width)
    check_fits(need, f"training this model (d_model={model_cfg.d_model}, "
                     f"{len(str(getattr(model_cfg, 'pattern', '')))} layers, batch {batch} x {seq_len} tokens)", device)  # fmt: skip
    return need

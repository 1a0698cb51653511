"""The sync-free routed prefill's gathered attention (docs/inference.md, "Prefill"): the routed
rows of a prompt gathered into a power-of-two capacity buffer (:func:`routed_capacity`,
:func:`gather_slots`) and their causal attention in groups of buffer rows
(:func:`gathered_attention`, an opaque op for ``torch.compile``). Used by the CRAM layer's
``fast_prefill`` (gpu/model/cram.py); gpu/bench/flops.py counts it through :func:`key_spans`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cramkit.gpu.ops.routed_attention.cpu import routed_rows_bucket


def routed_capacity(route: torch.Tensor, least: int = 16) -> int:
    """The routed-row buffer's length for ``route`` (B, T): 0 when no row is routed, else the
    power of two >= the most rows routed in one sequence (at least ``least``), at most T. One host
    read; a caller that knows a bound (a forced route, the budget) passes it as the capacity."""
    most = int(route.sum(1).max()) if route.numel() else 0
    return routed_rows_bucket(most, route.shape[1], least)


def gather_slots(route: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Static-shape gather indices of the routed rows: ``slot`` (B, T) the buffer slot of each
    routed row (``cap`` at the others) and ``idx`` (B, cap) the position held in each slot, routed
    positions in order, padding slots at position 0 (computed and never read back)."""
    bsz, t_len = route.shape
    slot = torch.where(route, route.long().cumsum(1) - 1, cap)
    idx = route.new_zeros(bsz, cap + 1, dtype=torch.int64)
    idx.scatter_(1, slot, torch.arange(t_len, device=route.device).expand(bsz, t_len))
    return slot, idx[:, :cap]


GROUP = 32  # buffer rows per SDPA call of the gathered attention


def key_spans(idx: torch.Tensor, group: int = GROUP) -> list[tuple[int, int, int]]:
    """(first row, end row, keys) per group of ``group`` buffer rows of ``idx`` (B, C): the keys a
    group needs are those up to its latest position (over the batch). One host read."""
    cap = idx.shape[1]
    starts = list(range(0, cap, group))
    if not starts:
        return []
    last = torch.stack([idx[:, a : a + group].amax() for a in starts]) + 1
    return [(a, min(a + group, cap), int(n)) for a, n in zip(starts, last.tolist())]


@torch.library.custom_op("cramkit::gathered_attention", mutates_args=())
def _gathered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(q)
    for a, b, n in key_spans(idx):
        visible = torch.arange(n, device=k.device) <= idx[:, a:b, None]  # (B, rows, n)
        out[:, :, a:b] = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, :n], v[:, :, :n], attn_mask=visible[:, None])
    return out


@_gathered_attention.register_fake
def _(q, k, v, idx):
    return torch.empty_like(q)


def gathered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Causal attention of gathered query rows: ``q`` (B, H, C, D) at positions ``idx`` (B, C)
    against keys and values (B, H, T, D), each query seeing the keys at or before its position.
    The rows are in position order (padding at the end): groups of :data:`GROUP` rows, each one
    masked SDPA call over the keys up to the group's latest position (:func:`key_spans`; the
    masked pairs inside those spans are computed too, and bench/flops.py counts them). An opaque
    op for ``torch.compile`` (its spans are a host read)."""
    return _gathered_attention(q, k, v, idx)

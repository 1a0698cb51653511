"""FlexAttention backend of routed attention (``torch.nn.attention.flex_attention``).

The routed queries of every batch row are gathered (sorted, rows padded to the largest count
``M``) into ``(B, H, M, D)`` and attend all ``T`` keys through ``flex_attention`` with a block
mask built from their positions: lane ``i`` of row ``b`` sees key ``j`` iff
``j <= pos[b, i]``. Key blocks after a query block's last position are skipped by the block
mask, so the work is about ``sum_{t routed} t`` plus a partial block per query block. The rows
are scattered back to ``[B, T, H, D]`` (non-routed rows exactly zero). Autograd runs through
``flex_attention``'s own backward and the gather/scatter.

``compiled=True`` calls ``torch.compile(flex_attention)`` (the fused kernel: Triton on a GPU,
C++ on the CPU); ``compiled=False`` runs the eager, unfused implementation, which builds the
``(B, H, M, T)`` score matrix and is meant for tests on the CPU. The default compiles on CUDA only.
Padding lanes repeat position ``T - 1`` (a fully visible row, so no lane is ever fully masked);
their output is dropped and their gradient is zero.
"""

from __future__ import annotations

import functools
import warnings

import torch

from cramkit.errors import CramError

from .cpu import routed_index


def available() -> bool:
    """Whether this torch has FlexAttention."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)  # dynamic after a first recompile: no recompile-limit fallback


def _flex(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return _compiled_flex() if compiled else flex_attention


def routed_positions(mask: torch.Tensor, *, bucket: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask [B, T]`` -> sorted routed positions ``pos [B, M]`` (padding ``T - 1``) and
    ``valid [B, M]``. ``bucket`` pads ``M`` up to a power of two (at least 16, at most ``T``):
    a compiled kernel then sees a few query lengths instead of one per routed count."""
    return routed_index(mask, pad=mask.shape[1] - 1, bucket=bucket)


def routed_block_mask(pos: torch.Tensor, t_len: int, *, compiled: bool):
    """The ``BlockMask`` of ``M`` gathered queries (``pos [B, M]``) against ``T`` keys."""
    from torch.nn.attention.flex_attention import create_block_mask

    def causal_at_position(b, h, q_idx, kv_idx):
        return kv_idx <= pos[b, q_idx]

    bsz, m = pos.shape
    return create_block_mask(causal_at_position, bsz, None, m, t_len, device=pos.device, _compile=compiled)


def routed_attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    compiled: bool | None = None,
) -> torch.Tensor:
    """Routed attention through FlexAttention; shapes as in the public ``routed_attention``.

    On the CPU, half-precision inputs are computed in float32 and float64 runs only eagerly;
    torch has no FlexAttention backward on the CPU, so gradients there raise :class:`CramError`.
    CUDA inputs keep their dtype.
    """
    if compiled is None:
        compiled = q.is_cuda
    if not q.is_cuda:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise CramError(
                f"the flex backend has no backward on the CPU (torch {torch.__version__} has no CPU "
                "FlexAttention backward); use backend='cpu' or run without gradients"
            )
        if compiled and q.dtype == torch.float64:
            raise CramError("compiled FlexAttention on the CPU has no float64; use compiled=False")
    if not torch.is_grad_enabled():  # flex_attention rejects leaves that require grad on the CPU
        q, k, v = q.detach(), k.detach(), v.detach()
    bsz, t_len, h, d = q.shape
    pos, valid = routed_positions(mask, bucket=compiled)
    m = pos.shape[1]
    if m == 0:
        return q * 0  # nothing routed: zero output, zero gradients
    work = q.dtype if (q.is_cuda or q.dtype in (torch.float32, torch.float64)) else torch.float32
    rows = torch.arange(bsz, device=q.device)[:, None]
    qg = q[rows, pos].to(work).transpose(1, 2)  # (B, H, M, D)
    kh = k.to(work).transpose(1, 2)
    vh = v.to(work).transpose(1, 2)
    block_mask = routed_block_mask(pos, t_len, compiled=compiled)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        og = _flex(compiled)(qg, kh, vh, block_mask=block_mask, scale=scale)  # (B, H, M, D)
    og = og.transpose(1, 2) * valid[:, :, None, None].to(og.dtype)
    target = torch.where(valid, pos, t_len)  # padding lanes land in the dropped row T
    out = og.new_zeros(bsz, t_len + 1, h, d).index_put((rows.expand_as(target), target), og)
    return out[:, :t_len].to(q.dtype)

"""CPU path of routed attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def routed_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted routed positions per row, padded: ``(idx [B, M], valid [B, M])``, M = max count.

    Padding entries hold index 0 and ``valid`` False.
    """
    counts = mask.sum(1)
    m = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :m]
    valid = torch.arange(m, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, order, 0), valid


def routed_attention_gathered(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Gather the routed queries, run masked SDPA against all keys, scatter the rows back."""
    bsz, t_len, h, d = q.shape
    idx, valid = routed_index(mask)
    m = idx.shape[1]
    if m == 0:
        return (q * 0 + k.sum() * 0 + v.sum() * 0).zero_() if q.requires_grad else q.new_zeros(q.shape)
    gidx = idx[:, :, None, None].expand(bsz, m, h, d)
    qg = q.gather(1, gidx).transpose(1, 2)  # (B, H, M, D)
    keys = torch.arange(t_len, device=q.device)
    allowed = keys[None, None, :] <= idx[:, :, None]  # (B, M, T)
    og = F.scaled_dot_product_attention(
        qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None], scale=scale
    ).transpose(1, 2)  # (B, M, H, D)
    og = og * valid[:, :, None, None].to(og.dtype)
    sidx = torch.where(valid, idx, t_len)[:, :, None, None].expand(bsz, m, h, d)
    out = q.new_zeros(bsz, t_len + 1, h, d).scatter(1, sidx, og)
    return out[:, :t_len]


def routed_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """The CPU dispatch target."""
    return routed_attention_gathered(q, k, v, mask, scale=scale)

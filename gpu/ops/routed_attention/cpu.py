"""CPU paths of routed attention.

Two exact algorithms, chosen by a cost rule in :func:`routed_attention_cpu`:

* **blocked** (:class:`BlockedRoutedAttention`): the routed positions of a batch row are split into
  position blocks of width ``W`` (a power of two chosen so that a block holds about
  ``_QUERIES_PER_BLOCK`` routed queries). A block whose last routed query sits at ``p_last`` reads
  only the key prefix ``0..p_last``: one score matmul, a causal bias on the block's own tail
  columns (never a ``T x T`` mask), an in-place softmax and one value matmul. The backward pass
  accumulates ``dk``, ``dv`` in place with ``baddbmm_`` on the same prefixes. Work is
  ``sum_t∈A (t + W/2)`` instead of ``T^2 / 2``.
* **dense**: fused causal SDPA on every position, non-routed rows zeroed afterwards. Cheaper than
  the blocked path only when almost every position is routed.

Half-precision inputs are computed in float32 and cast back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Routed queries per position block: fewer means less masked-tail waste but more small matmuls.
_QUERIES_PER_BLOCK = 16
# Above this routed fraction the fused dense kernel beats the blocked path.
_DENSE_FRACTION = 0.6
# Score/probability elements kept for the backward pass before it recomputes them instead.
_SAVE_LIMIT = 1 << 26


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
    """Gather the routed queries, run masked SDPA against all keys, scatter the rows back.

    The simple exact baseline that the blocked path is measured against.
    """
    bsz, t_len, h, d = q.shape
    idx, valid = routed_index(mask)
    m = idx.shape[1]
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


def routed_attention_dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Fused causal SDPA over every position, then non-routed rows set to exactly zero."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale
    ).transpose(1, 2)
    return torch.where(mask[:, :, None, None], out, torch.zeros((), dtype=out.dtype))


def position_blocks(pos: list[int], t_len: int, per_block: int) -> list[tuple[int, int]]:
    """Split sorted routed positions into blocks of one power-of-two width ``W``.

    Returns ``(start, end)`` index ranges into ``pos``; a block holds the routed positions
    ``p`` with one value of ``p // W``. ``W`` is the power of two nearest to
    ``per_block * T / len(pos)``, clipped to ``[32, T]``.
    """
    n = len(pos)
    if n == 0:
        return []
    width = per_block * t_len / n
    width = int(min(max(32, 2 ** round(math.log2(max(width, 1.0)))), max(t_len, 1)))
    blocks = []
    start = 0
    for i in range(1, n + 1):
        if i == n or pos[i] // width != pos[start] // width:
            blocks.append((start, i))
            start = i
    return blocks


def _tail_bias(pg: torch.Tensor, first: int, length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive causal bias for the columns ``first+1 .. length-1`` of a block, or None."""
    if length - 1 <= first:
        return None
    cols = torch.arange(first + 1, length, device=pg.device)
    bias = torch.zeros(pg.numel(), length - first - 1, dtype=dtype, device=pg.device)
    return bias.masked_fill_(pg[:, None] < cols[None, :], float("-inf"))


def _block_probs(qs: torch.Tensor, kp: torch.Tensor, pg: torch.Tensor, first: int) -> torch.Tensor:
    """Softmax probabilities ``(H, n, L)`` of pre-scaled queries ``qs`` against key prefix ``kp``."""
    s = torch.matmul(qs, kp.transpose(-1, -2))  # (H, n, L)
    bias = _tail_bias(pg, first, kp.shape[1], s.dtype)
    if bias is not None:
        s[:, :, first + 1 :] += bias
    return torch.softmax(s, -1, out=s)


class BlockedRoutedAttention(torch.autograd.Function):
    """Exact routed attention over position blocks; see the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, per_block):  # noqa: D401
        bsz, t_len, h, d = q.shape
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        qw = q.to(work)
        kh = k.to(work).transpose(1, 2).contiguous()  # (B, H, T, D): contiguous prefixes
        vh = v.to(work).transpose(1, 2).contiguous()
        out = torch.zeros(bsz, t_len, h, d, dtype=work, device=q.device)
        plan = []
        saved_elems = 0
        for b in range(bsz):
            pos = mask[b].nonzero().flatten()
            pl = pos.tolist()
            for s, e in position_blocks(pl, t_len, per_block):
                pg = pos[s:e]
                first, length = pl[s], pl[e - 1] + 1
                qs = qw[b, pg].transpose(0, 1) * scale  # (H, n, D)
                p = _block_probs(qs, kh[b, :, :length], pg, first)
                og = torch.matmul(p, vh[b, :, :length])  # (H, n, D)
                out[b, pg] = og.transpose(0, 1)
                saved_elems += p.numel()
                plan.append([b, pg, first, length, qs, p])
        if saved_elems > _SAVE_LIMIT:  # keep memory bounded: recompute in backward
            for item in plan:
                item[5] = None
        ctx.plan = plan
        ctx.scale = scale
        ctx.shape = (bsz, t_len, h, d)
        ctx.in_dtype = q.dtype
        ctx.save_for_backward(kh, vh)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        kh, vh = ctx.saved_tensors
        scale = ctx.scale
        bsz, t_len, h, d = ctx.shape
        gw = grad_out.to(kh.dtype)
        dq = torch.zeros(bsz, t_len, h, d, dtype=kh.dtype, device=kh.device)
        dkh = torch.zeros_like(kh)
        dvh = torch.zeros_like(vh)
        for b, pg, first, length, qs, p in ctx.plan:
            kp, vp = kh[b, :, :length], vh[b, :, :length]
            if p is None:
                p = _block_probs(qs, kp, pg, first)
            dog = gw[b, pg].transpose(0, 1)  # (H, n, D)
            dvh[b, :, :length].baddbmm_(p.transpose(-1, -2), dog)
            dp = torch.matmul(dog, vp.transpose(-1, -2))  # (H, n, L)
            # dS = P * (dP - rowsum(dP * P)), fused; rowsum(dP * P) equals dO . O.
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            dq[b, pg] = torch.matmul(ds, kp).transpose(0, 1) * scale
            dkh[b, :, :length].baddbmm_(ds.transpose(-1, -2), qs)
        ctx.plan = None
        dt = ctx.in_dtype
        return dq.to(dt), dkh.transpose(1, 2).to(dt), dvh.transpose(1, 2).to(dt), None, None, None


def routed_attention_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    per_block: int = _QUERIES_PER_BLOCK,
) -> torch.Tensor:
    """The blocked path; shapes as in :func:`gpu.ops.routed_attention.routed_attention`."""
    return BlockedRoutedAttention.apply(q, k, v, mask, scale, per_block)


def routed_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """The CPU dispatch target: dense SDPA when nearly all positions are routed, else blocked."""
    if mask.numel() and float(mask.float().mean()) > _DENSE_FRACTION:
        return routed_attention_dense(q, k, v, mask, scale=scale)
    return routed_attention_blocked(q, k, v, mask, scale=scale)

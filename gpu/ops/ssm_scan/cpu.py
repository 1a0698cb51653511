"""Chunked selective scan in plain PyTorch (the CPU path).

Within a chunk of L steps, with ``A_t`` the cumulative log decay inside the chunk::

    y_t = sum_{s<=t} exp(A_t - A_s) (c_t . b_s) x_s  +  exp(A_t) c_t^T S_in
    S_out = exp(A_L) S_in + sum_s exp(A_L - A_s) b_s x_s^T

so each chunk is a few dense matmuls and only the chunk-to-chunk state is sequential. That
sequential part is :class:`ChunkRecurrence`, an autograd function with a hand-written reverse
loop: left to autograd, a Python loop of ``T / L`` indexed updates costs a full-size zero tensor
per index in the backward pass (quadratic in the number of chunks), which took most of the time
of a training step's scan at ``T = 4096``. Everything else gets its backward from autograd.

:func:`auto_chunk_size` picks ``L`` from ``T`` when the caller does not (measured on a 2-core CPU,
one thread, ``H = 4``, ``P = N = 16``; see docs/results/kernels.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def auto_chunk_size(t_len: int) -> int:
    """Chunk length for a sequence of ``t_len`` steps on the CPU.

    Intra-chunk work grows with ``L`` (``T L`` score elements) and the sequential recurrence with
    ``T / L`` small steps; 32 balanced the two from ``T = 512`` to ``16384`` in the measurements
    (48 and 64 within a few percent), shorter sequences take one chunk of at most 64 steps.
    """
    if t_len <= 64:
        return max(1, t_len)
    return 32


class ChunkRecurrence(torch.autograd.Function):
    """``S_in[i] = S`` then ``S = decay[i] S + u[i]`` over chunks ``i``; returns
    ``(S_in [B, C, H, N, P], S_final [B, H, N, P])``. ``decay``: ``[B, C, H]``, ``u``:
    ``[B, C, H, N, P]``, ``s0``: ``[B, H, N, P]``."""

    @staticmethod
    def forward(ctx, decay, u, s0):
        n_chunks = u.shape[1]
        s_in = torch.empty_like(u)
        state = s0
        for i in range(n_chunks):
            s_in[:, i] = state
            state = torch.addcmul(u[:, i], decay[:, i, :, None, None], state)
        ctx.save_for_backward(decay, s_in)
        return s_in, state

    @staticmethod
    def backward(ctx, g_sin, g_final):
        decay, s_in = ctx.saved_tensors
        n_chunks = s_in.shape[1]
        g_u = torch.empty_like(s_in)
        g_decay = torch.empty_like(decay)
        g = g_final if g_final is not None else torch.zeros_like(s_in[:, 0])
        for i in range(n_chunks - 1, -1, -1):
            g_u[:, i] = g  # d state_after(i) / d u[i] = identity
            g_decay[:, i] = (g * s_in[:, i]).sum((-1, -2))
            g = decay[:, i, :, None, None] * g
            if g_sin is not None:
                g = g + g_sin[:, i]
        return g_decay, g_u, g


def ssm_scan_chunked(
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked scan. Shapes as in :func:`cramkit.gpu.ops.ssm_scan.ssm_scan`; computes in float32 or
    float64 and casts back to the dtype of ``x``. ``chunk_size`` None: :func:`auto_chunk_size`."""
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    bsz, t_len, h, p = x.shape
    n = b.shape[-1]
    if chunk_size is None:
        chunk_size = auto_chunk_size(t_len)
    big_l = max(1, min(chunk_size, t_len))
    n_chunks = -(-t_len // big_l)
    pad = n_chunks * big_l - t_len

    def chunks(t: torch.Tensor) -> torch.Tensor:
        # Padded steps have log_a = 0 and b = x = c = 0: they leave the state unchanged.
        t = t.to(work)
        if pad:
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.view(bsz, n_chunks, big_l, *t.shape[2:]).transpose(2, 3)  # (B, C, H, L, ...)

    xh, bh, ch = chunks(x), chunks(b), chunks(c)  # (B, C, H, L, P|N)
    acum = chunks(log_a).cumsum(-1)  # (B, C, H, L), inclusive cumulative log decay
    # Intra-chunk decay exp(A_t - A_s) for s <= t; masked before exp so nothing overflows.
    causal = torch.ones(big_l, big_l, dtype=torch.bool, device=x.device).tril()
    decay_ts = torch.exp((acum[..., :, None] - acum[..., None, :]).masked_fill_(~causal, float("-inf")))
    scores = torch.matmul(ch, bh.transpose(-1, -2)).mul_(decay_ts)  # (B, C, H, L, L)
    y = torch.matmul(scores, xh)  # (B, C, H, L, P): the intra-chunk part
    # Each chunk's own contribution to its end state: sum_s exp(A_L - A_s) b_s x_s^T.
    tail = torch.exp(acum[..., -1:] - acum)  # (B, C, H, L)
    u = torch.matmul((bh * tail[..., None]).transpose(-1, -2), xh)  # (B, C, H, N, P)
    chunk_decay = torch.exp(acum[..., -1])  # (B, C, H)
    if initial_state is None:
        s0 = x.new_zeros(bsz, h, n, p, dtype=work)
    else:
        s0 = initial_state.to(work)
    s_in, state = ChunkRecurrence.apply(chunk_decay, u, s0)  # (B, C, H, N, P), (B, H, N, P)
    y = y + torch.matmul(ch * torch.exp(acum)[..., None], s_in)  # the inter-chunk part
    y = y.transpose(2, 3).reshape(bsz, n_chunks * big_l, h, p)
    if pad:
        y = y[:, :t_len]
    return y.to(out_dtype), state.to(out_dtype)

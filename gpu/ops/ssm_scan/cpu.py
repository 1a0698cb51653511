"""Chunked selective scan in plain PyTorch (the CPU path; autograd comes from PyTorch).

Within a chunk of L steps, with ``A_t`` the cumulative log decay inside the chunk::

    y_t = sum_{s<=t} exp(A_t - A_s) (c_t . b_s) x_s  +  exp(A_t) c_t^T S_in
    S_out = exp(A_L) S_in + sum_s exp(A_L - A_s) b_s x_s^T

so each chunk is a few dense matmuls and only the chunk-to-chunk state is sequential.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssm_scan_chunked(
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked scan. Shapes as in :func:`cramkit.gpu.ops.ssm_scan.ssm_scan`; computes in float32 or
    float64 and casts back to the dtype of ``x``."""
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    bsz, t_len, h, p = x.shape
    n = b.shape[-1]
    big_l = max(1, min(chunk_size, t_len))
    n_chunks = -(-t_len // big_l)
    pad = n_chunks * big_l - t_len
    # Padded steps have log_a = 0 and b = x = c = 0: they leave the state unchanged.
    xw = F.pad(x.to(work), (0, 0, 0, 0, 0, pad)).view(bsz, n_chunks, big_l, h, p)
    bw = F.pad(b.to(work), (0, 0, 0, 0, 0, pad)).view(bsz, n_chunks, big_l, h, n)
    cw = F.pad(c.to(work), (0, 0, 0, 0, 0, pad)).view(bsz, n_chunks, big_l, h, n)
    aw = F.pad(log_a.to(work), (0, 0, 0, pad)).view(bsz, n_chunks, big_l, h)
    # (B, C, H, L) layouts for the per-chunk matmuls.
    xh = xw.permute(0, 1, 3, 2, 4)  # (B, C, H, L, P)
    bh = bw.permute(0, 1, 3, 2, 4)  # (B, C, H, L, N)
    ch = cw.permute(0, 1, 3, 2, 4)  # (B, C, H, L, N)
    acum = aw.permute(0, 1, 3, 2).cumsum(-1)  # (B, C, H, L), inclusive cumulative log decay
    # Intra-chunk decay exp(A_t - A_s) for s <= t; masked before exp so nothing overflows.
    causal = torch.ones(big_l, big_l, dtype=torch.bool, device=x.device).tril()
    seg = (acum[..., :, None] - acum[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = torch.matmul(ch, bh.transpose(-1, -2)) * torch.exp(seg)  # (B, C, H, L, L)
    y_intra = torch.matmul(scores, xh)  # (B, C, H, L, P)
    # Each chunk's own contribution to its end state: sum_s exp(A_L - A_s) b_s x_s^T.
    tail = torch.exp(acum[..., -1:] - acum)  # (B, C, H, L)
    u = torch.matmul((bh * tail[..., None]).transpose(-1, -2), xh)  # (B, C, H, N, P)
    chunk_decay = torch.exp(acum[..., -1])  # (B, C, H)
    if initial_state is None:
        state = x.new_zeros(bsz, h, n, p, dtype=work)
    else:
        state = initial_state.to(work)
    states_in = []
    for i in range(n_chunks):  # sequential only over chunks
        states_in.append(state)
        state = chunk_decay[:, i, :, None, None] * state + u[:, i]
    s_in = torch.stack(states_in, dim=1)  # (B, C, H, N, P)
    y_inter = torch.matmul(ch * torch.exp(acum)[..., None], s_in)  # (B, C, H, L, P)
    y = (y_intra + y_inter).permute(0, 1, 3, 2, 4).reshape(bsz, n_chunks * big_l, h, p)
    return y[:, :t_len].to(out_dtype), state.to(out_dtype)

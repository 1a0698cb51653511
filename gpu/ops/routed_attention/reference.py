"""The float64 definition of routed attention.

Causal softmax attention in which only the routed query positions produce output: query ``t``
(when routed) attends keys ``0..t``; every non-routed row of the output is exactly zero. Gradients
follow from this definition: ``dq`` is zero at non-routed rows and ``dk``, ``dv`` collect only the
contributions of routed queries.
"""

from __future__ import annotations

import torch


def routed_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Dense float64 routed attention. Shapes: q, k, v ``[B, T, H, D]``; mask bool ``[B, T]``.

    Computes the full ``T x T`` score matrix, so it is meant for tests and small inputs only.
    Returns ``[B, T, H, D]`` in the dtype of ``q``.
    """
    qh = q.double().transpose(1, 2)  # (B, H, T, D)
    kh = k.double().transpose(1, 2)
    vh = v.double().transpose(1, 2)
    t = q.shape[1]
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale  # (B, H, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), vh).transpose(1, 2)  # (B, T, H, D)
    out = torch.where(mask[:, :, None, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.to(q.dtype)

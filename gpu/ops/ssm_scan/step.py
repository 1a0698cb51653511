"""One step of the selective scan, for token-by-token decoding.

``S' = exp(log_a) S + b x^T`` and ``y = S'^T c``: the recurrence of
:func:`cramkit.gpu.ops.ssm_scan.ssm_scan` at a single time step, so that a prefill with
``ssm_scan(..., initial_state=S)`` followed by steps reproduces the whole-sequence scan. The same
PyTorch code runs on every device (two elementwise ops and one small batched matmul, no Python
loop); it computes in float32 (float64 for float64 inputs) and casts back.
"""

from __future__ import annotations

import torch

from cramkit.errors import CramError
from cramkit.gpu.ops.ssm_scan.interface import check_float_tensors


def _check(state, x, log_a, b, c) -> None:
    check_float_tensors({"state": state, "x": x, "log_a": log_a, "b": b, "c": c}, "state")
    if state.dim() != 4:
        raise CramError(f"state must have shape [B, H, N, P], got {tuple(state.shape)}")
    bsz, h, n, p = state.shape
    if x.shape != (bsz, h, p):
        raise CramError(f"x must have shape [B, H, P] = {[bsz, h, p]}, got {list(x.shape)}")
    if log_a.shape != (bsz, h):
        raise CramError(f"log_a must have shape [B, H] = {[bsz, h]}, got {list(log_a.shape)}")
    for name, tensor in (("b", b), ("c", c)):
        if tensor.shape != (bsz, h, n):
            raise CramError(f"{name} must have shape [B, H, N] = {[bsz, h, n]}, got {list(tensor.shape)}")


def ssm_step(
    state: torch.Tensor, x: torch.Tensor, log_a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrence step: returns ``(y [B, H, P], new_state [B, H, N, P])``.

    Args:
        state: ``[B, H, N, P]`` state after the previous step (the scan's ``final_state``).
        x: ``[B, H, P]`` input of this step.
        log_a: ``[B, H]`` log decay of this step (``<= 0`` for a stable scan; not checked here,
            to keep a decode step free of a device-to-host read).
        b, c: ``[B, H, N]`` input and output projections of this step.

    ``y`` comes back in the dtype of ``x`` and ``new_state`` in the dtype of ``state``; the input
    ``state`` is not modified. Differentiable (plain PyTorch ops).
    """
    _check(state, x, log_a, b, c)
    work = torch.float64 if state.dtype == torch.float64 or x.dtype == torch.float64 else torch.float32
    decay = torch.exp(log_a.to(work))[:, :, None, None]
    new = torch.addcmul(decay * state.to(work), b.to(work)[:, :, :, None], x.to(work)[:, :, None, :])
    y = torch.matmul(c.to(work)[:, :, None, :], new).squeeze(2)  # (B, H, P)
    return y.to(x.dtype), new.to(state.dtype)

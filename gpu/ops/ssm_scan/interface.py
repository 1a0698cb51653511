"""Public entry point of the selective SSM scan: validation and dispatch by device."""

from __future__ import annotations

import torch

from cramkit.errors import CramError, NonFiniteValues

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensors(tensors: dict[str, torch.Tensor], anchor: str) -> None:
    """Each of ``tensors`` is a floating-point torch.Tensor on the device of ``tensors[anchor]``;
    else one CramError naming it (shared by :func:`ssm_scan` and ``ssm_step``)."""
    device = tensors[anchor].device if isinstance(tensors.get(anchor), torch.Tensor) else None
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise CramError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise CramError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
        if tensor.device != device:
            raise CramError(f"{name} is on {tensor.device} but {anchor} is on {device}")


def ssm_scan(
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan ``S_t = exp(log_a_t) S_{t-1} + b_t x_t^T``, ``y_t = c_t^T S_t``.

    Args:
        x: ``[B, T, H, P]`` inputs.
        log_a: ``[B, T, H]`` per-step log decay, every entry ``<= 0``.
        b, c: ``[B, T, H, N]`` input and output projections of the state.
        initial_state: ``[B, H, N, P]`` state before step 0 (zeros when None).
        chunk_size: time steps per chunk (a positive int): the chunk length of the CPU algorithm
            and the checkpoint spacing of the Triton kernels. None (the default) lets the path
            choose: :func:`cramkit.gpu.ops.ssm_scan.cpu.auto_chunk_size` on the CPU, 64 on CUDA.
            The result does not depend on it beyond float rounding.

    Returns ``(y [B, T, H, P], final_state [B, H, N, P])``, both in the dtype of ``x``.
    CUDA tensors run the fused Triton kernels; float64 on CUDA and every other device run the
    chunked PyTorch path.
    """
    tensors = {"x": x, "log_a": log_a, "b": b, "c": c}
    if initial_state is not None:
        tensors["initial_state"] = initial_state
    check_float_tensors(tensors, "x")
    if x.dim() != 4:
        raise CramError(f"x must have shape [B, T, H, P], got {tuple(x.shape)}")
    bsz, t_len, h, p = x.shape
    if log_a.shape != (bsz, t_len, h):
        raise CramError(f"log_a must have shape [B, T, H] = {[bsz, t_len, h]}, got {list(log_a.shape)}")
    if b.dim() != 4 or b.shape[:3] != (bsz, t_len, h):
        raise CramError(f"b must have shape [B, T, H, N] with B, T, H = {bsz}, {t_len}, {h}, got {list(b.shape)}")
    n = b.shape[3]
    if c.shape != b.shape:
        raise CramError(f"c must have the shape of b {list(b.shape)}, got {list(c.shape)}")
    if initial_state is not None and initial_state.shape != (bsz, h, n, p):
        raise CramError(
            f"initial_state must have shape [B, H, N, P] = {[bsz, h, n, p]}, got {list(initial_state.shape)}"
        )
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise CramError(f"chunk_size must be a positive int, got {chunk_size!r}")
    checks = log_a.numel() and not torch.compiler.is_compiling()  # no host read inside a compiled graph
    if checks and bool(torch.isnan(log_a).any()):  # what a blown-up model gives
        raise NonFiniteValues("log_a holds NaN")
    if checks and bool((log_a > 0).any()):
        raise CramError("log_a must be <= 0 everywhere (a log decay)")
    if x.is_cuda and x.dtype != torch.float64:
        from .triton import ssm_scan_triton

        return ssm_scan_triton(x, log_a, b, c, initial_state=initial_state, chunk_size=chunk_size or 64)
    from .cpu import ssm_scan_chunked

    return ssm_scan_chunked(x, log_a, b, c, initial_state=initial_state, chunk_size=chunk_size)

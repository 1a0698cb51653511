"""Public entry point of routed attention: validation and dispatch by device."""

from __future__ import annotations

import torch

from cramkit.errors import CramError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def route_to_mask(route: torch.Tensor, t_len: int, batch: int) -> torch.Tensor:
    """Turn a routing spec into a bool mask ``[B, T]`` (True = the query position attends).

    ``route`` is either a bool mask ``[B, T]`` or an int64 index tensor ``[B, M]`` of routed
    positions padded with ``-1`` (rows may hold different numbers of positions, in any order).
    Raises :class:`CramError` for a wrong shape or dtype, an index out of ``[-1, T)`` or a
    position listed twice in one row.
    """
    if not isinstance(route, torch.Tensor):
        raise CramError(f"route must be a torch.Tensor, got {type(route).__name__}")
    if route.dim() != 2 or route.shape[0] != batch:
        raise CramError(
            f"route must be a bool mask [B, T] or an int64 index tensor [B, M] with B={batch}, "
            f"got shape {tuple(route.shape)}"
        )
    if route.dtype == torch.bool:
        if route.shape[1] != t_len:
            raise CramError(f"a bool route mask must have shape [B, T] = [{batch}, {t_len}], got {tuple(route.shape)}")
        return route
    if route.dtype != torch.int64:
        raise CramError(f"route must be bool [B, T] or int64 [B, M], got dtype {route.dtype}")
    if route.numel() and (bool((route < -1).any()) or bool((route >= t_len).any())):
        raise CramError(f"route indices must lie in [0, T) = [0, {t_len}) or be -1 for padding")
    valid = route >= 0
    mask = torch.zeros(batch, t_len + 1, dtype=torch.bool, device=route.device)
    mask.scatter_(1, torch.where(valid, route, t_len), True)
    mask = mask[:, :t_len]
    if not torch.equal(mask.sum(1), valid.sum(1)):
        raise CramError("route lists a position more than once in the same row")
    return mask


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention for the routed query positions only, scattered back to ``[B, T, H, D]``.

    Args:
        q, k, v: ``[B, T, H, D]`` tensors of one floating dtype on one device.
        route: bool ``[B, T]`` (True = this query position attends) or int64 ``[B, M]`` of routed
            positions padded with ``-1`` (ragged rows).
        scale: softmax scale, ``D ** -0.5`` by default.

    A routed query at position ``t`` attends keys ``0..t``. Non-routed rows of the result are
    exactly zero; ``dq`` is zero there and ``dk``, ``dv`` collect the routed queries' share.
    CUDA tensors run the fused Triton kernels (float64 on CUDA and all other devices run the
    exact PyTorch path: blocked, or dense when nearly every position is routed).
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise CramError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise CramError(f"{name} must have shape [B, T, H, D], got {tuple(tensor.shape)}")
        if tensor.dtype not in _FLOAT_DTYPES:
            raise CramError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise CramError(
            f"q, k, v must share one shape [B, T, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise CramError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device or route.device != q.device:
        raise CramError("q, k, v and route must be on the same device")
    bsz, t_len, _, d = q.shape
    if scale is None:
        scale = d**-0.5
    scale = float(scale)
    if not (scale > 0 and scale != float("inf")):
        raise CramError(f"scale must be a positive finite number, got {scale}")
    mask = route_to_mask(route, t_len, bsz)
    if q.is_cuda and q.dtype != torch.float64:  # tl.dot has no float64 path
        from .triton import routed_attention_triton

        return routed_attention_triton(q, k, v, mask, scale=scale)
    from .cpu import routed_attention_cpu

    return routed_attention_cpu(q, k, v, mask, scale=scale)

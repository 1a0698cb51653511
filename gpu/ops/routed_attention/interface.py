"""Public entry point of routed attention: validation and the choice of backend.

Backends (``backend=``): ``"cpu"`` (the exact PyTorch paths of cpu.py, chosen among by their
measured cost model; any device), ``"gathered"`` (gather the routed queries, masked SDPA against
every key), ``"triton"`` (the fused kernels of triton.py; CUDA, or CPU under
``TRITON_INTERPRET=1``), ``"flex"`` (FlexAttention, flex.py) and ``"auto"`` (the default):

* CPU tensors, and float64 anywhere: ``"cpu"`` (its cost model picks the fastest measured of the
  dense, gathered, key-block and blocked paths; FlexAttention on the CPU has no backward in
  torch 2.13 and its eager form materialises the scores, so it is never chosen automatically).
* CUDA tensors: a one-time measurement. The first call for a shape class (dtype, ``H``, ``D``,
  ``T`` and the routed count ``M`` each rounded up to a power of two, and whether gradients are
  needed) times every available backend (``triton``, ``flex`` when this torch has it,
  ``gathered``) once after a warm-up, forward (+ backward when gradients are needed), and the
  fastest serves that class from then on (:data:`_MEASURED`). A backend that fails there is
  dropped with one warning line. Inside ``torch.compile`` tracing nothing is measured: triton.
* ``CRAM_ROUTED_ATTENTION_BACKEND`` (environment) overrides ``"auto"`` with a fixed backend.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable

import torch

from cramkit.errors import CramError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "cpu", "gathered", "triton", "flex")
ENV_BACKEND = "CRAM_ROUTED_ATTENTION_BACKEND"
#: the one-time measurements: shape class -> the fastest backend's name
_MEASURED: dict[tuple, str] = {}


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


def _run_backend(name: str, q, k, v, mask, scale: float) -> torch.Tensor:
    if name == "cpu":
        from .cpu import routed_attention_cpu

        return routed_attention_cpu(q, k, v, mask, scale=scale)
    if name == "gathered":
        from .cpu import routed_attention_gathered

        return routed_attention_gathered(q, k, v, mask, scale=scale)
    if name == "triton":
        if q.dtype == torch.float64:
            raise CramError("the triton backend has no float64 path (tl.dot); use backend='cpu'")
        from .triton import routed_attention_triton

        return routed_attention_triton(q, k, v, mask, scale=scale)
    from .flex import routed_attention_flex

    return routed_attention_flex(q, k, v, mask, scale=scale)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(q: torch.Tensor, mask: torch.Tensor, needs_grad: bool) -> tuple:
    """The key of the one-time measurement: device type, dtype, H, D, T and the largest routed
    count rounded up to powers of two, and whether gradients are needed."""
    most = int(mask.sum(1).max()) if mask.numel() else 0
    return (q.device.type, q.dtype, q.shape[2], q.shape[3], _pow2(q.shape[1]), _pow2(most), needs_grad)


def measure_fastest(fns: dict[str, Callable[[], None]], sync: Callable[[], None] = lambda: None) -> str:
    """Run each candidate once to warm up, then time it once; the fastest name wins. A
    candidate that raises is dropped with one warning line; if all fail, the first name wins."""
    times = {}
    for name, fn in fns.items():
        try:
            fn()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - any failure just drops the candidate
            warnings.warn(f"routed_attention: backend {name!r} dropped ({type(exc).__name__}: {exc})", stacklevel=3)
    return min(times, key=times.get) if times else next(iter(fns))


def _cuda_candidates(q: torch.Tensor) -> list[str]:
    from .flex import available as flex_available

    names = ["triton"]
    if flex_available():
        names.append("flex")
    return names + ["gathered"]


def _auto_backend(q, k, v, mask, scale: float) -> str:
    forced = os.environ.get(ENV_BACKEND, "").strip()
    if forced:
        if forced not in BACKENDS[1:]:
            raise CramError(f"{ENV_BACKEND}={forced!r}: choose one of {list(BACKENDS[1:])}")
        return forced
    if not q.is_cuda or q.dtype == torch.float64:
        return "cpu"
    if torch.compiler.is_compiling():
        return "triton"
    return measured_backend(q, k, v, mask, scale, _cuda_candidates(q), sync=torch.cuda.synchronize)


def measured_backend(q, k, v, mask, scale: float, candidates: list[str], sync: Callable[[], None]) -> str:
    """The fastest of ``candidates`` for this call's shape class, measured on its first call
    (on detached copies: the caller's tensors and gradients are untouched) and cached."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    key = shape_class(q, mask, needs_grad)
    if key not in _MEASURED:
        _MEASURED[key] = measure_fastest(
            {name: _timed_call(name, q, k, v, mask, scale, needs_grad) for name in candidates}, sync=sync
        )
    return _MEASURED[key]


def _timed_call(name: str, q, k, v, mask, scale: float, needs_grad: bool) -> Callable[[], None]:
    """One forward (+ backward on detached copies when gradients are needed) of a backend."""

    def call() -> None:
        leaves = [t.detach().requires_grad_(needs_grad) for t in (q, k, v)]
        with torch.set_grad_enabled(needs_grad):
            out = _run_backend(name, *leaves, mask, scale)
            if needs_grad:
                out.backward(torch.ones_like(out))

    return call


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route: torch.Tensor,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal attention for the routed query positions only, scattered back to ``[B, T, H, D]``.

    Args:
        q, k, v: ``[B, T, H, D]`` tensors of one floating dtype on one device.
        route: bool ``[B, T]`` (True = this query position attends) or int64 ``[B, M]`` of routed
            positions padded with ``-1`` (ragged rows).
        scale: softmax scale, ``D ** -0.5`` by default.
        backend: ``"auto"`` or one of ``"cpu"``, ``"gathered"``, ``"triton"``, ``"flex"``; the
            module docstring gives the rule ``"auto"`` follows.

    A routed query at position ``t`` attends keys ``0..t``. Non-routed rows of the result are
    exactly zero; ``dq`` is zero there and ``dk``, ``dv`` collect the routed queries' share.
    """
    if backend not in BACKENDS:
        raise CramError(f"unknown routed attention backend {backend!r}; choose one of {list(BACKENDS)}")
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
    if backend == "auto":
        backend = _auto_backend(q, k, v, mask, scale)
    return _run_backend(backend, q, k, v, mask, scale)

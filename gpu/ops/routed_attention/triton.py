"""Fused Triton kernels for routed attention (FlashAttention style: online softmax, no T x T
matrix in memory).

Layers: ``@triton.jit`` kernels -> keyword-only host launchers (:func:`routed_attention_fwd`,
:func:`routed_attention_bwd`) -> :class:`RoutedAttentionTriton` (``torch.autograd.Function``) ->
:func:`routed_attention_triton`, which the public ``routed_attention`` calls for CUDA tensors.

The routed positions of each batch row are sorted and packed into ``idx [B, M]`` (int32; padding
repeats the row's last routed position so a padded lane never widens a block's key range) with
``counts [B]``. Programs of the forward and ``dq`` kernels own ``BLOCK_M`` routed queries and walk
only their causal key prefix; programs of the ``dk, dv`` kernel own ``BLOCK_N`` keys and walk only
the routed queries at or after them (found by a binary search in ``idx``). Work therefore scales
with ``sum_{t routed} t``.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors with one fixed small config; on a GPU
they are autotuned over a pruned grid.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - exercised only without triton
    raise ImportError(
        "routed attention on CUDA needs Triton: pip install 'triton>=3.0'"
    ) from exc

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LOG2E = 1.4426950408889634
_SEARCH_STEPS = 24  # binary-search iterations: enough for up to 2**24 routed positions per row


def _empty(shape, *, dtype, device) -> torch.Tensor:
    """Allocate a kernel output (tests replace this to poison buffers with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _fwd_kernel(
    Q, K, V, Out, LSE, IDX, CNT,
    qk_scale,  # softmax scale * log2(e): the kernel works with exp2
    T, H, M,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    cnt = tl.load(CNT + b)
    if pid_m * BLOCK_M >= cnt:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row = H * D
    base = b.to(tl.int64) * T * row + h * D
    pos = tl.load(IDX + b * M + offs_m, mask=offs_m < M, other=0)
    p_min = tl.load(IDX + b * M + pid_m * BLOCK_M)
    p_max = tl.max(pos, axis=0)
    q = tl.load(Q + base + pos[:, None].to(tl.int64) * row + offs_d[None, :], mask=d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Stage 1: key blocks that every query of this block sees completely (no mask).
    n_full = ((p_min + 1) // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        kv_off = base + (start_n + offs_n)[:, None].to(tl.int64) * row + offs_d[None, :]
        k = tl.load(K + kv_off, mask=d_ok[None, :], other=0.0)
        v = tl.load(V + kv_off, mask=d_ok[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    # Stage 2: the diagonal blocks, masked causally. The first one holds key n_full <= p_min,
    # so every row has a finite running max from here on.
    for start_n in range(n_full, p_max + 1, BLOCK_N):
        cols = start_n + offs_n
        kv_off = base + cols[:, None].to(tl.int64) * row + offs_d[None, :]
        kv_ok = (cols < T)[:, None] & d_ok[None, :]
        k = tl.load(K + kv_off, mask=kv_ok, other=0.0)
        v = tl.load(V + kv_off, mask=kv_ok, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        qk = tl.where(cols[None, :] <= pos[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    valid = offs_m < cnt
    o_ptr = Out + base + pos[:, None].to(tl.int64) * row + offs_d[None, :]
    tl.store(o_ptr, acc.to(Out.dtype.element_ty), mask=valid[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh * M + offs_m, m_i + tl.log2(l_i), mask=valid)


@triton.jit
def _delta_kernel(
    Out, DO, DELTA, IDX, CNT, T, H, M,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    cnt = tl.load(CNT + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    valid = offs_m < cnt
    row = H * D
    base = b.to(tl.int64) * T * row + h * D
    pos = tl.load(IDX + b * M + offs_m, mask=offs_m < M, other=0)
    ptr = base + pos[:, None].to(tl.int64) * row + offs_d[None, :]
    ok = valid[:, None] & (offs_d < D)[None, :]
    o = tl.load(Out + ptr, mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + ptr, mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh * M + offs_m, tl.sum(o * do, axis=1), mask=offs_m < M)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, IDX, CNT,
    qk_scale, sm_scale,
    T, H, M,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    cnt = tl.load(CNT + b)
    if pid_m * BLOCK_M >= cnt:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    valid = offs_m < cnt
    row = H * D
    base = b.to(tl.int64) * T * row + h * D
    pos = tl.load(IDX + b * M + offs_m, mask=offs_m < M, other=0)
    p_min = tl.load(IDX + b * M + pid_m * BLOCK_M)
    p_max = tl.max(pos, axis=0)
    q_off = base + pos[:, None].to(tl.int64) * row + offs_d[None, :]
    q = tl.load(Q + q_off, mask=d_ok[None, :], other=0.0)
    do = tl.load(DO + q_off, mask=valid[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * M + offs_m, mask=valid, other=0.0)
    delta = tl.load(DELTA + pid_bh * M + offs_m, mask=valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, p_max + 1, BLOCK_N):
        cols = start_n + offs_n
        kv_off = base + cols[:, None].to(tl.int64) * row + offs_d[None, :]
        kv_ok = (cols < T)[:, None] & d_ok[None, :]
        k = tl.load(K + kv_off, mask=kv_ok, other=0.0)
        v = tl.load(V + kv_off, mask=kv_ok, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if start_n + BLOCK_N > p_min:  # diagonal block: apply the causal mask
            p = tl.where((cols[None, :] <= pos[:, None]) & valid[:, None], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=valid[:, None] & d_ok[None, :])


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, IDX, CNT,
    qk_scale, sm_scale,
    T, H, M,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SEARCH_STEPS: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    cnt = tl.load(CNT + b)
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row = H * D
    base = b.to(tl.int64) * T * row + h * D
    kv_off = base + offs_n[:, None].to(tl.int64) * row + offs_d[None, :]
    kv_ok = (offs_n < T)[:, None] & d_ok[None, :]
    k = tl.load(K + kv_off, mask=kv_ok, other=0.0)
    v = tl.load(V + kv_off, mask=kv_ok, other=0.0)
    # Binary search: the first routed index whose position is >= n0 (queries before it
    # cannot see these keys).
    lo = cnt * 0
    hi = cnt
    for _ in range(SEARCH_STEPS):
        live = lo < hi
        mid = (lo + hi) // 2
        pm = tl.load(IDX + b * M + mid, mask=live, other=0)
        right = live & (pm < n0)
        left = live & (pm >= n0)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(left, mid, hi)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    offs_mb = tl.arange(0, BLOCK_M)
    for start_m in range(lo, cnt, BLOCK_M):
        offs_m = start_m + offs_mb
        valid = offs_m < cnt
        pos = tl.load(IDX + b * M + offs_m, mask=valid, other=0)
        q_off = base + pos[:, None].to(tl.int64) * row + offs_d[None, :]
        q_ok = valid[:, None] & d_ok[None, :]
        q = tl.load(Q + q_off, mask=q_ok, other=0.0)
        do = tl.load(DO + q_off, mask=q_ok, other=0.0)
        lse = tl.load(LSE + pid_bh * M + offs_m, mask=valid, other=0.0)
        delta = tl.load(DELTA + pid_bh * M + offs_m, mask=valid, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        # tl.where (not a product) so an overflowing exp2 in a masked lane never leaks.
        p_t = tl.where((offs_n[:, None] <= pos[None, :]) & valid[None, :], tl.exp2(qk_t - lse[None, :]), 0.0)
        dv = dv + tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = dk + tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + kv_off, dk.to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_ok)


# --------------------------------------------------------------------------------------------
# configs: a pruned grid on the GPU, one small fixed config under the interpreter
# --------------------------------------------------------------------------------------------


def _gpu_configs(block_names: tuple[str, str]) -> list:
    configs = []
    for bm in (64, 128):
        for bn in (32, 64, 128):
            for warps in (4, 8):
                for stages in (2, 3):
                    configs.append(
                        triton.Config({block_names[0]: bm, block_names[1]: bn}, num_warps=warps, num_stages=stages)
                    )
    return configs


def _prune(configs, named_args, **kwargs):
    """Drop tiles whose register footprint is too large for the head dim, and 8 warps on tiny tiles."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    kept = []
    for cfg in configs:
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        if block_d >= 128 and bm * bn > 64 * 64:
            continue
        if cfg.num_warps == 8 and bm * bn < 128 * 64:
            continue
        kept.append(cfg)
    return kept or configs[:1]


# CRAM_TRITON_AUTOTUNE=0 runs one fixed GPU tile (64 x 64, 4 warps, 2 stages) instead of
# autotuning: the autotuner compiles and times every kept config for each new T, which takes
# minutes on a fresh machine (a first H200 run spent 7 minutes without finishing the first case).
_AUTOTUNE = os.environ.get("CRAM_TRITON_AUTOTUNE", "1") != "0"
_FIXED_GPU = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}

if _INTERPRET or not _AUTOTUNE:
    _fwd = _fwd_kernel
    _dq = _dq_kernel
    _dkdv = _dkdv_kernel
else:  # pragma: no cover - needs a GPU
    _fwd = triton.autotune(
        configs=_gpu_configs(("BLOCK_M", "BLOCK_N")), key=["T", "BLOCK_D"],
        prune_configs_by={"early_config_prune": _prune},
    )(_fwd_kernel)
    _dq = triton.autotune(
        configs=_gpu_configs(("BLOCK_M", "BLOCK_N")), key=["T", "BLOCK_D"],
        prune_configs_by={"early_config_prune": _prune},
    )(_dq_kernel)
    _dkdv = triton.autotune(
        configs=_gpu_configs(("BLOCK_M", "BLOCK_N")), key=["T", "BLOCK_D"],
        prune_configs_by={"early_config_prune": _prune},
    )(_dkdv_kernel)

_FIXED = {"BLOCK_M": 16, "BLOCK_N": 16}


def _block_kwargs() -> dict:
    if _INTERPRET:
        return dict(_FIXED)
    return {} if _AUTOTUNE else dict(_FIXED_GPU)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep full fp32 products (tf32 would cost ~3 decimal digits).
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------
# host launchers (keyword-only)
# --------------------------------------------------------------------------------------------


def pack_routes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask [B, T]`` -> ``(idx [B, M] int32, counts [B] int32)``; see the module docstring."""
    counts = mask.sum(1)
    m = max(int(counts.max()) if mask.numel() else 0, 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :m]
    last = order.gather(1, (counts - 1).clamp(min=0)[:, None])
    lane = torch.arange(m, device=mask.device)[None, :]
    idx = torch.where(lane < counts[:, None], order, last)
    return idx.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous()


def routed_attention_fwd(
    *, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launch. Returns ``out [B, T, H, D]`` (non-routed rows zero) and the base-2
    log-sum-exp ``lse [B, H, M]`` of each routed row."""
    bsz, t_len, h, d = q.shape
    m = idx.shape[1]
    out = _empty((bsz, t_len, h, d), dtype=q.dtype, device=q.device)
    lse = _empty((bsz, h, m), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(d))
    fixed = _block_kwargs()

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), bsz * h)

    _fwd[grid](
        q, k, v, out, lse, idx, counts, scale * _LOG2E, t_len, h, m,
        D=d, BLOCK_D=block_d, PRECISION=_precision(q.dtype), **fixed,
    )
    return out, lse


def routed_attention_bwd(
    *,
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    idx: torch.Tensor,
    counts: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launch: ``(dq, dk, dv)``, each ``[B, T, H, D]``; dq is zero at non-routed rows."""
    bsz, t_len, h, d = q.shape
    m = idx.shape[1]
    block_d = max(16, triton.next_power_of_2(d))
    delta = _empty((bsz, h, m), dtype=torch.float32, device=q.device)
    _delta_kernel[(triton.cdiv(m, 16), bsz * h)](
        out, grad_out, delta, idx, counts, t_len, h, m, D=d, BLOCK_D=block_d, BLOCK_M=16
    )
    dq = _empty((bsz, t_len, h, d), dtype=q.dtype, device=q.device)
    dk = _empty((bsz, t_len, h, d), dtype=k.dtype, device=q.device)
    dv = _empty((bsz, t_len, h, d), dtype=v.dtype, device=q.device)
    fixed = _block_kwargs()
    prec = _precision(q.dtype)

    def grid_m(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), bsz * h)

    def grid_n(meta):
        return (triton.cdiv(t_len, meta["BLOCK_N"]), bsz * h)

    _dq[grid_m](
        q, k, v, grad_out, dq, lse, delta, idx, counts, scale * _LOG2E, scale, t_len, h, m,
        D=d, BLOCK_D=block_d, PRECISION=prec, **fixed,
    )
    _dkdv[grid_n](
        q, k, v, grad_out, dk, dv, lse, delta, idx, counts, scale * _LOG2E, scale, t_len, h, m,
        D=d, BLOCK_D=block_d, SEARCH_STEPS=_SEARCH_STEPS, PRECISION=prec, **fixed,
    )
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------


class RoutedAttentionTriton(torch.autograd.Function):
    """Routed attention with the fused kernels. Inputs: q, k, v ``[B, T, H, D]``, mask bool
    ``[B, T]``, scale. Tensors may live on the CPU only under ``TRITON_INTERPRET=1``."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        idx, counts = pack_routes(mask)
        keep = mask[:, :, None, None]
        out, lse = routed_attention_fwd(q=q, k=k, v=v, idx=idx, counts=counts, scale=scale)
        out = out.masked_fill(~keep, 0.0)  # the kernel writes routed rows only
        ctx.save_for_backward(q, k, v, out, lse, idx, counts, mask)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, idx, counts, mask = ctx.saved_tensors
        dq, dk, dv = routed_attention_bwd(
            grad_out=grad_out.contiguous(), q=q, k=k, v=v, out=out, lse=lse, idx=idx,
            counts=counts, scale=ctx.scale,
        )
        dq = dq.masked_fill(~mask[:, :, None, None], 0.0)
        return dq, dk, dv, None, None


def routed_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Routed attention on the fused kernels; shapes as in the public ``routed_attention``."""
    return RoutedAttentionTriton.apply(q, k, v, mask, scale)

"""Fused Triton kernels for the selective SSM scan.

Layers: ``@triton.jit`` kernels -> keyword-only host launchers (:func:`ssm_scan_fwd`,
:func:`ssm_scan_bwd`) -> :class:`SsmScanTriton` (``torch.autograd.Function``) ->
:func:`ssm_scan_triton`, which the public ``ssm_scan`` calls for CUDA tensors.

One program owns one (batch row, head, block of ``P`` columns) and keeps its ``N x BLOCK_P``
slice of the state on chip for the whole sequence, so the state never round-trips through memory
per step. The forward pass stores the state at every chunk boundary (every ``chunk_size``
steps). The backward pass walks the chunks in reverse: it recomputes the chunk's states from its
checkpoint into a small scratch buffer, then runs the adjoint recursion

    dS_t   = exp(log_a_{t+1}) dS_{t+1} + c_t dy_t^T
    dx_t   = dS_t^T b_t          db_t = dS_t x_t          dc_t = S_t dy_t
    dlog_a_t = exp(log_a_t) <dS_t, S_{t-1}>

Products over ``P`` (``db``, ``dc``, ``dlog_a``) are written per ``P`` block and summed by the
launcher. Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - exercised only without triton
    raise ImportError("the SSM scan on CUDA needs Triton: pip install 'triton>=3.0'") from exc


def _empty(shape, *, dtype, device) -> torch.Tensor:
    """Allocate a kernel output (tests replace this to poison buffers with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _scan_fwd_kernel(
    X, A, Bp, C, S0, Y, SF, CKPT,
    T, H, P, N, N_CHUNKS,
    CHUNK: tl.constexpr, HAS_S0: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    n_ok = offs_n < N
    p_ok = offs_p < P
    s_ok = n_ok[:, None] & p_ok[None, :]
    s_off = offs_n[:, None] * P + offs_p[None, :]  # offsets inside one [N, P] state
    if HAS_S0:
        state = tl.load(S0 + pid_bh.to(tl.int64) * N * P + s_off, mask=s_ok, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    ckpt_base = CKPT + pid_bh.to(tl.int64) * N_CHUNKS * N * P
    for t in range(0, T):
        if t % CHUNK == 0:  # the state entering chunk t // CHUNK
            tl.store(ckpt_base + (t // CHUNK) * N * P + s_off, state, mask=s_ok)
        row = (b.to(tl.int64) * T + t) * H + h
        a = tl.load(A + row).to(tl.float32)
        x = tl.load(X + row * P + offs_p, mask=p_ok, other=0.0).to(tl.float32)
        bv = tl.load(Bp + row * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        cv = tl.load(C + row * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        state = tl.exp(a) * state + bv[:, None] * x[None, :]
        y = tl.sum(cv[:, None] * state, axis=0)
        tl.store(Y + row * P + offs_p, y.to(Y.dtype.element_ty), mask=p_ok)
    tl.store(SF + pid_bh.to(tl.int64) * N * P + s_off, state.to(SF.dtype.element_ty), mask=s_ok)


@triton.jit
def _scan_bwd_kernel(
    X, A, Bp, C, DY, DSF, CKPT, WS,
    DX, DB, DC, DA, DS0,
    T, H, P, N, N_CHUNKS, BH,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    n_ok = offs_n < N
    p_ok = offs_p < P
    s_ok = n_ok[:, None] & p_ok[None, :]
    s_off = offs_n[:, None] * P + offs_p[None, :]
    # Scratch for one chunk: slot 0 holds the state entering the chunk, slot i+1 the state
    # after its step i. Each program owns a private scratch area.
    ws_base = WS + (pid_p * BH + pid_bh).to(tl.int64) * (CHUNK + 1) * BLOCK_N * BLOCK_P
    w_off = offs_n[:, None] * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    ckpt_base = CKPT + pid_bh.to(tl.int64) * N_CHUNKS * N * P
    part = pid_p.to(tl.int64) * BH * T  # this P block's slice of the partial-sum outputs
    ds = tl.load(DSF + pid_bh.to(tl.int64) * N * P + s_off, mask=s_ok, other=0.0).to(tl.float32)
    for i in range(0, N_CHUNKS):
        cc = N_CHUNKS - 1 - i
        t0 = cc * CHUNK
        t1 = tl.minimum(T, t0 + CHUNK)
        st = tl.load(ckpt_base + cc * N * P + s_off, mask=s_ok, other=0.0)
        tl.store(ws_base + w_off, st)
        for t in range(t0, t1):  # recompute the chunk's states
            row = (b.to(tl.int64) * T + t) * H + h
            a = tl.load(A + row).to(tl.float32)
            x = tl.load(X + row * P + offs_p, mask=p_ok, other=0.0).to(tl.float32)
            bv = tl.load(Bp + row * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            st = tl.exp(a) * st + bv[:, None] * x[None, :]
            tl.store(ws_base + (t - t0 + 1) * BLOCK_N * BLOCK_P + w_off, st)
        tl.debug_barrier()  # scratch written by all threads before any thread reads it back
        for j in range(0, t1 - t0):  # adjoint recursion, last step first
            t = t1 - 1 - j
            row = (b.to(tl.int64) * T + t) * H + h
            a = tl.load(A + row).to(tl.float32)
            x = tl.load(X + row * P + offs_p, mask=p_ok, other=0.0).to(tl.float32)
            bv = tl.load(Bp + row * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            cv = tl.load(C + row * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * P + offs_p, mask=p_ok, other=0.0).to(tl.float32)
            s_t = tl.load(ws_base + (t - t0 + 1) * BLOCK_N * BLOCK_P + w_off)
            s_prev = tl.load(ws_base + (t - t0) * BLOCK_N * BLOCK_P + w_off)
            ds = ds + cv[:, None] * dy[None, :]  # total gradient of S_t
            tl.store(DX + row * P + offs_p, tl.sum(bv[:, None] * ds, axis=0).to(DX.dtype.element_ty), mask=p_ok)
            tl.store(DB + (part + row) * N + offs_n, tl.sum(ds * x[None, :], axis=1), mask=n_ok)
            tl.store(DC + (part + row) * N + offs_n, tl.sum(s_t * dy[None, :], axis=1), mask=n_ok)
            decay = tl.exp(a)
            tl.store(DA + part + row, decay * tl.sum(tl.sum(ds * s_prev, axis=1), axis=0))
            ds = decay * ds
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(DS0 + pid_bh.to(tl.int64) * N * P + s_off, ds.to(DS0.dtype.element_ty), mask=s_ok)


def _blocks(n: int, p: int) -> tuple[int, int]:
    block_n = max(16, triton.next_power_of_2(n))
    block_p = min(max(16, triton.next_power_of_2(p)), 64)
    return block_n, block_p


def ssm_scan_fwd(
    *,
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward launch: ``(y [B, T, H, P], final_state [B, H, N, P], checkpoints)``; the
    checkpoints ``[B, H, ceil(T / chunk_size), N, P]`` (float32) feed the backward pass."""
    bsz, t_len, h, p = x.shape
    n = b.shape[-1]
    n_chunks = max(1, -(-t_len // chunk_size))
    block_n, block_p = _blocks(n, p)
    y = _empty((bsz, t_len, h, p), dtype=x.dtype, device=x.device)
    final = _empty((bsz, h, n, p), dtype=x.dtype, device=x.device)
    ckpt = _empty((bsz, h, n_chunks, n, p), dtype=torch.float32, device=x.device)
    if t_len == 0:
        ckpt.zero_()
        if initial_state is None:
            return y, final.zero_(), ckpt
        return y, final.copy_(initial_state), ckpt
    # Triton needs a tensor argument; with HAS_S0 false the kernel never reads it.
    s0 = initial_state if initial_state is not None else x
    grid = (bsz * h, triton.cdiv(p, block_p))
    _scan_fwd_kernel[grid](
        x, log_a, b, c, s0, y, final, ckpt, t_len, h, p, n, n_chunks,
        CHUNK=chunk_size, HAS_S0=initial_state is not None, BLOCK_N=block_n, BLOCK_P=block_p,
    )
    return y, final, ckpt


def ssm_scan_bwd(
    *,
    grad_y: torch.Tensor,
    grad_final: torch.Tensor,
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    checkpoints: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launch: ``(dx, dlog_a, db, dc, d_initial_state)`` in float32 except ``dx``."""
    bsz, t_len, h, p = x.shape
    n = b.shape[-1]
    n_chunks = checkpoints.shape[2]
    block_n, block_p = _blocks(n, p)
    n_pb = triton.cdiv(p, block_p)
    dev = x.device
    dx = _empty((bsz, t_len, h, p), dtype=x.dtype, device=dev)
    db = _empty((n_pb, bsz, t_len, h, n), dtype=torch.float32, device=dev)
    dc = _empty((n_pb, bsz, t_len, h, n), dtype=torch.float32, device=dev)
    da = _empty((n_pb, bsz, t_len, h), dtype=torch.float32, device=dev)
    ds0 = _empty((bsz, h, n, p), dtype=torch.float32, device=dev)
    if t_len == 0:
        return dx, da.sum(0), db.sum(0), dc.sum(0), grad_final.float()
    ws = torch.empty(n_pb * bsz * h * (chunk_size + 1) * block_n * block_p, dtype=torch.float32, device=dev)
    _scan_bwd_kernel[(bsz * h, n_pb)](
        x, log_a, b, c, grad_y, grad_final, checkpoints, ws, dx, db, dc, da, ds0,
        t_len, h, p, n, n_chunks, bsz * h,
        CHUNK=chunk_size, BLOCK_N=block_n, BLOCK_P=block_p,
    )
    return dx, da.sum(0), db.sum(0), dc.sum(0), ds0


class SsmScanTriton(torch.autograd.Function):
    """The scan on the fused kernels. Tensors may live on the CPU only under ``TRITON_INTERPRET=1``."""

    @staticmethod
    def forward(ctx, x, log_a, b, c, initial_state, chunk_size):
        x, log_a, b, c = x.contiguous(), log_a.contiguous(), b.contiguous(), c.contiguous()
        s0 = initial_state.contiguous() if initial_state is not None else None
        y, final, ckpt = ssm_scan_fwd(x=x, log_a=log_a, b=b, c=c, initial_state=s0, chunk_size=chunk_size)
        ctx.save_for_backward(x, log_a, b, c, ckpt)
        ctx.chunk_size = chunk_size
        ctx.s0_dtype = None if initial_state is None else initial_state.dtype
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        x, log_a, b, c, ckpt = ctx.saved_tensors
        dx, da, db, dc, ds0 = ssm_scan_bwd(
            grad_y=grad_y.contiguous(), grad_final=grad_final.contiguous(), x=x, log_a=log_a, b=b,
            c=c, checkpoints=ckpt, chunk_size=ctx.chunk_size,
        )
        d_init = None if ctx.s0_dtype is None else ds0.to(ctx.s0_dtype)
        return dx, da.to(log_a.dtype), db.to(b.dtype), dc.to(c.dtype), d_init, None


def ssm_scan_triton(
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan on the fused kernels; shapes as in the public ``ssm_scan``."""
    return SsmScanTriton.apply(x, log_a, b, c, initial_state, chunk_size)

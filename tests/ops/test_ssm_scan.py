"""ssm_scan: the float64 reference, the chunked CPU path and the interpreted Triton kernels.

Outputs, final states and every gradient (x, log_a, b, c, initial state) are compared against
the sequential float64 reference under random upstream gradients on y and on the final state.
"""

from __future__ import annotations

import math

import pytest
import torch
from op_testing import TOL, rel_err

from cramkit.errors import CramError
from cramkit.gpu.ops.ssm_scan import ssm_scan
from cramkit.gpu.ops.ssm_scan.cpu import ssm_scan_chunked
from cramkit.gpu.ops.ssm_scan.reference import ssm_scan_reference

# (B, T, H, P, N, chunk_size, with initial state): awkward sizes, chunks that do not divide T,
# a chunk longer than T, single-step chunks, P split over two kernel blocks (P=70).
SHAPES = [
    (2, 63, 2, 40, 5, 16, True),
    (1, 63, 1, 70, 3, 64, False),
    (2, 5, 1, 3, 17, 2, True),
    (1, 17, 2, 4, 4, 1, True),
    (1, 1, 1, 2, 2, 64, True),
]


def _inputs(shape, dtype=torch.float32, seed=0):
    bsz, t_len, h, p, n, _, with_s0 = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, t_len, h, p, generator=gen)
    log_a = -torch.rand(bsz, t_len, h, generator=gen) * 2.0
    log_a[:, ::7] = 0.0  # exact "no decay" steps
    b = torch.randn(bsz, t_len, h, n, generator=gen)
    c = torch.randn(bsz, t_len, h, n, generator=gen)
    s0 = torch.randn(bsz, h, n, p, generator=gen) if with_s0 else None
    gy = torch.randn(bsz, t_len, h, p, generator=gen)
    gs = torch.randn(bsz, h, n, p, generator=gen)
    cast = [t.to(dtype) for t in (x, log_a, b, c)]
    return cast, (None if s0 is None else s0.to(dtype)), gy.to(dtype), gs.to(dtype)


def _run(fn, tensors, s0, gy, gs, chunk_size):
    leaves = [t.clone().requires_grad_() for t in tensors]
    s0_leaf = None if s0 is None else s0.clone().requires_grad_()
    y, final = fn(*leaves, initial_state=s0_leaf, chunk_size=chunk_size)
    wrt = leaves + ([s0_leaf] if s0_leaf is not None else [])
    grads = torch.autograd.grad((y * gy).sum() + (final * gs).sum(), wrt)
    return y, final, grads


def _reference(tensors, s0, gy, gs):
    return _run(
        lambda x, a, b, c, initial_state, chunk_size: ssm_scan_reference(x, a, b, c, initial_state=initial_state),
        [t.double() for t in tensors], None if s0 is None else s0.double(), gy.double(), gs.double(), 0,
    )


def _check(fn, shape, dtype):
    tensors, s0, gy, gs = _inputs(shape, dtype)
    y, final, grads = _run(fn, tensors, s0, gy, gs, shape[5])
    ry, rfinal, rgrads = _reference(tensors, s0, gy, gs)
    tol = TOL[dtype] * 5
    assert y.dtype == dtype and final.dtype == dtype
    assert rel_err(y, ry) < tol
    assert rel_err(final, rfinal) < tol
    for name, got, want in zip(["x", "log_a", "b", "c", "initial_state"], grads, rgrads):
        assert rel_err(got, want) < tol, f"d{name}"


def test_reference_matches_the_closed_form_of_a_scalar_scan():
    # N = P = 1, constant decay a: y_t = c_t * sum_{s<=t} a^(t-s) b_s x_s
    t_len, decay = 9, 0.8
    gen = torch.Generator().manual_seed(3)
    x, b, c = (torch.randn(1, t_len, 1, 1, generator=gen, dtype=torch.float64) for _ in range(3))
    log_a = torch.full((1, t_len, 1), math.log(decay), dtype=torch.float64)
    y, final = ssm_scan_reference(x, log_a, b, c)
    for t in range(t_len):
        s = sum(decay ** (t - s) * b[0, s, 0, 0] * x[0, s, 0, 0] for s in range(t + 1))
        assert abs(y[0, t, 0, 0].item() - (c[0, t, 0, 0] * s).item()) < 1e-12
    assert abs(final.item() - s.item()) < 1e-12


@pytest.mark.parametrize("shape", SHAPES)
def test_triton_kernels_match_reference(ssm_triton, shape):
    _check(ssm_triton.ssm_scan_triton, shape, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_chunked_cpu_path_matches_reference(shape, dtype):
    _check(ssm_scan_chunked, shape, dtype)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_public_function_matches_reference(shape):
    _check(ssm_scan, shape, torch.float32)


def test_final_state_chains_into_the_next_segment():
    tensors, s0, _, _ = _inputs((2, 40, 2, 6, 4, 8, True), torch.float64)
    y_full, s_full = ssm_scan(*tensors, initial_state=s0, chunk_size=8)
    first = [t[:, :25] for t in tensors]
    second = [t[:, 25:] for t in tensors]
    y1, s1 = ssm_scan(*first, initial_state=s0, chunk_size=8)
    y2, s2 = ssm_scan(*second, initial_state=s1, chunk_size=8)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full)
    torch.testing.assert_close(s2, s_full)


def test_result_does_not_depend_on_chunk_size():
    tensors, s0, _, _ = _inputs((1, 50, 2, 5, 3, 1, True), torch.float64)
    y1, s1 = ssm_scan(*tensors, initial_state=s0, chunk_size=1)
    for cs in (3, 16, 50, 200):
        y, s = ssm_scan(*tensors, initial_state=s0, chunk_size=cs)
        torch.testing.assert_close(y, y1)
        torch.testing.assert_close(s, s1)


def test_strong_decay_does_not_overflow():
    tensors, s0, _, _ = _inputs((1, 64, 1, 4, 3, 64, True), torch.float32)
    tensors[1] = torch.full_like(tensors[1], -80.0)  # exp(-80 * 63) underflows in float32
    y, s = ssm_scan(*tensors, initial_state=s0, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    ry, rs = ssm_scan_reference(*tensors, initial_state=s0)
    assert rel_err(y, ry) < 1e-5


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, a, b, c: (x[0], a, b, c), r"\[B, T, H, P\]"),
        (lambda x, a, b, c: (x, a[..., :1], b, c), r"log_a must have shape"),
        (lambda x, a, b, c: (x, a, b[..., 1:, :], c), r"b must have shape"),
        (lambda x, a, b, c: (x, a, b, c[..., :-1]), r"c must have the shape"),
        (lambda x, a, b, c: (x, a.abs() + 0.1, b, c), r"<= 0"),
        (lambda x, a, b, c: (x, a * float("nan"), b, c), r"NaN"),
        (lambda x, a, b, c: (x.long(), a, b, c), r"float16, bfloat16"),
    ],
)
def test_bad_input_raises_a_clear_error(mutate, message):
    tensors, _, _, _ = _inputs(SHAPES[0])
    with pytest.raises(CramError, match=message):
        ssm_scan(*mutate(*tensors))


def test_bad_state_and_chunk_size_raise():
    tensors, s0, _, _ = _inputs(SHAPES[0])
    with pytest.raises(CramError, match="initial_state must have shape"):
        ssm_scan(*tensors, initial_state=s0[:, :, :-1])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(CramError, match="chunk_size"):
            ssm_scan(*tensors, chunk_size=bad)

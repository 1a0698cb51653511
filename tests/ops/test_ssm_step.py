"""ssm_step (one recurrence step for decoding) against its float64 reference and the scan."""

from __future__ import annotations

import pytest
import torch
from op_testing import TOL, rel_err

from cramkit.errors import CramError
from cramkit.gpu.ops.ssm_scan import ssm_scan, ssm_step
from cramkit.gpu.ops.ssm_scan.cpu import auto_chunk_size, ssm_scan_chunked
from cramkit.gpu.ops.ssm_scan.reference import ssm_scan_reference, ssm_step_reference


def _step_inputs(bsz=2, h=3, n=5, p=7, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(bsz, h, n, p, generator=gen)
    x = torch.randn(bsz, h, p, generator=gen)
    log_a = -torch.rand(bsz, h, generator=gen) * 2
    b, c = torch.randn(bsz, h, n, generator=gen), torch.randn(bsz, h, n, generator=gen)
    return [t.to(dtype) for t in (state, x, log_a, b, c)]


def test_step_reference_is_one_step_of_the_scan_reference():
    state, x, log_a, b, c = _step_inputs(dtype=torch.float64)
    y, new = ssm_step_reference(state, x, log_a, b, c)
    ys, final = ssm_scan_reference(x[:, None], log_a[:, None], b[:, None], c[:, None], initial_state=state)
    torch.testing.assert_close(y, ys[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(new, final, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_step_matches_reference_values_and_gradients(dtype):
    tensors = _step_inputs(dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in tensors]
    y, new = ssm_step(*leaves)
    assert y.dtype == dtype and new.dtype == dtype
    ref_leaves = [t.double().requires_grad_() for t in tensors]
    ry, rnew = ssm_step_reference(*ref_leaves)
    tol = TOL[dtype] * 5
    assert rel_err(y, ry) < tol and rel_err(new, rnew) < tol
    gen = torch.Generator().manual_seed(1)
    gy, gs = torch.randn(y.shape, generator=gen), torch.randn(new.shape, generator=gen)
    grads = torch.autograd.grad((y.double() * gy).sum() + (new.double() * gs).sum(), leaves)
    rgrads = torch.autograd.grad((ry * gy.double()).sum() + (rnew * gs.double()).sum(), ref_leaves)
    for name, got, want in zip(["state", "x", "log_a", "b", "c"], grads, rgrads):
        assert rel_err(got, want) < tol * 4, f"d{name}"


def test_state_is_not_modified_in_place():
    tensors = _step_inputs()
    before = tensors[0].clone()
    ssm_step(*tensors)
    assert torch.equal(tensors[0], before)


def test_prefill_then_steps_equal_the_whole_scan():
    gen = torch.Generator().manual_seed(2)
    bsz, t_len, h, p, n = 2, 37, 2, 6, 4
    x = torch.randn(bsz, t_len, h, p, generator=gen)
    log_a = -torch.rand(bsz, t_len, h, generator=gen)
    b, c = torch.randn(bsz, t_len, h, n, generator=gen), torch.randn(bsz, t_len, h, n, generator=gen)
    y_full, s_full = ssm_scan(x, log_a, b, c)
    split = 30
    y_pre, state = ssm_scan(x[:, :split], log_a[:, :split], b[:, :split], c[:, :split])
    ys = [y_pre]
    for t in range(split, t_len):
        y_t, state = ssm_step(state, x[:, t], log_a[:, t], b[:, t], c[:, t])
        ys.append(y_t[:, None])
    assert rel_err(torch.cat(ys, 1), y_full) < 1e-5
    assert rel_err(state, s_full) < 1e-5


@pytest.mark.parametrize(
    "index, bad, message",
    [
        (0, lambda s: s[0], r"state must have shape"),
        (1, lambda x: x[..., :-1], r"x must have shape"),
        (2, lambda a: a[:, :1], r"log_a must have shape"),
        (3, lambda b: b[..., 1:], r"b must have shape"),
        (4, lambda c: c[:1], r"c must have shape"),
        (1, lambda x: x.long(), r"float16, bfloat16"),
        (3, lambda b: b.tolist(), r"torch.Tensor"),
    ],
)
def test_bad_step_input_raises_a_clear_error(index, bad, message):
    tensors = _step_inputs()
    tensors[index] = bad(tensors[index])
    with pytest.raises(CramError, match=message):
        ssm_step(*tensors)


@pytest.mark.parametrize("t_len", [1, 40, 64, 65, 300])
def test_auto_chunk_size_matches_the_reference(t_len):
    gen = torch.Generator().manual_seed(t_len)
    x = torch.randn(1, t_len, 2, 3, generator=gen, dtype=torch.float64)
    log_a = -torch.rand(1, t_len, 2, generator=gen, dtype=torch.float64)
    b, c = (torch.randn(1, t_len, 2, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    assert 1 <= auto_chunk_size(t_len) <= max(64, t_len)
    y, s = ssm_scan_chunked(x, log_a, b, c)
    ry, rs = ssm_scan_reference(x, log_a, b, c)
    assert rel_err(y, ry) < 1e-10 and rel_err(s, rs) < 1e-10


def test_chunk_recurrence_backward_passes_gradcheck():
    from cramkit.gpu.ops.ssm_scan.cpu import ChunkRecurrence

    gen = torch.Generator().manual_seed(5)
    decay = torch.rand(2, 5, 3, generator=gen, dtype=torch.float64).requires_grad_()
    u = torch.randn(2, 5, 3, 2, 4, generator=gen, dtype=torch.float64).requires_grad_()
    s0 = torch.randn(2, 3, 2, 4, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(ChunkRecurrence.apply, (decay, u, s0))

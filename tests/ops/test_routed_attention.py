"""routed_attention: the float64 reference, the interpreted Triton kernels and the CPU paths.

Chain of trust: the reference is checked against a per-query loop; every fast path is checked
against the reference (outputs and all three gradients under a random upstream gradient) at
awkward sizes: T=63, D=40, empty and full routing, one routed query, ragged rows.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from op_testing import TOL, B, D, H, T, rel_err, routed_inputs, routed_masks

from cramkit.errors import CramError
from cramkit.gpu.ops.routed_attention import routed_attention
from cramkit.gpu.ops.routed_attention.cpu import (
    routed_attention_blocked,
    routed_attention_dense,
    routed_attention_gathered,
    routed_attention_keyblock,
)
from cramkit.gpu.ops.routed_attention.interface import route_to_mask
from cramkit.gpu.ops.routed_attention.reference import routed_attention_reference

MASKS = routed_masks(1)
_inputs = routed_inputs


def _run(fn, q, k, v, g, mask):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, mask)
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(leaves, grads)]
    return out, grads


def _reference(q, k, v, g, mask):
    return _run(lambda a, b, c, m: routed_attention_reference(a, b, c, m, scale=D**-0.5), q.double(), k.double(), v.double(), g.double(), mask)


def _check(fn, mask, dtype):
    q, k, v, g = _inputs(dtype)
    out, grads = _run(fn, q, k, v, g, mask)
    ref_out, ref_grads = _reference(q, k, v, g, mask)
    assert out.dtype == dtype and out.shape == (B, T, H, D)
    tol = TOL[dtype]
    assert rel_err(out, ref_out) < tol
    for name, got, want in zip("qkv", grads, ref_grads):
        assert rel_err(got, want) < tol, f"d{name}"
    off = ~mask
    assert torch.all(out[off] == 0), "non-routed rows must be exactly zero"
    assert torch.all(grads[0][off] == 0), "dq must be zero at non-routed rows"


def test_reference_matches_a_per_query_loop():
    q, k, v, _ = _inputs(torch.float64)
    mask = MASKS["random"]
    ref = routed_attention_reference(q, k, v, mask, scale=0.3)
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                assert torch.all(ref[b, t] == 0)
                continue
            s = torch.einsum("hd,khd->hk", q[b, t], k[b, : t + 1]) * 0.3
            want = torch.einsum("hk,khd->hd", torch.softmax(s, -1), v[b, : t + 1])
            torch.testing.assert_close(ref[b, t], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(MASKS))
def test_triton_kernels_match_reference(ra_triton, case):
    fn = lambda q, k, v, m: ra_triton.routed_attention_triton(q, k, v, m, scale=D**-0.5)  # noqa: E731
    _check(fn, MASKS[case], torch.float32)


@pytest.mark.parametrize("width", [1, 5, 16, 64, None])
@pytest.mark.parametrize("case", list(MASKS))
def test_blocked_cpu_path_matches_reference(case, width):
    fn = lambda q, k, v, m: routed_attention_blocked(q, k, v, m, scale=D**-0.5, width=width)  # noqa: E731
    _check(fn, MASKS[case], torch.float32)


@pytest.mark.parametrize("block", [1, 7, 16, 64, None])
@pytest.mark.parametrize("case", list(MASKS))
def test_keyblock_cpu_path_matches_reference(case, block):
    fn = lambda q, k, v, m: routed_attention_keyblock(q, k, v, m, scale=D**-0.5, block=block)  # noqa: E731
    _check(fn, MASKS[case], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_keyblock_cpu_path_keeps_the_dtype(dtype):
    fn = lambda q, k, v, m: routed_attention_keyblock(q, k, v, m, scale=D**-0.5, block=16)  # noqa: E731
    _check(fn, MASKS["ragged"], dtype)


@pytest.mark.parametrize("case", ["random", "ragged", "one", "empty"])
def test_keyblock_path_never_reads_uninitialised_memory(monkeypatch, case):
    real = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda t, *a, **kw: real(t, *a, **kw).fill_(float("nan")))
    fn = lambda q, k, v, m: routed_attention_keyblock(q, k, v, m, scale=D**-0.5, block=16)  # noqa: E731
    _check(fn, MASKS[case], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(MASKS))
def test_public_function_matches_reference(case, dtype):
    _check(lambda q, k, v, m: routed_attention(q, k, v, m), MASKS[case], dtype)


@pytest.mark.parametrize("fn", [routed_attention_dense, routed_attention_gathered])
@pytest.mark.parametrize("case", ["random", "full", "one"])
def test_other_cpu_paths_match_reference(fn, case):
    _check(lambda q, k, v, m: fn(q, k, v, m, scale=D**-0.5), MASKS[case], torch.float32)


def test_blocked_path_recomputes_when_saving_would_be_too_large(monkeypatch):
    import cramkit.gpu.ops.routed_attention.cpu as cpu

    monkeypatch.setattr(cpu, "_SAVE_LIMIT", 0)
    fn = lambda q, k, v, m: routed_attention_blocked(q, k, v, m, scale=D**-0.5)  # noqa: E731
    _check(fn, MASKS["random"], torch.float32)


@pytest.mark.parametrize("path, size", [(routed_attention_keyblock, "block"), (routed_attention_blocked, "width")],
                         ids=["keyblock", "blocked"])  # fmt: skip
@settings(max_examples=15)
@given(
    t_len=st.integers(1, 40),
    frac=st.floats(0.0, 1.0),
    width=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_tiled_paths_match_reference_on_random_routes(path, size, t_len, frac, width, seed):
    """The key-block path and the blocked path, at any tile size (``block`` / ``width``)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, g = (torch.randn(3, t_len, 2, 8, generator=gen, dtype=torch.float64) for _ in range(4))
    mask = torch.rand(3, t_len, generator=gen) < frac  # rows differ: tiles pad across rows
    out, grads = _run(lambda a, b, c, m: path(a, b, c, m, scale=0.5, **{size: width}), q, k, v, g, mask)
    ref, ref_grads = _run(lambda a, b, c, m: routed_attention_reference(a, b, c, m, scale=0.5), q, k, v, g, mask)
    assert rel_err(out, ref) < 1e-10
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) < 1e-10


def test_index_routes_equal_mask_routes():
    q, k, v, _ = _inputs()
    idx = torch.tensor([[40, -1, 3, 0, -1], [-1, -1, -1, -1, -1]])
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, [0, 3, 40]] = True
    assert torch.equal(route_to_mask(idx, T, B), mask)
    torch.testing.assert_close(routed_attention(q, k, v, idx), routed_attention(q, k, v, mask))


def test_scale_defaults_to_inverse_sqrt_head_dim():
    q, k, v, _ = _inputs()
    mask = MASKS["random"]
    torch.testing.assert_close(routed_attention(q, k, v, mask), routed_attention(q, k, v, mask, scale=D**-0.5))
    assert not torch.allclose(routed_attention(q, k, v, mask), routed_attention(q, k, v, mask, scale=1.0))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda q, k, v, r: (q[..., :-1], k, v, r), "share one shape"),
        (lambda q, k, v, r: (q[0], k, v, r), r"\[B, T, H, D\]"),
        (lambda q, k, v, r: (q, k.double(), v, r), "share one dtype"),
        (lambda q, k, v, r: (q.long(), k, v, r), "float16, bfloat16"),
        (lambda q, k, v, r: (q, k, v, r[:, :-1]), "shape"),
        (lambda q, k, v, r: (q, k, v, r.int()), "dtype"),
        (lambda q, k, v, r: (q, k, v, torch.tensor([[1, 1], [0, -1]])), "more than once"),
        (lambda q, k, v, r: (q, k, v, torch.tensor([[T, -1], [0, -1]])), r"\[0, T\)"),
        (lambda q, k, v, r: (q, k, v, torch.tensor([[-2, -1], [0, -1]])), r"\[0, T\)"),
    ],
)
def test_bad_input_raises_a_clear_error(mutate, message):
    q, k, v, _ = _inputs()
    args = mutate(q, k, v, MASKS["random"])
    with pytest.raises(CramError, match=message):
        routed_attention(*args)


def test_bad_scale_raises():
    q, k, v, _ = _inputs()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CramError, match="scale"):
            routed_attention(q, k, v, MASKS["random"], scale=bad)


def test_cost_model_uses_dense_only_when_nearly_everything_is_routed():
    from cramkit.gpu.bench import routed_mask
    from cramkit.gpu.ops.routed_attention.cpu import choose_cpu_algorithm

    gen = torch.Generator().manual_seed(0)
    assert choose_cpu_algorithm(torch.ones(1, 4096, dtype=torch.bool), 4, 64)[0] == "dense"
    for rho in (1 / 64, 1 / 16, 1 / 4):
        algo, width = choose_cpu_algorithm(routed_mask(1, 4096, rho, gen), 4, 64)
        assert algo in ("blocked", "gathered", "keyblock") and 32 <= width <= 4096
    # sparser routing never picks narrower blocks (fewer queries per block -> wider blocks)
    widths = [choose_cpu_algorithm(routed_mask(1, 4096, r, gen), 4, 64)[1] for r in (1 / 4, 1 / 16, 1 / 64)]
    assert widths == sorted(widths)
    # the measured case of issue 22 (T=4096, rho=1/64) runs the key-block path
    assert choose_cpu_algorithm(routed_mask(1, 4096, 1 / 64, gen), 4, 64)[0] == "keyblock"
    # long sequences with moderate routing: the key-block probabilities would be too large, so
    # position blocks are where blocking pays
    assert choose_cpu_algorithm(routed_mask(1, 16384, 1 / 16, gen), 4, 64)[0] == "blocked"


@pytest.mark.parametrize("case", ["random", "ragged", "one", "empty"])
def test_blocked_path_never_reads_uninitialised_gradient_memory(monkeypatch, case):
    real = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: real(t, **kw).fill_(float("nan")))
    fn = lambda q, k, v, m: routed_attention_blocked(q, k, v, m, scale=D**-0.5, width=16)  # noqa: E731
    _check(fn, MASKS[case], torch.float32)

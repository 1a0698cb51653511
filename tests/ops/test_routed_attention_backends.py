"""routed_attention's backends: the FlexAttention backend against the float64 reference, the
``backend=`` override and the rule ``"auto"`` follows (docs: gpu/ops/routed_attention/README.md).

FlexAttention has no backward on the CPU in torch 2.13, so its CPU check covers the forward
(values, exact zeros at non-routed rows) and the clear error asked for gradients; its gradients
are checked against the reference on a GPU by docs/results/data/gpu_ops_check.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from op_testing import TOL, B, D, H, T, rel_err, routed_inputs, routed_masks

from cramkit.errors import CramError
from cramkit.gpu.ops.routed_attention import interface, routed_attention
from cramkit.gpu.ops.routed_attention.flex import routed_attention_flex
from cramkit.gpu.ops.routed_attention.reference import routed_attention_reference

MASKS = routed_masks(3)
_inputs = routed_inputs


def _check_forward(fn, mask, dtype):
    q, k, v, _ = _inputs(dtype)
    with torch.no_grad():
        out = fn(q, k, v, mask)
    ref = routed_attention_reference(q.double(), k.double(), v.double(), mask, scale=D**-0.5)
    assert out.dtype == dtype and out.shape == (B, T, H, D)
    assert rel_err(out, ref) < TOL[dtype]
    assert torch.all(out[~mask] == 0), "non-routed rows must be exactly zero"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(MASKS))
def test_flex_backend_forward_matches_reference(case, dtype):
    _check_forward(lambda q, k, v, m: routed_attention_flex(q, k, v, m, scale=D**-0.5), MASKS[case], dtype)


def test_flex_backend_through_the_public_function():
    _check_forward(lambda q, k, v, m: routed_attention(q, k, v, m, backend="flex"), MASKS["ragged"], torch.float32)


def test_flex_backend_refuses_gradients_on_the_cpu_with_a_clear_error():
    q, k, v, _ = _inputs()
    with pytest.raises(CramError, match="no backward on the CPU"):
        routed_attention(q.requires_grad_(), k, v, MASKS["random"], backend="flex")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_flex_backend_matches_reference_on_the_cpu(dtype):  # ~25 s of compilation each
    fn = lambda q, k, v, m: routed_attention_flex(q, k, v, m, scale=D**-0.5, compiled=True)  # noqa: E731
    _check_forward(fn, MASKS["ragged"], dtype)


def test_compiled_flex_pads_the_routed_count_to_a_power_of_two():
    from cramkit.gpu.ops.routed_attention.flex import routed_positions

    mask = MASKS["ragged"]  # 45 and 2 routed positions
    pos, valid = routed_positions(mask, bucket=True)
    assert pos.shape == (B, 63) and valid.sum(1).tolist() == [45, 2]  # 64 lanes, capped at T = 63
    assert torch.all(pos[~valid] == T - 1)
    pos, valid = routed_positions(MASKS["one"], bucket=True)
    assert pos.shape == (B, 16) and valid.sum().item() == 1 and pos[1, 0].item() == 37
    assert routed_positions(mask)[0].shape == (B, 45)


@pytest.mark.parametrize("backend", ["cpu", "gathered"])
def test_backend_override_matches_reference_with_gradients(backend):
    q, k, v, g = _inputs(torch.float64)
    mask = MASKS["ragged"]
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = routed_attention(*leaves, mask, backend=backend)
    grads = torch.autograd.grad(out, leaves, g)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = routed_attention_reference(*ref_leaves, mask, scale=D**-0.5)
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    assert rel_err(out, ref) < 1e-10
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) < 1e-10


def test_triton_backend_override_runs_the_kernels(ra_triton):
    _check_forward(lambda q, k, v, m: routed_attention(q, k, v, m, backend="triton"), MASKS["random"], torch.float32)


def test_auto_on_the_cpu_is_the_cpu_cost_model(monkeypatch):
    calls = []
    real = interface._run_backend
    monkeypatch.setattr(interface, "_run_backend", lambda name, *a: calls.append(name) or real(name, *a))
    q, k, v, _ = _inputs()
    routed_attention(q, k, v, MASKS["random"])
    assert calls == ["cpu"]
    assert not interface._MEASURED, "nothing is measured on the CPU"


def test_environment_overrides_auto(monkeypatch):
    q, k, v, _ = _inputs()
    calls = []
    real = interface._run_backend
    monkeypatch.setattr(interface, "_run_backend", lambda name, *a: calls.append(name) or real(name, *a))
    monkeypatch.setenv(interface.ENV_BACKEND, "gathered")
    routed_attention(q, k, v, MASKS["random"])
    assert calls == ["gathered"]
    monkeypatch.setenv(interface.ENV_BACKEND, "fastest")
    with pytest.raises(CramError, match=interface.ENV_BACKEND):
        routed_attention(q, k, v, MASKS["random"])


def test_unknown_backend_raises_a_clear_error():
    q, k, v, _ = _inputs()
    with pytest.raises(CramError, match="unknown routed attention backend"):
        routed_attention(q, k, v, MASKS["random"], backend="fast")


def test_triton_backend_refuses_float64():
    q, k, v, _ = _inputs(torch.float64)
    with pytest.raises(CramError, match="float64"):
        routed_attention(q, k, v, MASKS["random"], backend="triton")


def test_measure_fastest_picks_the_fastest_and_drops_failures():
    import time

    def slow():
        time.sleep(0.02)

    def fails():
        raise RuntimeError("no kernel for this shape")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert interface.measure_fastest({"slow": slow, "broken": fails, "fast": lambda: None}) == "fast"
    assert len(caught) == 1 and "'broken' dropped" in str(caught[0].message)


def test_measured_backend_measures_once_per_shape_class(monkeypatch):
    monkeypatch.setattr(interface, "_MEASURED", {})
    calls = []
    real = interface._run_backend
    monkeypatch.setattr(interface, "_run_backend", lambda name, *a: calls.append(name) or real(name, *a))
    q, k, v, _ = _inputs()
    q.requires_grad_()
    mask = MASKS["random"]
    chosen = interface.measured_backend(q, k, v, mask, D**-0.5, ["cpu", "gathered"], sync=lambda: None)
    assert chosen in ("cpu", "gathered")
    assert sorted(calls) == ["cpu", "cpu", "gathered", "gathered"]  # warm-up + one timed call each
    assert q.grad is None, "the measurement works on detached copies"
    assert list(interface._MEASURED.values()) == [chosen]
    again = interface.measured_backend(q, k, v, mask, D**-0.5, ["cpu", "gathered"], sync=lambda: None)
    assert again == chosen and len(calls) == 4  # cached: nothing measured the second time
    with torch.no_grad():  # no gradients needed: another shape class, measured forward only
        interface.measured_backend(q, k, v, mask, D**-0.5, ["cpu", "gathered"], sync=lambda: None)
    assert len(interface._MEASURED) == 2 and len(calls) == 8


def test_shape_class_rounds_lengths_and_counts_up_to_powers_of_two():
    q = torch.zeros(1, 3000, 4, 64)
    mask = torch.zeros(1, 3000, dtype=torch.bool)
    mask[0, :47] = True
    assert interface.shape_class(q, mask, True) == ("cpu", torch.float32, 4, 64, 4096, 64, True)
    mask[0, :64] = True
    assert interface.shape_class(q, mask, False)[4:] == (4096, 64, False)

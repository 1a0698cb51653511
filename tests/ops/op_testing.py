"""Shared helpers of the op tests: relative error and tolerances by dtype."""

from __future__ import annotations

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| in float64 (0 when both are all zeros)."""
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, (a.shape, e.shape)
    assert torch.isfinite(a).all(), "result holds NaN or inf (an unwritten or broken element)"
    scale = e.abs().max().item()
    diff = (a - e).abs().max().item() if a.numel() else 0.0
    return diff / scale if scale > 0 else diff


# Relative-error tolerances by the dtype the op ran in.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


# The routed attention tests' shapes, route masks and inputs (one place for both test files).
B, T, H, D = 2, 63, 2, 40


def routed_masks(seed: int) -> dict[str, torch.Tensor]:
    """(B, T) route masks: a random third, none, all, a single position, and ragged rows."""
    gen = torch.Generator().manual_seed(seed)
    one = torch.zeros(B, T, dtype=torch.bool)
    one[1, 37] = True
    ragged = torch.zeros(B, T, dtype=torch.bool)
    ragged[0, :45] = True
    ragged[1, [0, 62]] = True
    return {
        "random": torch.rand(B, T, generator=gen) < 0.3,
        "empty": torch.zeros(B, T, dtype=torch.bool),
        "full": torch.ones(B, T, dtype=torch.bool),
        "one": one,
        "ragged": ragged,
    }


def routed_inputs(dtype=torch.float32, seed=0) -> tuple[torch.Tensor, ...]:
    """q, k, v and an output gradient g, (B, T, H, D) each."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, H, D, generator=gen).to(dtype) for _ in range(4))

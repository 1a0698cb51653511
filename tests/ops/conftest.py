"""Fixtures for the op tests: Triton kernels run under the interpreter on CPU tensors.

``TRITON_INTERPRET=1`` must be set before the kernel modules are imported (``@triton.jit`` picks
the interpreter at decoration time). It is set while this file imports them and, through
``monkeypatch``, during each kernel test (the interpreter also reads it at launch), and restored
otherwise, so no other test module runs under the interpreter.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

_KERNEL_MODULES = ("cramkit.gpu.ops.routed_attention.triton", "cramkit.gpu.ops.ssm_scan.triton")


def _import_interpreted():
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        modules = []
        for name in _KERNEL_MODULES:
            if name in sys.modules:  # imported earlier without the interpreter: rebind
                modules.append(importlib.reload(sys.modules[name]))
            else:
                modules.append(importlib.import_module(name))
        return modules
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


try:
    _RA_TRITON, _SSM_TRITON = _import_interpreted()
except ImportError:  # triton missing: the kernel tests skip, the CPU tests still run
    _RA_TRITON = _SSM_TRITON = None


def _poisoned_empty(shape, *, dtype, device):
    """Freshly allocated kernel outputs full of NaN: an element a kernel forgets to write fails."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, -(2**30), dtype=dtype, device=device)


@pytest.fixture
def ra_triton(monkeypatch):
    """The routed-attention kernel module, interpreted, with poisoned output buffers."""
    if _RA_TRITON is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_RA_TRITON, "_empty", _poisoned_empty)
    return _RA_TRITON


@pytest.fixture
def ssm_triton(monkeypatch):
    """The SSM-scan kernel module, interpreted, with poisoned output buffers."""
    if _SSM_TRITON is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_SSM_TRITON, "_empty", _poisoned_empty)
    return _SSM_TRITON

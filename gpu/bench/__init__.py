"""Benchmarks: ``kernels`` (the fused ops against their baselines) and ``model`` (whole models:
training step, prefill and decode per token). Both time their cases side by side, interleaved
repeat by repeat, in one process (:mod:`.common`)."""

from .common import machine_info, parse_rho, routed_mask
from .kernels import (
    CASE_KEYS,
    DEFAULT_RHOS,
    OPS,
    KernelBenchConfig,
    KernelBenchResult,
    bench_kernels,
    default_t_values,
)

__all__ = [
    "CASE_KEYS", "DEFAULT_RHOS", "OPS", "KernelBenchConfig", "KernelBenchResult", "bench_kernels", "default_t_values",
    "machine_info", "parse_rho", "routed_mask",
]

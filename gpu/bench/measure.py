"""Timing and peak memory of ``cram bench model`` cases (see :mod:`.model`): interleaved
medians, and the peak-RSS / CUDA-allocator probe run after all timing."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time

import torch

from .common import sync

# ------------------------------------------------------------------------------------------------
# Timing and memory


def _run_once(case, device: str) -> float:
    state = case.setup() if case.setup is not None else None
    sync(device)
    start = time.perf_counter()
    case.timed(state)
    sync(device)
    return (time.perf_counter() - start) * 1e3


def time_cases(cases: list, repeats: int, device: str, warm: set[str]) -> dict[str, float]:
    """Median ms of each case's timed part, in turn repeat by repeat; each case label is warmed
    up once (untimed) the first time it is seen in a run (``warm`` records which)."""
    for case in cases:
        key = f"{case.mode}:{case.label}"
        if key not in warm:
            _run_once(case, device)
            warm.add(key)
    times: dict[str, list[float]] = {c.label: [] for c in cases}
    for _ in range(repeats):
        for case in cases:
            times[case.label].append(_run_once(case, device))
    return {label: statistics.median(ts) for label, ts in times.items()}


def _fix_malloc() -> None:
    """Fixed 64 KiB mmap threshold (glibc): large freed buffers leave the resident set, so the
    peak-RSS method sees each case's own allocations."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so that a case's own
    allocations raise the resident set instead of reusing pages the timed runs left behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def memory_method(device: str) -> str | None:
    """How peak memory is measured here, or None when it cannot be."""
    if device == "cuda":
        return "torch.cuda.max_memory_allocated above the allocation before the case"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _rss_kib("VmHWM")
    except OSError:
        return None
    return "rise of peak RSS (VmHWM reset via /proc/self/clear_refs) above RSS before the case"


def peak_mb(case, device: str) -> float | None:
    """Peak memory of one untimed run of ``case`` (see the module docstring)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        state = case.setup() if case.setup is not None else None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        case.timed(state)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del state
        return max(0, peak - base) / 2**20
    try:
        _trim_heap()
        base = _rss_kib("VmRSS")
        state = case.setup() if case.setup is not None else None
        _trim_heap()  # what the untimed setup (a prefill) freed is not the case's memory
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        case.timed(state)
        peak = _rss_kib("VmHWM")
        del state
    except OSError:
        return None
    return max(0, peak - base) / 1024



"""What the benchmarks share: device checks, synchronised timing, interleaved repeats, routes of
an exact routed fraction, and the machine description recorded with every result."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch

from cramkit.errors import CramError


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> cuda when available, else cpu; refuse what is not there."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise CramError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CramError("device cuda was requested but no CUDA device is available")
    return device


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: str) -> float:
    """Milliseconds of one call, synchronised on a GPU before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, device: str, *, once: Sequence[str] = ()
) -> dict[str, float]:
    """Median milliseconds of each function, timed in turn repeat by repeat.

    The candidate gets one untimed warm-up call (Triton autotunes there), and on a GPU every
    function does. Functions named in ``once`` (slow references) are timed in the first repeat only.
    """
    for name, fn in fns.items():
        if name == "candidate" or device == "cuda":
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            if r == 0 or name not in once:
                times[name].append(timed(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def routed_mask(batch: int, t_len: int, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Exactly ``max(1, round(rho * T))`` routed positions per row, chosen at random."""
    count = max(1, min(t_len, round(rho * t_len)))
    keys = torch.rand(batch, t_len, generator=generator)
    idx = keys.topk(count, dim=1).indices
    mask = torch.zeros(batch, t_len, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def parse_rho(text: str) -> float:
    """A routed fraction written as a decimal or a fraction (``0.25``, ``1/64``), in (0, 1]."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise CramError(f"rho must be a number or a fraction like 1/16, got {text!r}") from None
    if not 0 < value <= 1:
        raise CramError(f"rho must lie in (0, 1], got {text!r}")
    return value


def rho_text(rho: float | None) -> str:
    """``1/64`` for a simple fraction, else 4 significant digits; ``-`` for None."""
    if rho is None:
        return "-"
    frac = Fraction(rho).limit_denominator(1024)
    return str(frac) if abs(float(frac) - rho) < 1e-12 else f"{rho:.4g}"


def machine_info(device: str) -> dict:
    """Where the numbers came from."""
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # Spinning OpenMP workers make many-small-op paths crawl on an oversubscribed machine;
        # record the policy so a reader can tell the runs apart.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:  # pragma: no cover
            info["triton"] = None
    return info

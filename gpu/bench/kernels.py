"""Kernel benchmark: routed attention and the SSM scan against their baselines, side by side.

Every case times a forward + backward pass (a random upstream gradient) of the candidate and of
its baseline(s) in the same run, interleaved repeat by repeat, and reports medians, so a noisy
shared machine slows both sides alike.

* ``routed_attention`` at routed fraction ``rho`` (exactly ``round(rho * T)`` random positions per
  row, at least one) against dense causal ``scaled_dot_product_attention`` over all positions
  (``baseline = "sdpa_dense"``) and, on the CPU, against masked SDPA over the gathered routed
  queries (``"sdpa_gathered"``, the simple exact scheme). ``flop_limit`` is the ratio of the
  dense causal work to the routed work, ``(T (T+1) / 2) / sum_{t routed} (t + 1)``. Each
  backend in ``backends`` (default: ``auto`` on the CPU; ``auto``, ``triton``, ``flex`` on a GPU)
  is its own candidate, timed in the same interleaved run; its rows carry ``"backend"`` and the
  ``"algorithm"`` it ran (``cpu-keyblock-w512``, ``triton``, ``flex``, ``auto:flex``...).
  ``forward_only`` times the forward pass alone (all sides; rows carry ``"pass": "fwd"``), the
  only way to time ``flex`` on the CPU, where torch has no FlexAttention backward.
* ``ssm_scan`` against the sequential float64 reference (``"reference"``; timed once per case,
  since it is slow and its ratio is large).
* ``model_step`` (optional): one training step (forward + backward) of the CRAM model of the
  ``quick`` preset with the ``random`` router forced to route a fraction ``rho`` of positions;
  the baseline is the same model with every position routed (``rho = 1``).

:func:`run` takes a :class:`KernelBenchConfig` and returns a :class:`KernelBenchResult`, whose
``to_json()`` is ``{"machine": {...}, "cases": [...]}`` with one dict per case (keys in
:data:`CASE_KEYS`); :func:`bench_kernels` is the same call with keywords, returning that dict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.progress import Progress, report_to

from .common import interleaved as _interleaved
from .common import machine_info, parse_rho, resolve_device, routed_mask  # noqa: F401  (parse_rho: public here too)
from .kernels_result import KernelBenchResult

OPS = ("routed_attention", "ssm_scan", "model_step")
CASE_KEYS = (
    "op", "device", "dtype", "T", "rho", "batch", "heads", "head_dim", "algorithm",
    "ms", "baseline", "baseline_ms", "speedup", "flop_limit",
)
DEFAULT_RHOS = (1 / 64, 1 / 16, 1 / 4, 1.0)
BACKENDS = ("auto", "cpu", "gathered", "triton", "flex")
MAX_T = 1 << 20


def default_backends(device: str) -> tuple[str, ...]:
    """Routed-attention backends measured by default."""
    return ("auto", "triton", "flex") if device == "cuda" else ("auto",)


def default_t_values(device: str) -> tuple[int, ...]:
    """Sequence lengths measured by default: short enough for a quick CPU run."""
    return (4096, 16384) if device == "cuda" else (1024, 4096)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class KernelBenchConfig:
    """Settings of :func:`run` (validated on construction; see the module docstring)."""

    t_values: tuple[int, ...] | None = None  # None: default_t_values(device)
    rhos: tuple[float, ...] = DEFAULT_RHOS
    ops: tuple[str, ...] = OPS
    repeats: int = 3
    device: str | None = None  # None or "auto": cuda when available
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    d_state: int = 16
    chunk_size: int | None = None  # None: the scan's own choice for each T
    model_t: int = 2048
    model_batch: int = 2
    threads: int | None = None  # None: torch's own choice
    seed: int = 0
    backends: tuple[str, ...] | None = None  # None: default_backends(device)
    forward_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "t_values", tuple(self.t_values) if self.t_values else None)
        object.__setattr__(self, "backends", tuple(self.backends) if self.backends else None)
        bad = sorted(set(self.backends or ()) - set(BACKENDS))
        if bad:
            raise CramError(f"unknown routed attention backend(s) {bad}; choose from {list(BACKENDS)}")
        for name in ("rhos", "ops"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = sorted(set(self.ops) - set(OPS))
        if unknown or not self.ops:
            raise CramError(f"unknown op(s) {unknown}; choose from {list(OPS)}")
        if not _is_int(self.repeats) or self.repeats < 1:
            raise CramError(f"repeats must be >= 1, got {self.repeats!r}")
        for name in ("batch", "heads", "head_dim", "d_state", "chunk_size", "model_t", "model_batch"):
            value = getattr(self, name)
            if (value is not None or name != "chunk_size") and (not _is_int(value) or value < 1):
                raise CramError(f"{name} must be an integer >= 1, got {value!r}")
        if self.t_values is not None and any(not _is_int(t) or not 2 <= t <= MAX_T for t in self.t_values):
            raise CramError(f"every T must be an integer in [2, 2^20], got {list(self.t_values)}")
        if not self.rhos or any(not 0 < r <= 1 for r in self.rhos):
            raise CramError(f"every rho must lie in (0, 1], got {list(self.rhos)}")
        if self.threads is not None and (not _is_int(self.threads) or not 1 <= self.threads <= 1024):
            raise CramError(f"threads must be an integer in [1, 1024], got {self.threads!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise CramError(f"seed must be an integer >= 0, got {self.seed!r}")
        device = resolve_device(self.device)
        if device == "cpu" and "flex" in (self.backends or ()) and not self.forward_only:
            raise CramError("the flex backend has no backward on the CPU: time it with forward_only (--forward-only)")


def _fwd_bwd(fn: Callable[[], torch.Tensor], grad: torch.Tensor, leaves: Sequence[torch.Tensor]):
    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        out = fn()
        out.backward(grad)

    return step


def _fwd(fn: Callable[[], torch.Tensor], grad: torch.Tensor, leaves: Sequence[torch.Tensor]):
    """The forward pass alone, without autograd (``grad`` and ``leaves`` unused: ``_fwd_bwd``'s
    signature)."""

    def step() -> None:
        with torch.no_grad():
            fn()

    return step


def _algorithm(backend: str, mask: torch.Tensor, q: torch.Tensor, needs_grad: bool) -> str:
    """What a backend runs for this case: the CPU cost model's choice, or the measured winner."""
    from cramkit.gpu.ops.routed_attention import interface
    from cramkit.gpu.ops.routed_attention.cpu import choose_cpu_algorithm

    if backend == "auto":
        chosen = interface._MEASURED.get(interface.shape_class(q, mask, needs_grad))
        if chosen is None and not q.is_cuda:
            chosen = "cpu"
        return "auto" if chosen is None else (_algorithm(chosen, mask, q, needs_grad) if chosen == "cpu" else f"auto:{chosen}")
    if backend == "cpu":
        return "cpu-" + "-w".join(str(x) for x in choose_cpu_algorithm(mask, q.shape[2], q.shape[3]))
    return backend


def _attention_cases(t_len, rhos, repeats, device, dtype, batch, heads, head_dim, gen, backends=("auto",),
                     forward_only=False) -> list[dict]:  # fmt: skip
    from cramkit.gpu.ops.routed_attention import routed_attention
    from cramkit.gpu.ops.routed_attention.cpu import routed_attention_gathered

    shape = (batch, t_len, heads, head_dim)
    q, k, v, g = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    scale = head_dim**-0.5
    wrap = _fwd if forward_only else _fwd_bwd
    dense = wrap(
        lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        ).transpose(1, 2),
        g,
        leaves,
    )
    cases = []
    for rho in rhos:
        mask = routed_mask(batch, t_len, rho, gen).to(device)
        pos = torch.arange(1, t_len + 1, dtype=torch.float64, device=device)
        routed_work = float((mask.double() * pos).sum()) / batch
        flop_limit = t_len * (t_len + 1) / 2 / routed_work
        names = {b: "candidate" if i == 0 else f"candidate:{b}" for i, b in enumerate(backends)}
        fns = {
            names[b]: wrap(lambda mask=mask, b=b: routed_attention(q, k, v, mask, backend=b), g, leaves)
            for b in backends
        }
        for b in backends[1:]:  # interleaved() warms up only "candidate" on the CPU
            fns[names[b]]()
        baselines = {"sdpa_dense": dense}
        if device == "cpu":
            baselines["sdpa_gathered"] = wrap(
                lambda mask=mask: routed_attention_gathered(q, k, v, mask, scale=scale), g, leaves
            )
        ms = _interleaved({**fns, **baselines}, repeats, device)
        for b in backends:
            algo = _algorithm(b, mask, q, not forward_only)
            for base in baselines:
                cases.append(
                    {
                        "op": "routed_attention", "device": device, "dtype": str(dtype).replace("torch.", ""),
                        "T": t_len, "rho": rho, "batch": batch, "heads": heads, "head_dim": head_dim,
                        "algorithm": algo, "ms": ms[names[b]], "baseline": base, "baseline_ms": ms[base],
                        "speedup": ms[base] / ms[names[b]], "flop_limit": flop_limit, "backend": b,
                        "pass": "fwd" if forward_only else "fwd+bwd",
                    }
                )
    return cases


def _ssm_case(t_len, repeats, device, dtype, batch, heads, head_dim, state, chunk, gen) -> dict:
    from cramkit.gpu.ops.ssm_scan import ssm_scan
    from cramkit.gpu.ops.ssm_scan.reference import ssm_scan_reference

    x = torch.randn(batch, t_len, heads, head_dim, generator=gen)
    log_a = -torch.rand(batch, t_len, heads, generator=gen) * 0.5
    b, c = (torch.randn(batch, t_len, heads, state, generator=gen) for _ in range(2))
    g = torch.randn(batch, t_len, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, log_a, b, c)]
    fns = {
        "candidate": _fwd_bwd(lambda: ssm_scan(*leaves, chunk_size=chunk)[0], g, leaves),
        "reference": _fwd_bwd(lambda: ssm_scan_reference(*leaves)[0], g, leaves),
    }
    ms = _interleaved(fns, repeats, device, once=("reference",))
    if chunk is None:
        from cramkit.gpu.ops.ssm_scan.cpu import auto_chunk_size

        chunk = auto_chunk_size(t_len)
    return {
        "op": "ssm_scan", "device": device, "dtype": str(dtype).replace("torch.", ""), "T": t_len,
        "rho": None, "batch": batch, "heads": heads, "head_dim": head_dim,
        "algorithm": "triton" if device == "cuda" else f"cpu-chunked-{chunk}",
        "ms": ms["candidate"], "baseline": "reference", "baseline_ms": ms["reference"],
        "speedup": ms["reference"] / ms["candidate"], "flop_limit": None, "d_state": state,
    }


def _model_cases(t_len, rhos, repeats, device, batch, gen) -> list[dict]:
    from cramkit.gpu.run.build import build_model
    from cramkit.gpu.run.config import load_config

    steps = {}
    models = {}
    for rho in sorted(set(rhos) | {1.0}):
        cfg = load_config(preset="quick", overrides=["router.name=random", f"router.budget={rho!r}"])
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        lo, hi = model.target_range if model.target_range is not None else (0, model.vocab_size)
        tokens = torch.randint(0, model.vocab_size, (batch, t_len), generator=gen).to(device)
        targets = torch.full((batch, t_len), -1, dtype=torch.long)
        targets[:, -8:] = torch.randint(lo, hi, (batch, 8), generator=gen)
        targets = targets.to(device)
        rng = torch.Generator().manual_seed(1)

        def step(model=model, tokens=tokens, targets=targets, rng=rng) -> None:
            model.zero_grad(set_to_none=True)
            model(tokens, targets, generator=rng).loss.backward()

        models[rho] = model
        steps[rho] = step
    ms = _interleaved({str(r): s for r, s in steps.items()}, repeats, device)
    cfg = models[1.0].cfg
    return [
        {
            "op": "model_step", "device": device, "dtype": "float32", "T": t_len, "rho": rho,
            "batch": batch, "heads": cfg.n_heads, "head_dim": cfg.d_model // cfg.n_heads,
            "algorithm": f"quick preset, pattern {cfg.pattern}, random router",
            "ms": ms[str(rho)], "baseline": "model_rho_1", "baseline_ms": ms["1.0"],
            "speedup": ms["1.0"] / ms[str(rho)], "flop_limit": None,
        }
        for rho in rhos
    ]


def _plan(config: KernelBenchConfig, device: str) -> list[tuple[str, Callable[[], list[dict]]]]:
    """The cases in the order they run: (progress label, a call that measures them)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(config.seed)
    c = config
    t_values = c.t_values or default_t_values(device)
    plan: list[tuple[str, Callable[[], list[dict]]]] = []
    if "routed_attention" in c.ops:
        backends = c.backends or default_backends(device)
        plan += [(f"routed_attention T={t}", lambda t=t: _attention_cases(
            t, c.rhos, c.repeats, device, dtype, c.batch, c.heads, c.head_dim, gen, backends,
            c.forward_only)) for t in t_values]  # fmt: skip
    if "ssm_scan" in c.ops:
        plan += [(f"ssm_scan T={t}", lambda t=t: [_ssm_case(
            t, c.repeats, device, dtype, c.batch, c.heads, c.head_dim, c.d_state, c.chunk_size, gen)]) for t in t_values]  # fmt: skip
    if "model_step" in c.ops:
        plan.append((f"model_step T={c.model_t}", lambda: _model_cases(c.model_t, c.rhos, c.repeats, device, c.model_batch, gen)))
    return plan


def run(config: KernelBenchConfig, progress: Progress | None = None) -> KernelBenchResult:
    """Run the kernel benchmark; see the module docstring. ``progress(label, done, total)`` is
    called before and after each case, ``label`` naming it (``"ssm_scan T=4096"``)."""
    tick = report_to(progress)
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    plan = _plan(config, device)
    cases: list[dict] = []
    for done, (label, measure) in enumerate(plan):
        tick(label, done, len(plan))
        cases += measure()
        tick(label, done + 1, len(plan))
    return KernelBenchResult(machine=machine_info(device), cases=cases)


def bench_kernels(
    *,
    t_values: Sequence[int] | None = None,
    rhos: Sequence[float] = DEFAULT_RHOS,
    repeats: int = 3,
    device: str | None = None,
    ops: Sequence[str] = ("routed_attention", "ssm_scan"),
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    d_state: int = 16,
    chunk_size: int | None = None,
    model_t: int = 2048,
    model_batch: int = 2,
    threads: int | None = None,
    seed: int = 0,
    backends: Sequence[str] | None = None,
    forward_only: bool = False,
    progress: Progress | None = None,
) -> dict:
    """:func:`run` with keywords (the :class:`KernelBenchConfig` fields; ``ops`` without
    ``model_step`` by default), returning ``run(...).to_json()``."""
    config = KernelBenchConfig(t_values=t_values, rhos=rhos, repeats=repeats, device=device, ops=ops, batch=batch,
                               heads=heads, head_dim=head_dim, d_state=d_state, chunk_size=chunk_size,
                               model_t=model_t, model_batch=model_batch, threads=threads, seed=seed,
                               backends=backends, forward_only=forward_only)  # fmt: skip
    return run(config, progress).to_json()


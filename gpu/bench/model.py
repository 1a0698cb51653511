"""``cram bench model``: per-token cost of whole models, side by side in one run.

For every context length ``T`` and mode it times, interleaved repeat by repeat (medians):

* ``train``: one training step (forward + backward) on ``B x T`` tokens with a next-token target
  at every position (the CRAM models add their own losses: episodic, semantic, consolidation);
* ``prefill``: a forward pass over ``B x T`` prompt tokens without gradients (the model's
  ``prefill`` API when it has one, else its forward);
* ``decode``: ``k`` single-token steps at context ``T``: the first ``T - 1`` tokens are prefilled
  untimed, then steps ``T - 1 .. T + k - 2`` are timed. Needs the model's step API
  (``init_state`` / ``prefill`` / ``step``); a model without it is reported as skipped.

Models (one instance each, built once; the quick preset's widths scaled to ``d_model``):
``cram`` (the CRAM hybrid, pattern ``SA`` by default, at forced routed fractions ``rho``),
``dense`` (the same hybrid with router ``dense``), ``none`` (router ``none``: the no-attention
floor), ``ssm`` (only ``S`` blocks, same depth) and ``transformer`` (:class:`cramkit.gpu.model.baselines.
TransformerLM`, same width and depth). Forced routing: the cram model's router is ``random`` with
budget 0 and the route is passed in (``explore=`` in training and the forward, ``route=`` in the
inference API); the routes are drawn once per ``(T, rho)`` with exactly ``round(rho T)`` routed
positions per row, so every repeat and every mode sees the same route.

Peak memory (``peak_mb``): on CUDA ``torch.cuda.max_memory_allocated`` above the memory allocated
before the case; on the CPU the rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` before each case) above its resident set before the case, with glibc's
mmap threshold fixed at 64 KiB and the heap trimmed (``malloc_trim``) before each case, so that
freed buffers leave the resident set; ``None`` where the
kernel offers no reset. Decode counts the inference state (held across the steps) plus the steps'
working memory, not the untimed prefill. Measured in one extra untimed run per case, after all
cases are timed (the fixed mmap threshold slows allocation-heavy models by up to 2x, so it is
never in force while timing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cramkit.errors import CramError
from cramkit.memory import available_bytes
from cramkit.progress import Progress, report_to

from .common import machine_info, resolve_device, routed_mask, sync
from .model_result import ModelBenchResult

MODES = ("train", "prefill", "decode")
MODELS = ("cram", "dense", "none", "ssm", "transformer")
DEFAULT_T = (512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_RHOS = (1.0, 1 / 4, 1 / 16, 1 / 64)
VOCAB = 256  # byte-level, as the text task
MAX_T = 1 << 20
CASE_KEYS = ("mode", "model", "rho", "T", "batch", "us_per_token", "ms", "tokens", "peak_mb", "method", "note")


@dataclass(frozen=True)
class ModelBenchConfig:
    """Settings of :func:`run` (validated on construction)."""

    t_values: tuple[int, ...] = DEFAULT_T
    rhos: tuple[float, ...] = DEFAULT_RHOS
    models: tuple[str, ...] = MODELS
    modes: tuple[str, ...] = MODES
    device: str | None = None  # None or "auto": cuda when available
    threads: int | None = None
    repeats: int = 3
    batch: int = 1
    decode_steps: int = 16
    d_model: int = 64
    pattern: str = "SA"
    memory: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("t_values", "rhos", "models", "modes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.t_values or any(isinstance(t, bool) or not isinstance(t, int) or not 16 <= t <= MAX_T for t in self.t_values):
            raise CramError(f"every T must be an integer in [16, {MAX_T}], got {list(self.t_values)}")
        if not self.rhos or any(not 0 < r <= 1 for r in self.rhos):
            raise CramError(f"every rho must lie in (0, 1], got {list(self.rhos)}")
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise CramError(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise CramError(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
        for name, lo, hi in (("repeats", 1, 1000), ("batch", 1, 4096), ("decode_steps", 1, 4096),
                             ("d_model", 8, 8192)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise CramError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise CramError(f"threads must be in [1, 1024], got {self.threads}")
        if self.d_model % 4:
            raise CramError(f"d_model must be a multiple of 4 (the heads), got {self.d_model}")
        if not self.pattern or set(self.pattern) - {"S", "A"} or "A" not in self.pattern:
            raise CramError(f"pattern must be made of S and A blocks with at least one A, got {self.pattern!r}")
        resolve_device(self.device)


# ------------------------------------------------------------------------------------------------
# Models


def _cram_model(cfg: ModelBenchConfig, router: str, pattern: str):
    from cramkit.gpu.model.network import CramModel
    from cramkit.gpu.run.config import load_config

    base = load_config(preset="quick")
    d = cfg.d_model
    heads = base.model.ssm_heads
    mcfg = dataclasses.replace(base.model, pattern=pattern, d_model=d, ssm_head_dim=d // heads,
                               memory_hidden=2 * d, router_hidden=max(1, d // 2))  # fmt: skip
    rcfg = dataclasses.replace(base.router, name=router, budget=0.0, explore=0.0)
    return CramModel(mcfg, rcfg, VOCAB, budget=0.0)


def check_forced_route(model) -> None:
    """The cram model must attend exactly where the forced route says (router ``random`` with
    budget 0, route passed as ``explore``); refuse to time anything else."""
    gen = torch.Generator().manual_seed(0)
    dev = next(model.parameters()).device
    tokens = torch.randint(0, VOCAB, (2, 32), generator=gen).to(dev)
    route = routed_mask(2, 32, 0.25, gen).to(dev)
    with torch.no_grad():
        traces = model(tokens, explore=route).traces
    if not traces or any(not torch.equal(t.route, route) for t in traces):
        raise CramError("the cram model did not follow the forced route; the benchmark cannot force rho")


def build_models(cfg: ModelBenchConfig, device: str) -> dict[str, torch.nn.Module]:
    """One model per kind, seeded, on ``device``."""
    from cramkit.gpu.model.baselines import TransformerLM

    makers: dict[str, Callable[[], torch.nn.Module]] = {
        "cram": lambda: _cram_model(cfg, "random", cfg.pattern),
        "dense": lambda: _cram_model(cfg, "dense", cfg.pattern),
        "none": lambda: _cram_model(cfg, "none", cfg.pattern),
        "ssm": lambda: _cram_model(cfg, "none", "S" * len(cfg.pattern)),
        "transformer": lambda: TransformerLM(
            VOCAB, cfg.d_model, 4, len(cfg.pattern), mlp_mult=2, max_len=max(cfg.t_values) + cfg.decode_steps
        ),
    }
    models = {}
    for name in cfg.models:
        torch.manual_seed(cfg.seed)
        models[name] = makers[name]().to(device)
    if "cram" in models:
        check_forced_route(models["cram"])
    return models


def has_step_api(model) -> bool:
    return all(hasattr(model, name) for name in ("init_state", "prefill", "step"))


# ------------------------------------------------------------------------------------------------
# Cases: each is (setup, timed); setup runs untimed before every timed call.


@dataclass
class Case:
    mode: str
    model: str
    rho: float | None
    setup: Callable[[], object] | None
    timed: Callable[[object], None]
    tokens: int  # tokens processed by one timed call
    method: str

    @property
    def label(self) -> str:
        return self.model if self.rho is None else f"{self.model}@{self.rho!r}"


def _train_case(name, model, tokens, targets, route) -> tuple[Callable, str]:
    if name == "transformer":

        def step(_):
            model.zero_grad(set_to_none=True)
            model(tokens, targets).backward()

        return step, "forward+backward, LM loss at every position"

    def step(_):
        model.zero_grad(set_to_none=True)
        model(tokens, targets, explore=route).loss.backward()

    return step, "forward+backward, all losses, target at every position"


def _prefill_case(name, model, tokens, route) -> tuple[Callable | None, Callable, str]:
    bsz, t_len = tokens.shape
    if has_step_api(model):
        kw = {} if route is None else {"route": route}

        def prefill(state):
            with torch.no_grad():
                model.prefill(tokens, state, **kw)

        return (lambda: model.init_state(bsz, t_len)), prefill, "prefill API"

    def fwd(_):
        with torch.no_grad():
            model(tokens, explore=route)

    return None, fwd, "forward without gradients (no prefill API)"


def _decode_case(model, tokens, route, t_len, steps) -> tuple[Callable, Callable]:
    bsz = tokens.shape[0]

    def setup():
        state = model.init_state(bsz, t_len + steps)
        kw = {} if route is None else {"route": route[:, : t_len - 1]}
        with torch.no_grad():
            model.prefill(tokens[:, : t_len - 1], state, **kw)
        return state

    def decode(state):
        with torch.no_grad():
            for i in range(t_len - 1, t_len - 1 + steps):
                kw = {} if route is None else {"route": route[:, i]}
                model.step(tokens[:, i], state, **kw)

    return setup, decode


def make_cases(cfg, models, mode, t_len, device, gen) -> tuple[list[Case], list[dict]]:
    """The cases of one (mode, T) and the skipped ones (as result rows with a note)."""
    steps = cfg.decode_steps if mode == "decode" else 0
    total = t_len + steps
    tokens = torch.randint(0, VOCAB, (cfg.batch, total), generator=gen)
    routes = {rho: routed_mask(cfg.batch, total, rho, gen).to(device) for rho in cfg.rhos}
    tokens = tokens.to(device)
    targets = torch.cat([tokens[:, 1:t_len], torch.full((cfg.batch, 1), -1, device=device)], 1)
    cases: list[Case] = []
    skipped: list[dict] = []
    for name, model in models.items():
        variants = [(rho, routes[rho]) for rho in cfg.rhos] if name == "cram" else [(None, None)]
        for rho, route in variants:
            r_t = None if route is None else route[:, :t_len]
            if mode == "train":
                fn, method = _train_case(name, model, tokens[:, :t_len], targets, r_t)
                cases.append(Case(mode, name, rho, None, fn, cfg.batch * t_len, method))
            elif mode == "prefill":
                setup, fn, method = _prefill_case(name, model, tokens[:, :t_len], r_t)
                cases.append(Case(mode, name, rho, setup, fn, cfg.batch * t_len, method))
            elif has_step_api(model):
                setup, fn = _decode_case(model, tokens, route, t_len, steps)
                cases.append(Case(mode, name, rho, setup, fn, cfg.batch * steps, f"{steps} steps after a {t_len - 1}-token prefill"))
            else:
                skipped.append(_row(cfg, mode, name, rho, t_len, None, None, "skipped: model has no step API (init_state/prefill/step)"))
    return cases, skipped


# ------------------------------------------------------------------------------------------------
# Timing and memory


def _run_once(case: Case, device: str) -> float:
    state = case.setup() if case.setup is not None else None
    sync(device)
    start = time.perf_counter()
    case.timed(state)
    sync(device)
    return (time.perf_counter() - start) * 1e3


def time_cases(cases: list[Case], repeats: int, device: str, warm: set[str]) -> dict[str, float]:
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


def peak_mb(case: Case, device: str) -> float | None:
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


# ------------------------------------------------------------------------------------------------
# Size bounds


def estimate_bytes(cfg: ModelBenchConfig, t_len: int) -> int:
    """A rough upper bound of the largest case's working memory at ``T`` (activations of every
    layer kept for backward, logits of the three CRAM readouts and their gradients, attention
    buffers), used to refuse sizes the machine cannot hold before allocating."""
    n_tok = cfg.batch * (t_len + cfg.decode_steps)
    layers = len(cfg.pattern)
    activations = n_tok * cfg.d_model * 4 * 48 * layers
    logits = n_tok * VOCAB * 4 * 8
    attention = cfg.batch * 4 * min(t_len, 4096) * t_len * 4  # bounded score blocks of the CPU path
    return activations + logits + attention


def check_sizes(cfg: ModelBenchConfig, device: str) -> None:
    avail = available_bytes(device)
    for t_len in cfg.t_values:
        need = estimate_bytes(cfg, t_len)
        if need > 0.8 * avail:
            raise CramError(
                f"T={t_len} with batch {cfg.batch} needs about {need / 2**30:.1f} GiB but only "
                f"{avail / 2**30:.1f} GiB is available on {device}; choose smaller --t or --batch"
            )


# ------------------------------------------------------------------------------------------------


def _row(cfg, mode, model, rho, t_len, ms, case: Case | None, note=None, peak=None) -> dict:
    tokens = case.tokens if case is not None else None
    return {
        "mode": mode, "model": model, "rho": rho, "T": t_len, "batch": cfg.batch,
        "us_per_token": None if ms is None else ms * 1e3 / tokens,
        "ms": ms, "tokens": tokens, "peak_mb": peak,
        "method": None if case is None else case.method, "note": note,
    }


def _set_modes(models: dict, mode: str) -> None:
    for model in models.values():
        model.train(mode == "train")


def _measure_memory(timed: list[tuple[Case, dict]], models: dict, device: str, tick) -> None:
    """Fill ``peak_mb`` of every timed row, after all timing: the malloc setting that the CPU
    method needs slows small allocations, so it must not be in force while cases are timed."""
    if device == "cpu":
        _fix_malloc()
    for i, (case, row) in enumerate(timed, 1):
        _set_modes(models, case.mode)
        row["peak_mb"] = peak_mb(case, device)
        tick("peak memory", i, len(timed))


def run(config: ModelBenchConfig, progress: Progress | None = None) -> ModelBenchResult:
    """Run the model benchmark; see the module docstring."""
    tick = report_to(progress)
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    check_sizes(config, device)
    mem_method = memory_method(device) if config.memory else None
    models = build_models(config, device)
    gen = torch.Generator().manual_seed(config.seed)
    rows: list[dict] = []
    timed: list[tuple[Case, dict]] = []
    warm: set[str] = set()
    total = len(config.modes) * len(config.t_values)
    done = 0
    tick("bench model", 0, total)
    for mode in config.modes:
        _set_modes(models, mode)
        for t_len in sorted(config.t_values):
            cases, skipped = make_cases(config, models, mode, t_len, device, gen)
            ms = time_cases(cases, config.repeats, device, warm) if cases else {}
            for case in cases:
                rows.append(_row(config, mode, case.model, case.rho, t_len, ms[case.label], case))
                timed.append((case, rows[-1]))
            rows += skipped
            done += 1
            tick(f"{mode} T={t_len}", done, total)
    if mem_method:
        _measure_memory(timed, models, device, tick)
    info = machine_info(device)
    info["memory_method"] = mem_method
    return ModelBenchResult(machine=info, config=dataclasses.asdict(config) | {"device": device}, cases=rows)

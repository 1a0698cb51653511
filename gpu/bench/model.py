"""``cram bench model``: per-token cost of whole models, side by side in one run.

For every context length ``T`` and mode it times, interleaved repeat by repeat (medians):

* ``train``: one training step (forward + backward) on ``B x T`` tokens with a next-token target
  at every position (the CRAM models add their own losses: episodic, semantic, consolidation);
* ``prefill``: a forward pass over ``B x T`` prompt tokens without gradients: with ``compiled``
  (the default) a :class:`CramModel` runs the sync-free routed prefill compiled with
  ``torch.compile`` (:mod:`.prefill_case`; compiled before timing, the time in the row's
  ``method``), else the model's ``prefill`` API when it has one, else its forward;
* ``decode``: ``k`` single-token steps at context ``T``: the first ``T - 1`` tokens are prefilled
  untimed, then steps ``T - 1 .. T + k - 2`` are timed. Needs the model's step API
  (``init_state`` / ``prefill`` / ``step``); a model without it is reported as skipped. With
  ``compiled`` (the default) a :class:`CramModel` steps through the sync-free step compiled
  ahead of time (:mod:`.decode_case`; the compile time in the row's ``method``), the untimed
  prefill goes through the routed prefill; the transformer steps through its own static-KV step
  (:class:`cramkit.gpu.model.baselines.TransformerStep`), compiled the same way. The timed steps
  hold exactly ``max(1, round(rho k))`` routed steps, and ``cram`` is also timed at ``rho = 0`` (a route that never attends: the step's fixed cost).

Models (one instance each per size, built once; the quick preset's widths scaled to the width):
``cram`` (the CRAM hybrid, pattern ``SA`` by default, at forced routed fractions ``rho``),
``hybrid`` (the plain hybrid: the same blocks with every ``A`` replaced by a plain dense causal
attention layer ``G``: no router, no semantic memory, no extra readouts or losses; what a user
would train instead), ``cram-rho1`` (CRAM with router ``dense``: every position attends, memory
and readouts still run; called ``dense`` before, and ``dense`` is still accepted), ``none``
(router ``none``: the no-attention floor), ``ssm`` (only ``S`` blocks, same depth) and
``transformer`` (:class:`cramkit.gpu.model.baselines.TransformerLM`, same width and depth). Sizes: every (width, vocabulary)
pair of ``sizes``; ``layers`` blocks (the pattern tiled; default one pattern). Forced routing: the cram model's router is ``random`` with
budget 0 and the route is passed in (``explore=`` in training and the forward, ``route=`` in the
inference API); the routes are drawn once per ``(T, rho)`` with exactly ``round(rho T)`` routed
positions per row, so every repeat and every mode sees the same route.

FLOPs (``flops_per_token``, and ``flop_parts`` for CRAM): one more untimed run per case under
the FLOP counter, after the timing (:mod:`.flops`; docs/kernels.md, "FLOP model").

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

import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cramkit.errors import CramError
from cramkit.memory import available_bytes
from cramkit.progress import Progress, report_to

from .common import machine_info, resolve_device, routed_mask
from .decode_case import decode_case
from .measure import _fix_malloc, memory_method, peak_mb, time_cases
from .model_result import ModelBenchResult
from .prefill_case import has_fast_prefill, prefill_case

MODES = ("train", "prefill", "decode")
MODELS = ("cram", "hybrid", "cram-rho1", "none", "ssm", "transformer")
ALIASES = {"dense": "cram-rho1"}  # the name of CRAM rho=1 before issue 23
DEFAULT_T = (512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_RHOS = (1.0, 1 / 4, 1 / 16, 1 / 64)
VOCAB = 256  # byte-level, as the text task: the default vocabulary
WIDTH = 64
MAX_T = 1 << 20
#: ``--preset real``: sizes users train (width x vocabulary), 12 layers on a GPU
PRESETS = {
    "real": {"widths": (512, 1024), "vocabs": (4096, 32768), "t_values": (2048, 8192), "rhos": (1.0, 1 / 16, 1 / 64),
             "cuda_layers": 12},
}
CASE_KEYS = ("mode", "model", "rho", "T", "batch", "width", "vocab", "layers", "us_per_token", "ms", "tokens",
             "peak_mb", "flops_per_token", "flop_parts", "method", "note")


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CramError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class ModelBenchConfig:
    """Settings of :func:`run` (validated on construction). ``sizes``: (width, vocabulary) pairs;
    ``d_model`` (the older single-width field) replaces the widths when given; ``layers``: blocks
    per model (a multiple of the pattern's length; None: one pattern)."""

    t_values: tuple[int, ...] = DEFAULT_T
    rhos: tuple[float, ...] = DEFAULT_RHOS
    models: tuple[str, ...] = MODELS
    modes: tuple[str, ...] = MODES
    device: str | None = None  # None or "auto": cuda when available
    threads: int | None = None
    repeats: int = 3
    batch: int = 1
    decode_steps: int = 16
    sizes: tuple[tuple[int, int], ...] = ((WIDTH, VOCAB),)
    layers: int | None = None
    d_model: int | None = None
    pattern: str = "SA"
    memory: bool = True
    flops: bool = True
    compiled: bool = True  # decode and prefill compiled (False: the eager model.step / model.prefill)
    fast_prefill: bool | None = None  # prefill through the sync-free routed prefill (None: as ``compiled``)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("t_values", "rhos", "models", "modes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        models = tuple(dict.fromkeys(ALIASES.get(m, m) for m in self.models))
        object.__setattr__(self, "models", models)
        if self.d_model is not None:
            _check_int("d_model", self.d_model, 8, 8192)
            object.__setattr__(self, "sizes", tuple(dict.fromkeys((self.d_model, int(v)) for _, v in self.sizes)))
        object.__setattr__(self, "sizes", tuple(tuple(s) for s in self.sizes))
        if not self.t_values or any(isinstance(t, bool) or not isinstance(t, int) or not 16 <= t <= MAX_T for t in self.t_values):
            raise CramError(f"every T must be an integer in [16, {MAX_T}], got {list(self.t_values)}")
        if not self.rhos or any(not 0 < r <= 1 for r in self.rhos):
            raise CramError(f"every rho must lie in (0, 1], got {list(self.rhos)}")
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise CramError(f"unknown model(s) {bad}; choose from {', '.join(MODELS)} (dense = cram-rho1)")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise CramError(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
        for name, lo, hi in (("repeats", 1, 1000), ("batch", 1, 4096), ("decode_steps", 1, 4096)):
            _check_int(name, getattr(self, name), lo, hi)
        if not self.sizes or any(len(s) != 2 for s in self.sizes):
            raise CramError(f"sizes must be (width, vocabulary) pairs, got {list(self.sizes)}")
        for width, vocab in self.sizes:
            _check_int("width", width, 8, 8192)
            _check_int("vocab", vocab, 2, 1 << 20)
            if width % 4:
                raise CramError(f"the width must be a multiple of 4 (the heads), got {width}")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise CramError(f"threads must be in [1, 1024], got {self.threads}")
        if not self.pattern or set(self.pattern) - {"S", "A"} or "A" not in self.pattern:
            raise CramError(f"pattern must be made of S and A blocks with at least one A, got {self.pattern!r}")
        if self.layers is not None:
            _check_int("layers", self.layers, 1, 1024)
            if self.layers % len(self.pattern):
                raise CramError(f"layers ({self.layers}) must be a multiple of the pattern's length "
                                f"({len(self.pattern)}, pattern {self.pattern!r})")  # fmt: skip
        resolve_device(self.device)
        if self.fast_prefill is None:
            object.__setattr__(self, "fast_prefill", self.compiled)

    @property
    def blocks(self) -> str:
        """The CRAM hybrid's block letters: the pattern tiled to ``layers`` blocks."""
        return self.pattern * ((self.layers or len(self.pattern)) // len(self.pattern))


def preset_config(name: str, device: str | None, **overrides) -> ModelBenchConfig:
    """The config of a preset (:data:`PRESETS`); ``overrides`` (not None) win."""
    if name not in PRESETS:
        raise CramError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[name]
    kw = {"t_values": p["t_values"], "rhos": p["rhos"],
          "sizes": tuple((w, v) for w in p["widths"] for v in p["vocabs"])}  # fmt: skip
    if resolve_device(device) == "cuda":
        kw["layers"] = p["cuda_layers"]
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ModelBenchConfig(device=device, **kw)


# ------------------------------------------------------------------------------------------------
# Models


def heads_for(width: int) -> int:
    """Attention and SSM heads at a width: 4, or width/128 from width 512 on (head dim <= 128)."""
    h = max(4, width // 128)
    while width % h:
        h -= 1
    return h


def _load_quick():
    from cramkit.gpu.run.config import load_config

    return load_config(preset="quick")


def _cram_model(router: str, blocks: str, width: int, vocab: int):
    from cramkit.gpu.model.network import CramModel

    base = _load_quick()
    heads = heads_for(width)
    mcfg = dataclasses.replace(base.model, pattern=blocks, d_model=width, n_heads=heads, ssm_heads=heads,
                               ssm_head_dim=width // heads, memory_hidden=2 * width,
                               router_hidden=max(1, width // 2))  # fmt: skip
    # the benchmark's task is next-token prediction at every position: CRAM's losses as a language
    # run trains them (router.aux_grad "auto" means "isolated" on text), not the quick preset's SRCD ones
    rcfg = dataclasses.replace(base.router, name=router, budget=0.0, explore=0.0, aux_grad="isolated")
    return CramModel(mcfg, rcfg, vocab, budget=0.0)


def check_forced_route(model) -> None:
    """The cram model must attend exactly where the forced route says (router ``random`` with
    budget 0, route passed as ``explore``); refuse to time anything else."""
    gen = torch.Generator().manual_seed(0)
    dev = next(model.parameters()).device
    tokens = torch.randint(0, model.vocab_size, (2, 32), generator=gen).to(dev)
    route = routed_mask(2, 32, 0.25, gen).to(dev)
    with torch.no_grad():
        traces = model(tokens, explore=route).traces
    if not traces or any(not torch.equal(t.route, route) for t in traces):
        raise CramError("the cram model did not follow the forced route; the benchmark cannot force rho")


def build_models(cfg: ModelBenchConfig, device: str, size: tuple[int, int] | None = None) -> dict[str, torch.nn.Module]:
    """One model per kind at ``size`` (width, vocabulary; default the first), seeded, on ``device``."""
    from cramkit.gpu.model.baselines import TransformerLM

    width, vocab = size or cfg.sizes[0]
    blocks = cfg.blocks
    makers: dict[str, Callable[[], torch.nn.Module]] = {
        "cram": lambda: _cram_model("random", blocks, width, vocab),
        "hybrid": lambda: _cram_model("dense", blocks.replace("A", "G"), width, vocab),
        "cram-rho1": lambda: _cram_model("dense", blocks, width, vocab),
        "none": lambda: _cram_model("none", blocks, width, vocab),
        "ssm": lambda: _cram_model("none", "S" * len(blocks), width, vocab),
        "transformer": lambda: TransformerLM(
            vocab, width, heads_for(width), len(blocks), mlp_mult=2, max_len=max(cfg.t_values) + cfg.decode_steps
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
    module: torch.nn.Module | None = None  # the model the case runs (for the FLOP count)
    route: torch.Tensor | None = None  # (B, T + decode steps) the forced route of a cram case
    eager: tuple | None = None  # (setup, timed) of the eager path, for the FLOP count of a compiled case

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
        # a step's generator, as in training: the CRAM layers' readout losses and router labels
        # then run at their sampled share of positions (router.aux_share), as a training step does
        gen = torch.Generator(device=tokens.device).manual_seed(0)
        model(tokens, targets, explore=route, generator=gen).loss.backward()

    return step, "forward+backward, all losses (readouts at router.aux_share of positions), target at every position"


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


def make_cases(cfg, models, mode, t_len, device, gen, size=None) -> tuple[list[Case], list[dict]]:
    """The cases of one (mode, T) at one size and the skipped ones (as result rows with a note)."""
    size = size or cfg.sizes[0]
    steps = cfg.decode_steps if mode == "decode" else 0
    total = t_len + steps
    tokens = torch.randint(0, size[1], (cfg.batch, total), generator=gen)
    routes = {rho: routed_mask(cfg.batch, total, rho, gen).to(device) for rho in cfg.rhos}
    if mode == "decode":  # the timed steps hold exactly max(1, round(rho * steps)) routed steps
        for rho in cfg.rhos:
            routes[rho][:, t_len - 1 : total - 1] = routed_mask(cfg.batch, steps, rho, gen).to(device)
        routes[0.0] = torch.zeros(cfg.batch, total, dtype=torch.bool, device=device)  # never attends
    tokens = tokens.to(device)
    targets = torch.cat([tokens[:, 1:t_len], torch.full((cfg.batch, 1), -1, device=device)], 1)
    cases: list[Case] = []
    skipped: list[dict] = []
    for name, model in models.items():
        rhos = (*cfg.rhos, 0.0) if mode == "decode" and 0.0 not in cfg.rhos else cfg.rhos
        variants = [(rho, routes[rho]) for rho in rhos] if name == "cram" else [(None, None)]
        for rho, route in variants:
            r_t = None if route is None else route[:, :t_len]
            if mode == "train":
                fn, method = _train_case(name, model, tokens[:, :t_len], targets, r_t)
                cases.append(Case(mode, name, rho, None, fn, cfg.batch * t_len, method, model, route))
            elif mode == "prefill" and cfg.fast_prefill and has_fast_prefill(model):
                setup, fn, method, plain = prefill_case(model, tokens[:, :t_len], r_t, cfg.compiled)
                cases.append(Case(mode, name, rho, setup, fn, cfg.batch * t_len, method, model, route, plain))
            elif mode == "prefill":
                setup, fn, method = _prefill_case(name, model, tokens[:, :t_len], r_t)
                cases.append(Case(mode, name, rho, setup, fn, cfg.batch * t_len, method, model, route))
            elif has_step_api(model):
                setup, fn, method, eager = decode_case(model, tokens, route, t_len, steps, cfg.compiled)
                cases.append(Case(mode, name, rho, setup, fn, cfg.batch * steps, method, model, route, eager))
            else:
                skipped.append(_row(cfg, size, mode, name, rho, t_len, None, None,
                                    "skipped: model has no step API (init_state/prefill/step)"))  # fmt: skip
    return cases, skipped


# ------------------------------------------------------------------------------------------------
# Size bounds


def estimate_bytes(cfg: ModelBenchConfig, t_len: int, size: tuple[int, int] | None = None) -> int:
    """A rough upper bound of the largest case's working memory at ``T`` (activations of every
    layer kept for backward, logits of the three CRAM readouts per CRAM layer and their
    gradients, attention buffers), used to refuse sizes the machine cannot hold before allocating."""
    width, vocab = size or cfg.sizes[0]
    n_tok = cfg.batch * (t_len + cfg.decode_steps)
    layers = len(cfg.blocks)
    activations = n_tok * width * 4 * 48 * layers
    logits = n_tok * vocab * 4 * (4 + 4 * cfg.blocks.count("A"))
    attention = cfg.batch * heads_for(width) * min(t_len, 4096) * t_len * 4  # bounded score blocks of the CPU path
    return activations + logits + attention


def check_sizes(cfg: ModelBenchConfig, device: str) -> None:
    avail = available_bytes(device)
    for size in cfg.sizes:
        for t_len in cfg.t_values:
            need = estimate_bytes(cfg, t_len, size)
            if need > 0.8 * avail:
                raise CramError(
                    f"T={t_len} with batch {cfg.batch} at width {size[0]}, vocabulary {size[1]} needs about "
                    f"{need / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB is available on {device}; "
                    "choose smaller --t, --batch, --width or --vocab"
                )


# ------------------------------------------------------------------------------------------------


def _row(cfg, size, mode, model, rho, t_len, ms, case: Case | None, note=None, peak=None) -> dict:
    tokens = case.tokens if case is not None else None
    return {
        "mode": mode, "model": model, "rho": rho, "T": t_len, "batch": cfg.batch,
        "width": size[0], "vocab": size[1], "layers": len(cfg.blocks),
        "us_per_token": None if ms is None else ms * 1e3 / tokens,
        "ms": ms, "tokens": tokens, "peak_mb": peak, "flops_per_token": None, "flop_parts": None,
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


def count_case(case: Case):
    """The FLOP count of one untimed run of ``case``'s timed part (its setup runs first, uncounted)."""
    from .flops import count_flops

    setup, timed = case.eager or (case.setup, case.timed)  # a compiled graph's work is invisible to the counter
    state = setup() if setup is not None else None
    return count_flops(case.module, lambda: timed(state))


def _count_flops(timed: list[tuple[Case, dict]], models: dict, tick) -> None:
    """Fill ``flops_per_token`` (and CRAM's ``flop_parts``, per token) of every timed row."""
    for i, (case, row) in enumerate(timed, 1):
        _set_modes(models, case.mode)
        fc = count_case(case)
        row["flops_per_token"] = fc.total / case.tokens
        if fc.parts is not None:
            row["flop_parts"] = {k: v / case.tokens for k, v in fc.parts.items()}
        tick("FLOPs", i, len(timed))


def run(config: ModelBenchConfig, progress: Progress | None = None) -> ModelBenchResult:
    """Run the model benchmark; see the module docstring."""
    tick = report_to(progress)
    started = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    check_sizes(config, device)
    mem_method = memory_method(device) if config.memory else None
    gen = torch.Generator().manual_seed(config.seed)
    rows: list[dict] = []
    total = len(config.sizes) * len(config.modes) * len(config.t_values)
    done = 0
    tick("bench model", 0, total)
    size_seconds = []
    for size in config.sizes:
        size_start = time.perf_counter()
        models = build_models(config, device, size)
        timed: list[tuple[Case, dict]] = []
        warm: set[str] = set()
        for mode in config.modes:
            _set_modes(models, mode)
            for t_len in sorted(config.t_values):
                cases, skipped = make_cases(config, models, mode, t_len, device, gen, size)
                ms = time_cases(cases, config.repeats, device, warm) if cases else {}
                for case in cases:
                    rows.append(_row(config, size, mode, case.model, case.rho, t_len, ms[case.label], case))
                    timed.append((case, rows[-1]))
                rows += skipped
                done += 1
                tick(f"width {size[0]} vocab {size[1]}: {mode} T={t_len}", done, total)
        if config.flops:
            _count_flops(timed, models, tick)
        if mem_method:
            _measure_memory(timed, models, device, tick)
        for model in models.values():
            model.zero_grad(set_to_none=True)
        del models, timed
        gc.collect()
        size_seconds.append({"width": size[0], "vocab": size[1], "seconds": time.perf_counter() - size_start})
    info = machine_info(device)
    info["memory_method"] = mem_method
    info["elapsed_s"] = time.perf_counter() - started
    info["elapsed_by_size"] = size_seconds
    cfg = dataclasses.asdict(config) | {"device": device, "blocks": config.blocks}
    return ModelBenchResult(machine=info, config=cfg, cases=rows)

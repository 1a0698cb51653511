"""The compiled decode step and what runs it (docs/inference.md, "The compiled decode step").

:class:`FastDecoder` runs a prompt through the sync-free routed prefill
(:mod:`cramkit.gpu.model.prefill_step`, uncompiled; ``eager=True``: ``model.prefill``, the state
then moved) into the preallocated :class:`~cramkit.gpu.model.decode_step.StepState`, and then calls one graph of
:class:`~cramkit.gpu.model.decode_step.DecodeStep` per token: one graph per cache bucket (a power
of two), the bucket doubled when it is full. Backends, in order of preference:

- ``aoti``: ``torch.export`` then AOTInductor (``aoti_compile_and_package``), called through the
  loaded package's runner; needs a C++ compiler. Packages are cached on disk
  (:func:`cache_dir`), keyed by the model's config and weights, dtype, device, batch, bucket, the
  step's source and the torch version (:func:`graph_key`);
- ``compile``: ``torch.compile(fullgraph=True)`` (inductor's own cache);
- ``uncompiled``: the same sync-free step, run eagerly;
- ``cudagraph`` (CUDA only, first in ``auto``'s order there, never on the CPU): the uncompiled step
  captured in a CUDA graph and replayed per token (:class:`_CudaGraphStep`; untested on hardware).

``auto`` tries them in that order (``$CRAM_DECODE_BACKEND`` may name one instead; the test suite
sets it to ``uncompiled``). A backend that fails falls back to the next with one warning
line (never a traceback); compile time is kept apart (``compile_seconds``) from decode time.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cramkit.errors import CramError
from cramkit.gpu.model import attention, cram, mixer, ssm
from cramkit.gpu.model import decode_step as ds
from cramkit.gpu.model.state import check_route
from cramkit.io import atomic_link_or_copy, cache_root

STEP_SOURCES = (ds, mixer, ssm, attention, cram)  # the step's code: a change makes new graphs
BACKENDS = ("auto", "cudagraph", "aoti", "compile", "uncompiled")
BACKEND_ENV = "CRAM_DECODE_BACKEND"
INDUCTOR_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}  # one-row matmuls in generated C++


def cache_dir() -> Path:
    """Where compiled packages live: the ``decode/`` folder of :func:`cramkit.io.cache_root`."""
    return cache_root() / "decode"


def has_cxx() -> bool:
    """A C++ compiler for AOTInductor (inductor's configured one, else c++/g++/clang++)."""
    try:
        from torch._inductor import config as ind_config

        names = [ind_config.cpp.cxx[1]] if ind_config.cpp.cxx[1] else []
    except Exception:  # noqa: BLE001 -- an inductor without that setting: look for the usual names
        names = []
    return any(shutil.which(n) for n in [*names, "c++", "g++", "clang++"])


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def graph_key(model, batch: int, bucket: int, weights: str | None = None) -> str:
    """The disk-cache key of one compiled graph."""
    ref = model.embed.weight
    parts = [repr(model.cfg), repr(model.rcfg), model.vocab_size, model.target_range, model.budget,
             [layer.budget for layer in model.cram_layers], weights or weights_hash(model), str(ref.dtype),
             str(ref.device), batch, bucket, torch.__version__, *(inspect.getsource(mod) for mod in STEP_SOURCES),
             repr(INDUCTOR_OPTIONS)]  # fmt: skip
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _warn(line: str) -> None:
    print(f"cram: {line}", file=sys.stderr)


@contextlib.contextmanager
def _quiet():
    """Silence what torch prints while compiling (its own warnings and C++ compiler output)."""
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger = logging.getLogger("torch")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logger.setLevel(level)


def example_inputs(step: ds.DecodeStep, state: ds.StepState) -> list[torch.Tensor]:
    """Fresh, distinct tensors shaped like one call's inputs (export de-duplicates aliased inputs)."""
    bsz = state.batch_size
    dev = state.pos.device
    n_cram = state.n_routed
    head = [torch.zeros(bsz, dtype=torch.int64, device=dev), torch.zeros(bsz, dtype=torch.bool, device=dev),
            torch.zeros((), dtype=torch.bool, device=dev), torch.zeros(n_cram, bsz, device=dev)]  # fmt: skip
    return head + [t.detach().clone() for t in state.flat()]


def _aoti(step, example, key: str, folder: Path) -> Callable:
    path = folder / f"{key}.pt2"
    if not path.exists():
        with torch.no_grad(), _quiet():
            ep = torch.export.export(step, tuple(example))
            with tempfile.TemporaryDirectory(prefix="cram-aoti-") as tmp:
                out = torch._inductor.aoti_compile_and_package(  # it adds its own keys to the options given
                    ep, package_path=os.path.join(tmp, "step.pt2"), inductor_configs=copy.deepcopy(INDUCTOR_OPTIONS)
                )
                atomic_link_or_copy(out, path)
    with _quiet():
        loader = torch._inductor.aoti_load_package(str(path)).loader
    run = loader.run
    return lambda args: run(args)[0]


def _torch_compile(step, example, key: str, folder: Path) -> Callable:
    with _quiet():
        fn = torch.compile(step, fullgraph=True, dynamic=False, options=copy.deepcopy(INDUCTOR_OPTIONS))
        with torch.no_grad():
            fn(*example)  # compile now, on scratch tensors
    return _no_grad(fn)


def _uncompiled(step, example, key: str, folder: Path) -> Callable:
    return _no_grad(step)


def _no_grad(fn) -> Callable:
    def run(args):
        with torch.no_grad():
            return fn(*args)

    return run


class _CudaGraphStep:
    """The uncompiled step captured in a CUDA graph (untested on hardware: no GPU was lent to the
    session that wrote it). Captured at the first call on the state tensors it is given, again
    whenever they change (a new prefill or bucket): a graph holds fixed addresses. Token, route,
    flag and draws are copied into static inputs; the state is snapshotted around the warm-up run
    (which executes) and restored. While capturing, ``attention.branch`` takes the ``on`` branch
    (a host read cannot be captured; ``where`` picks the rows, as on every device)."""

    def __init__(self, step):
        self.step, self.graph, self.static, self.out = step, None, None, None

    def _capture(self, args) -> None:
        self.static = [a.clone() for a in args[:4]] + list(args[4:])
        saved = [t.clone() for t in args[4:]]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            self.step(*self.static)  # warm-up (allocator, lazy init); it advances the state: restored below
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(args[4:], saved):
            t.copy_(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.out = self.step(*self.static)

    def __call__(self, args):
        if self.graph is None or any(a is not b for a, b in zip(args[4:], self.static[4:])):
            self._capture(args)
        for dst, src in zip(self.static[:4], args[:4]):
            dst.copy_(src)
        self.graph.replay()
        return self.out.clone()


def _cuda_graph(step, example, key: str, folder: Path) -> Callable:
    if not example[0].is_cuda:
        raise CramError("CUDA graphs need a CUDA device")
    return _CudaGraphStep(step)


_COMPILERS = {"cudagraph": _cuda_graph, "aoti": _aoti, "compile": _torch_compile, "uncompiled": _uncompiled}


def backend_chain(backend: str = "auto", *, cuda: bool = False) -> list[str]:
    """The backends tried in order for ``backend``: ``auto`` means ``$CRAM_DECODE_BACKEND`` when it
    is set, else ``cudagraph`` (``cuda`` only), ``aoti`` (where a C++ compiler is found),
    ``compile``, ``uncompiled``; a named backend is tried before ``uncompiled``."""
    if backend == "auto" and os.environ.get(BACKEND_ENV):
        backend = os.environ[BACKEND_ENV]
        if backend not in BACKENDS:
            raise CramError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {backend!r}")
    if backend not in BACKENDS:
        raise CramError(f"the decode backend must be one of {BACKENDS}, got {backend!r}")
    chain = ["aoti", "compile", "uncompiled"] if backend == "auto" else [backend, "uncompiled"]
    if backend == "auto" and cuda:  # CUDA: the step in a CUDA graph first; never on the CPU
        chain.insert(0, "cudagraph")
    if backend == "auto" and not has_cxx():
        chain.remove("aoti")
    return list(dict.fromkeys(chain))


def compile_step(chain: list[str], step, example: list[torch.Tensor], key: str, folder: Path,
                 warn: Callable[[str], None], what: str = "decode step") -> tuple[str, Callable, list[str]]:  # fmt: skip
    """The first backend of ``chain`` that builds ``step``: (its name, the callable, the chain from
    it on). Each failure is one ``warn`` line naming the next backend; the last one failing is a
    :class:`CramError`."""
    for i, name in enumerate(chain):
        try:
            return name, _COMPILERS[name](step, example, key, folder), chain[i:]
        except Exception as exc:  # noqa: BLE001 -- any compile failure falls back, one line
            if i == len(chain) - 1:
                raise CramError(f"the {what} failed ({_one_line(exc)})") from None
            warn(f"{name} {what} unavailable ({_one_line(exc)}); using {chain[i + 1]}")
    raise CramError(f"the {what} has no backend to try")


class FastDecoder:
    """The sync-free prefill, then the compiled sync-free step, for one batch of sequences.

    ``backend``: ``auto``, ``aoti``, ``compile`` or ``uncompiled`` (see the module docstring). After
    a failure the next backend serves (one warning line through ``warn``). ``backend_used`` names
    the backend of the newest graph, ``compile_seconds`` adds up the compile (and load) time."""

    def __init__(self, model, *, backend: str = "auto", folder: str | os.PathLike | None = None,
                 warn: Callable[[str], None] = _warn):  # fmt: skip
        self.chain = backend_chain(backend, cuda=model.embed.weight.is_cuda)
        self.model = model
        self.step_fn = ds.DecodeStep(model)
        self.own_reason = ds.own_route_reason(model)
        self.folder = Path(folder) if folder is not None else cache_dir()
        self.warn = warn
        self.graphs: dict[tuple[int, int], tuple[str, Callable]] = {}
        self.compile_seconds = 0.0
        self.backend_used = self.chain[0]
        self.state: ds.StepState | None = None
        self._weights: str | None = None
        self._draws = False
        self._consts: dict = {}
        self._args: list | None = None
        self._run: Callable | None = None
        self._bsz = 0
        self.n_cram = len(model.cram_layers)
        self.max_len = 0

    # -- graphs ----------------------------------------------------------------------------
    def _graph(self, state: ds.StepState) -> Callable:
        spec = (state.batch_size, state.bucket)
        if spec not in self.graphs:
            start = time.perf_counter()
            self._weights = self._weights or weights_hash(self.model)
            key = graph_key(self.model, *spec, weights=self._weights)
            example = example_inputs(self.step_fn, state)
            name, run, self.chain = compile_step(self.chain, self.step_fn, example, key, self.folder, self.warn)
            self.graphs[spec] = (name, run)
            self.compile_seconds += time.perf_counter() - start
        self.backend_used = self.graphs[spec][0]
        return self.graphs[spec][1]

    def _bucket(self, n_positions: int) -> int:
        """The power-of-two bucket of ``n_positions``, capped at the state's ``max_len``."""
        bucket = ds.bucket_for(n_positions)
        return min(bucket, self.max_len) if self.max_len >= n_positions else bucket

    def prepare(self, batch: int, n_positions: int, max_len: int | None = None) -> None:
        """Compile (or load) ahead of time the graph that holds ``n_positions`` in a state of
        ``max_len`` positions (default: no cap)."""
        self.max_len = int(max_len or 0)
        self._graph(ds.step_state_from(self.model, self.model.init_state(batch, 1), self._bucket(n_positions)))

    # -- decoding --------------------------------------------------------------------------
    def prefill(self, tokens: torch.Tensor, max_len: int, *, route=None, generator=None, reserve: int = 0,
                eager: bool = False) -> torch.Tensor:  # fmt: skip
        """Run the prompt (B, T) into a fresh state for up to ``max_len`` positions; returns logits
        (B, T, V'). The sync-free prefill (:func:`cramkit.gpu.model.prefill_step.prefill_into`)
        by default, ``model.prefill`` with ``eager``. The first bucket holds ``reserve`` positions
        (default: the prompt and one more); a longer run moves to the next bucket when it is full."""
        from cramkit.gpu.model.prefill_step import prefill_into

        bsz, t_len = tokens.shape if tokens.dim() == 2 else (0, 0)
        if t_len > max_len:
            raise CramError(f"a prompt of {t_len} positions does not fit max_len={max_len}")
        self.max_len = int(max_len)
        bucket = self._bucket(max(t_len + 1, reserve))
        if eager:
            state = self.model.init_state(bsz, max_len)
            logits = self.model.prefill(tokens, state, route=route, generator=generator)
            self.state = ds.step_state_from(self.model, state, bucket)
        else:
            logits, self.state = prefill_into(self.model, tokens, bucket, route=route, generator=generator)
        name = self.model.router_policy.name
        phase_ready = route is None  # a prefill by the router's own rule drew the stride phase
        self._draws = name == "random" or (name == "stride" and not phase_ready)
        dev = self.state.pos.device
        self._bsz = bsz
        self._consts = {"no_route": torch.zeros(bsz, dtype=torch.bool, device=dev), "u": torch.zeros(self.n_cram, bsz, device=dev),
                        "true": torch.tensor(True, device=dev), "false": torch.tensor(False, device=dev)}  # fmt: skip
        self._args = None  # the step's graph is chosen (compiled or loaded) at the first step
        return logits

    @property
    def pos(self) -> int:
        return 0 if self.state is None else self.state.n

    def routes(self) -> list[torch.Tensor]:
        return [] if self.state is None else self.state.routes()

    def step(self, token: torch.Tensor, *, route=None, generator=None, check: bool = True) -> torch.Tensor:
        """Append one position: ``token`` (B,) -> logits (B, V'); ``route`` (B,) bool forces the CRAM
        layers. ``check=False`` skips the token-range check (a host read), for sampled tokens.
        The input list is kept between calls: only the token, route and draws change."""
        st = self.state
        if st is None:
            raise CramError("the decoder has no state yet: call prefill first")
        bsz, n = self._bsz, st.n
        if token.dim() != 1 or token.shape[0] != bsz:
            raise CramError(f"step takes one token per sequence, shape ({bsz},), got {tuple(token.shape)}")
        if n >= self.max_len:
            raise CramError(f"the inference state holds max_len={self.max_len} positions; {n} are filled and "
                            f"1 more does not fit (make the state with a larger max_len)")  # fmt: skip
        if check and token.numel() and (int(token.min()) < 0 or int(token.max()) >= self.model.vocab_size):
            raise CramError(f"token ids must lie in [0, {self.model.vocab_size}), got {int(token.min())}..{int(token.max())}")
        if route is None:
            if self.own_reason and self.n_cram:
                raise CramError(self.own_reason + "; pass route= to step")
            route, flag = self._consts["no_route"], self._consts["false"]
            uniforms = self._uniforms(bsz, generator) if self._draws else self._consts["u"]
        else:
            route = check_route(route, (bsz,), token.device).contiguous()
            flag, uniforms = self._consts["true"], self._consts["u"]
        if n >= st.bucket or self._args is None:
            if n >= st.bucket:
                st.grow(self._bucket(n + 1))
            self._run = self._graph(st)
            self._args = [None] * 4 + st.flat()
        args = self._args
        args[0], args[1], args[2], args[3] = token.contiguous(), route, flag, uniforms  # example strides
        logits = self._run(args)
        st.n = n + 1
        return logits

    def _uniforms(self, bsz, generator) -> torch.Tensor:
        """The ``random`` router's draws (one (B,) row per CRAM layer, in layer order, as the eager
        step draws them); the stride phase is drawn at the first own-route step when the prefill
        did not draw it (a forced prefill), as the eager step does."""
        name = self.model.router_policy.name
        if name == "random":
            rows = [torch.rand(bsz, generator=generator, device="cpu") for _ in range(self.n_cram)]
            return torch.stack(rows).to(self.state.pos.device)
        for blk, layer_st in zip(self.model.blocks, self.state.layers):
            s = ds.stride_period(blk.mixer.budget) if blk.mixer.routed else None
            if s is not None:
                layer_st["phase"].copy_(torch.randint(0, s, (bsz,), generator=generator, device="cpu"))
        self._draws = False
        return self._consts["u"]

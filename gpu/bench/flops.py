"""The FLOP model of ``cram bench model``: FLOPs per token of each case, counted on the models the
benchmark builds (docs/kernels.md, "FLOP model").

A case's callable (one training step, a prefill, or the decode steps) runs once, untimed, under
:class:`torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products torch
dispatches (``mm``, ``addmm``, ``bmm``, ``baddbmm``, convolutions; forward and backward;
2 FLOPs per multiply-add). Elementwise work (norms, activations, softmax, cross-entropy, the
optimiser) is not counted, by the counter or here.

Three kernels are not visible to the counter in a useful form: fused SDPA (the CPU flash kernel
is not in the counter's registry, and its CUDA formulas ignore causality), the routed attention
op (its CPU paths pad and waste tail work; its CUDA path is a Triton kernel), and the SSM scan and
step (a chunked algorithm on the CPU, a Triton kernel on CUDA). While counting, each of them (and
the KV-cache attention of decoding, for the per-part breakdown) is replaced by a pass-through
custom op that runs the real function, carries an analytic FLOP count, and hands back zero
gradients (FLOP counts depend on shapes and routes, not on values). Analytic counts, with
``pairs`` the (query, key) pairs a query actually attends, summed over batch and heads:

* the routed prefill's gathered attention (``gathered_attention``: groups of buffer rows, each
  against the keys up to its latest position in one masked SDPA call) computes every pair of
  those spans, padding rows included, and is counted so;
* attention (SDPA, routed, cached), head dimension D: forward ``4 D`` per pair (``QKᵀ`` and
  ``PV``), backward ``8 D`` per pair (``dV``, ``dP``, ``dQ``, ``dK``); causal SDPA over ``T``
  positions has ``T (T + 1) / 2`` pairs per head (6 T d per token per layer, forward + backward,
  at large T), routed attention ``Σ_{t routed} (t + 1)``, a decode step ``t + 1``;
* SSM scan and step, state ``N × P`` per head: forward ``5 N P`` per (token, head) (decay,
  outer-product update, readout), backward ``10 N P``.

CRAM's breakdown by part comes from the counter's per-module totals, so it re-measures whatever
the code does: ``router`` (the mixer's ``router`` module), ``memory`` (its ``memory`` module),
``attention`` (its ``q``, ``k``, ``k_prev``, ``v``, ``o`` projections plus the attention kernels
called inside a CRAM layer), ``readouts`` (every call of the model's readout made by a CRAM layer
for its own losses; counting-time proxy modules wrap ``ForwardContext.readout`` and
``aux_readout``), and
``backbone`` (everything else: embedding, S blocks, MLPs, the task readout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

PARTS = ("backbone", "attention", "memory", "router", "readouts")
ATTENTION_PROJECTIONS = ("q", "k", "k_prev", "v", "o")

# ------------------------------------------------------------------------------------------------
# analytic counts


def attention_flops(pairs: int | float, head_dim: int, backward: bool = False) -> float:
    """FLOPs of softmax attention over ``pairs`` (query, key) pairs (summed over batch and heads)
    of head dimension ``head_dim``: 4·D per pair forward, 8·D backward."""
    return float(pairs) * head_dim * (8 if backward else 4)


def causal_pairs(t_len: int) -> int:
    """(query, key) pairs per head of causal attention over ``t_len`` positions."""
    return t_len * (t_len + 1) // 2


def routed_pairs(route: torch.Tensor) -> int:
    """Pairs per head of routed attention: Σ over routed positions t (0-based) of t + 1."""
    t_len = route.shape[-1]
    pos = torch.arange(1, t_len + 1, device=route.device, dtype=torch.int64)
    return int((route.to(torch.int64) * pos).sum())


def scan_flops(batch: int, t_len: int, heads: int, d_state: int, head_dim: int, backward: bool = False) -> float:
    """FLOPs of the selective scan: 5·N·P per (token, head) forward, 10·N·P backward."""
    return float(batch * t_len * heads * d_state * head_dim) * (10 if backward else 5)


def _sdpa_pairs(q: torch.Tensor, k: torch.Tensor, attn_mask, is_causal: bool) -> int:
    *lead, sq, _ = q.shape
    sk = k.shape[-2]
    rows = 1
    for n in lead:
        rows *= int(n)
    if attn_mask is not None:
        allowed = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
        return int(allowed.expand(*lead, sq, sk).sum())
    if is_causal:  # top-left aligned, as torch: query i sees keys 0 .. i
        i = torch.arange(sq)
        return rows * int(torch.clamp(i + 1, max=sk).sum())
    return rows * sq * sk


# ------------------------------------------------------------------------------------------------
# the pass-through op that carries an analytic count

_CALLS: dict[int, Callable[[], tuple]] = {}
_IDS = itertools.count()


@torch.library.custom_op("cramflops::kernel", mutates_args=())
def _kernel(inputs: list[torch.Tensor], call: int, kind: str, fwd: float, bwd: float) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = _CALLS.pop(call)()
    return [o.detach().clone() for o in outs]


def _kernel_setup(ctx, inputs, output):
    inputs_, _call, kind, _fwd, bwd = inputs
    ctx.kind, ctx.bwd = kind, bwd
    ctx.shapes = [(t.shape, t.dtype, t.device) for t in inputs_]


def _kernel_backward(ctx, grads):
    like = [torch.empty(s, dtype=d, device=dev) for s, d, dev in ctx.shapes]
    return _kernel_bwd(like, ctx.kind, ctx.bwd), None, None, None, None


torch.library.register_autograd("cramflops::kernel", _kernel_backward, setup_context=_kernel_setup)


@torch.library.custom_op("cramflops::kernel_bwd", mutates_args=())
def _kernel_bwd(like: list[torch.Tensor], kind: str, bwd: float) -> list[torch.Tensor]:
    return [torch.zeros_like(t) for t in like]


_ACTIVE: list[Ledger] = []


def _record(tag: str, flops: float) -> int:
    """The counter calls the formulas exactly when it counts an op: log the count by tag."""
    if _ACTIVE:
        where, kind = tag.split(":", 1)
        _ACTIVE[-1].flops[(where, kind)] += flops
    return int(round(flops))


def _formula_fwd(inputs, call, kind, fwd, bwd, out_val=None, **_):
    return _record(kind, fwd)


def _formula_bwd(like, kind, bwd, out_val=None, **_):
    return _record(kind, bwd)


def _conv_backward(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """Groups-aware backward of a convolution: each requested gradient (input, weight) costs what
    the forward costs. torch's own formula ignores ``groups`` and counts a depthwise convolution's
    backward ``channels`` times too high."""
    from torch.utils.flop_counter import conv_flop_count

    transposed, output_mask = args[4], args[7]  # (bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask)
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


_formula_fwd._get_raw = True  # the counter passes the raw arguments, not their shapes
_formula_bwd._get_raw = True
KERNEL_OPS = (torch.ops.cramflops.kernel, torch.ops.cramflops.kernel_bwd)
CUSTOM_MAPPING = {torch.ops.cramflops.kernel: _formula_fwd, torch.ops.cramflops.kernel_bwd: _formula_bwd,
                  torch.ops.aten.convolution_backward: _conv_backward}


class Ledger:
    """Analytic FLOPs by (where, kind): where is ``cram`` inside a CRAM layer, else ``other``."""

    def __init__(self) -> None:
        self.flops: dict[tuple[str, str], float] = defaultdict(float)
        self.where = "other"

    def through(self, kind: str, fwd: float, bwd: float, tensors: list[torch.Tensor], run: Callable[[], tuple]):
        """Run ``run`` (the real kernel) through the counted pass-through op; returns its outputs."""
        call = next(_IDS)
        _CALLS[call] = run
        try:
            return _kernel(tensors, call, f"{self.where}:{kind}", float(fwd), float(bwd))
        finally:
            _CALLS.pop(call, None)

    def total(self, where: str | None = None, kind: str | None = None) -> float:
        return sum(v for (w, k), v in self.flops.items() if (where is None or w == where) and (kind is None or k == kind))


# ------------------------------------------------------------------------------------------------
# stubs of the kernels, patched in wherever the model code imported them


def _stubs(ledger: Ledger) -> dict[str, tuple[Callable, Callable]]:
    from cramkit.gpu.ops.routed_attention import routed_attention as ra
    from cramkit.gpu.ops.routed_attention.interface import route_to_mask
    from cramkit.gpu.ops.ssm_scan import ssm_scan as scan
    from cramkit.gpu.ops.ssm_scan import ssm_step as step

    sdpa = F.scaled_dot_product_attention

    def sdpa_stub(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        pairs = _sdpa_pairs(q, k, attn_mask, is_causal)
        d = q.shape[-1]
        run = lambda: (sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw),)  # noqa: E731
        return ledger.through("sdpa", attention_flops(pairs, d), attention_flops(pairs, d, True), [q, k, v], run)[0]

    def routed_stub(q, k, v, route, *, scale=None):
        bsz, t_len, heads, d = q.shape
        pairs = routed_pairs(route_to_mask(route, t_len, bsz)) * heads
        run = lambda: (ra(q, k, v, route, scale=scale),)  # noqa: E731
        return ledger.through("routed_attention", attention_flops(pairs, d), attention_flops(pairs, d, True), [q, k, v], run)[0]

    def scan_stub(x, log_a, b, c, *, initial_state=None, chunk_size=None):
        bsz, t_len, heads, p = x.shape
        n = b.shape[-1]
        run = lambda: tuple(scan(x, log_a, b, c, initial_state=initial_state, chunk_size=chunk_size))  # noqa: E731
        tensors = [x, log_a, b, c] + ([initial_state] if initial_state is not None else [])
        y, state = ledger.through("ssm_scan", scan_flops(bsz, t_len, heads, n, p), scan_flops(bsz, t_len, heads, n, p, True),
                                  tensors, run)  # fmt: skip
        return y, state

    def step_stub(state, x, log_a, b, c):
        bsz, heads, p = x.shape
        n = b.shape[-1]
        run = lambda: tuple(step(state, x, log_a, b, c))  # noqa: E731
        y, new = ledger.through("ssm_scan", scan_flops(bsz, 1, heads, n, p), scan_flops(bsz, 1, heads, n, p, True),
                                [state, x, log_a, b, c], run)  # fmt: skip
        return y, new

    stubs = {"routed_attention": (ra, routed_stub), "ssm_scan": (scan, scan_stub), "ssm_step": (step, step_stub)}
    cached = _find_function("cached_attention")
    if cached is not None:

        def cached_stub(q, rows, st, pos):
            ti = rows[:, 1].to(torch.int64)
            pairs = int((pos + ti + 1).sum()) * q.shape[1]
            d = q.shape[-1]
            run = lambda: (cached(q, rows, st, pos),)  # noqa: E731
            return ledger.through("cached_attention", attention_flops(pairs, d), attention_flops(pairs, d, True), [q], run)[0]

        stubs["cached_attention"] = (cached, cached_stub)
    gathered = _find_function("gathered_attention")
    if gathered is not None:

        from cramkit.gpu.model.gathered import key_spans

        def gathered_stub(q, k, v, idx):
            bsz, heads, cap, d = q.shape
            pairs = bsz * heads * sum((b - a) * n for a, b, n in key_spans(idx))  # every pair of each group's span
            run = lambda: (gathered(q, k, v, idx),)  # noqa: E731
            return ledger.through("gathered_attention", attention_flops(pairs, d), attention_flops(pairs, d, True),
                                  [q, k, v], run)[0]  # fmt: skip

        stubs["gathered_attention"] = (gathered, gathered_stub)
    return {**stubs, "sdpa": (sdpa, sdpa_stub)}


def _find_function(name: str):
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("cramkit.gpu.model") and mod is not None:
            fn = getattr(mod, name, None)
            if callable(fn) and getattr(fn, "__module__", "").startswith("cramkit."):
                return fn
    return None


@contextlib.contextmanager
def _patched(ledger: Ledger) -> Iterator[None]:
    """Replace the kernels by their counted stubs in every loaded cramkit module (and
    ``torch.nn.functional.scaled_dot_product_attention``), restoring them on exit."""
    stubs = _stubs(ledger)
    undo: list[tuple[object, str, object]] = []
    try:
        for name, (orig, stub) in stubs.items():
            if name == "sdpa":
                undo.append((F, "scaled_dot_product_attention", orig))
                F.scaled_dot_product_attention = stub
                continue
            for mod_name, mod in list(sys.modules.items()):
                if mod is None or not mod_name.startswith("cramkit."):
                    continue
                for attr, value in list(vars(mod).items()):
                    if value is orig:
                        undo.append((mod, attr, orig))
                        setattr(mod, attr, stub)
        yield
    finally:
        for mod, attr, orig in reversed(undo):
            setattr(mod, attr, orig)


# ------------------------------------------------------------------------------------------------
# CRAM layers: where-tags and the readout proxy


class _ReadoutProxy(nn.Module):
    """Counting-time stand-in for ``ForwardContext.readout`` inside one CRAM layer, so that the
    counter attributes the layer's own readouts to a module of their own."""

    def __init__(self, readout: Callable) -> None:
        super().__init__()
        self._readout = [readout]

    def forward(self, *args, **kwargs):
        return self._readout[0](*args, **kwargs)


IN_LAYER = ("decode", "fast_step", "fast_prefill")  # the layer's other entry points: inside a CRAM layer too
PROXY_NAME = "flops_readout"
AUX_PROXY_NAME = "flops_aux_readout"  # the same for ``ForwardContext.aux_readout`` (the frozen head)


@contextlib.contextmanager
def _instrument_cram_layers(model: nn.Module, ledger: Ledger) -> Iterator[list[str]]:
    """Wrap every CRAM layer's ``mix`` and ``decode`` (instance attributes, removed on exit): the
    ledger knows it is inside a CRAM layer, and ``ctx.readout`` goes through a proxy module.
    Yields the layers' module names."""
    layers = list(getattr(model, "cram_layers", []) or [])
    names = {id(m): n for n, m in model.named_modules()}
    added: list[nn.Module] = []
    try:
        for layer in layers:
            mix, decode = layer.mix, layer.decode
            proxy, aux_proxy = _ReadoutProxy(lambda *a, **k: None), _ReadoutProxy(lambda *a, **k: None)
            layer.add_module(PROXY_NAME, proxy)
            layer.add_module(AUX_PROXY_NAME, aux_proxy)
            added.append(layer)

            def wrapped_mix(h, ctx, _mix=mix, _proxy=proxy, _aux=aux_proxy):
                prev = ledger.where
                ledger.where = "cram"
                try:
                    if ctx is not None and getattr(ctx, "readout", None) is not None:
                        _proxy._readout[0] = ctx.readout
                        ctx = dataclasses.replace(ctx, readout=_proxy)
                    if ctx is not None and getattr(ctx, "aux_readout", None) is not None:
                        _aux._readout[0] = ctx.aux_readout
                        ctx = dataclasses.replace(ctx, aux_readout=_aux)
                    return _mix(h, ctx)
                finally:
                    ledger.where = prev

            def wrapped_decode(*args, _decode=decode, **kwargs):
                prev = ledger.where
                ledger.where = "cram"
                try:
                    return _decode(*args, **kwargs)
                finally:
                    ledger.where = prev

            layer.mix = wrapped_mix
            for attr in IN_LAYER:
                setattr(layer, attr, functools.partial(wrapped_decode, _decode=getattr(layer, attr)))
        yield [names[id(layer)] for layer in layers]
    finally:
        for layer in added:
            for attr in ("mix", *IN_LAYER):
                layer.__dict__.pop(attr, None)
            delattr(layer, PROXY_NAME)
            delattr(layer, AUX_PROXY_NAME)


def _name_modules(counter, model: nn.Module) -> None:
    """Give the counter's module tracker the full names of ``model``'s modules up front. It names
    a child only when its parent's forward runs, and decoding calls blocks through ``decode``, not
    ``forward``, so their modules would be known only by class name (every ``Linear`` as one)."""
    known = getattr(getattr(counter, "mod_tracker", None), "_known_modules", None)
    if known is None:  # another torch: names come from the forward calls alone
        return
    root = type(model).__name__
    for name, mod in model.named_modules():
        known[mod] = f"{root}.{name}" if name else root


# ------------------------------------------------------------------------------------------------


TAG = "cram_flops_part"


def _part_modules(model: nn.Module) -> dict[nn.Module, str]:
    """The modules of each CRAM part: the layers' router, memory, attention projections and the
    readout proxy (installed by :func:`_instrument_cram_layers`)."""
    out: dict[nn.Module, str] = {}
    for layer in getattr(model, "cram_layers", []) or []:
        for name, mod in layer.named_children():
            if name == "router":
                out[mod] = "router"
            elif name == "memory":
                out[mod] = "memory"
            elif name in ATTENTION_PROJECTIONS:
                out[mod] = "attention"
            elif name in (PROXY_NAME, AUX_PROXY_NAME):
                out[mod] = "readouts"
    return out


def _tag_graph(outputs, inputs, part: str) -> None:
    """Tag the autograd nodes one module call created (reachable from its outputs without passing
    through its inputs' nodes) with ``part``, so that their backward ops are attributed to it."""
    stop = {t.grad_fn for t in inputs if isinstance(t, torch.Tensor) and t.grad_fn is not None}
    todo = [t.grad_fn for t in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))
            if isinstance(t, torch.Tensor) and t.grad_fn is not None]  # fmt: skip
    while todo:
        node = todo.pop()
        if node is None or node in stop or TAG in node.metadata or type(node).__name__ == "AccumulateGrad":
            continue
        node.metadata[TAG] = part
        todo.extend(n for n, _ in node.next_functions)


@contextlib.contextmanager
def _part_hooks(model: nn.Module, stack: list[str]) -> Iterator[None]:
    handles = []

    def pre(mod, args, part):
        stack.append(part)

    def post(mod, args, out, part):
        stack.pop()
        if torch.is_grad_enabled():
            _tag_graph(out, args, part)

    for mod, part in _part_modules(model).items():
        handles.append(mod.register_forward_pre_hook(lambda m, a, part=part: pre(m, a, part)))
        handles.append(mod.register_forward_hook(lambda m, a, o, part=part: post(m, a, o, part)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _part_counter(stack: list[str], parts: dict[str, float]):
    """A FlopCounterMode that also adds each counted op to the CRAM part it belongs to: in the
    forward pass the part module open around it, in the backward pass the part tagged on the
    autograd node being run. Kernel ops are left to the ledger."""
    # imported here, not at module level: importing torch.utils.flop_counter imports triton, and
    # triton imported before tests/ops/conftest.py sets TRITON_INTERPRET breaks the kernel tests
    from torch.utils.flop_counter import FlopCounterMode

    class PartCounter(FlopCounterMode):
        def _count_flops(self, func_packet, out, args, kwargs):
            if func_packet not in self.flop_registry or func_packet in KERNEL_OPS:
                return super()._count_flops(func_packet, out, args, kwargs)
            before = sum(self.flop_counts["Global"].values())
            res = super()._count_flops(func_packet, out, args, kwargs)
            delta = sum(self.flop_counts["Global"].values()) - before
            node = torch._C._current_autograd_node()
            part = node.metadata.get(TAG) if node is not None else (stack[-1] if stack else None)
            if part is not None:
                parts[part] += delta
            return res

    return PartCounter(display=False, custom_mapping=CUSTOM_MAPPING)


@dataclasses.dataclass
class FlopCount:
    """One counted run: the total, CRAM's parts (None for models without CRAM layers), the
    analytic kernel FLOPs by kind, and the counter's raw per-module totals."""

    total: float
    parts: dict[str, float] | None
    kernels: dict[str, float]
    modules: dict[str, float]


def count_flops(model: nn.Module, fn: Callable[[], object]) -> FlopCount:
    """Run ``fn`` (which uses ``model``) once under the FLOP counter with the kernel stubs; see the
    module docstring."""
    ledger = Ledger()
    stack: list[str] = []
    tagged: dict[str, float] = defaultdict(float)
    _ACTIVE.append(ledger)
    try:
        with _instrument_cram_layers(model, ledger) as layer_names, _patched(ledger), _part_hooks(model, stack):
            counter = _part_counter(stack, tagged)
            _name_modules(counter, model)
            with counter:
                fn()
    finally:
        _ACTIVE.remove(ledger)
    raw = counter.get_flop_counts()
    # kernel FLOPs come from the ledger (the counter's module tracker attributes the backward of a
    # kernel to whichever module's backward is open), everything else from the module totals
    modules = {name: float(sum(v for op, v in ops.items() if op not in KERNEL_OPS)) for name, ops in raw.items()}
    total = float(sum(raw.get("Global", {}).values()))
    kernels: dict[str, float] = defaultdict(float)
    for (_where, kind), v in ledger.flops.items():
        kernels[kind] += v
    parts = None
    if layer_names:
        parts = dict.fromkeys(PARTS, 0.0)
        for part, v in tagged.items():
            parts[part] += v
        parts["attention"] += ledger.total(where="cram")
        parts["backbone"] = total - sum(v for k, v in parts.items() if k != "backbone")
    return FlopCount(total=total, parts=parts, kernels=dict(kernels), modules=modules)

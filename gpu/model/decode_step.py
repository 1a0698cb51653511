"""The sync-free decode step: one token for every sequence, no host read, shapes fixed per cache
bucket, the state preallocated and updated in place (docs/inference.md, "The compiled decode step").

:class:`DecodeStep` wraps a :class:`~cramkit.gpu.model.network.CramModel` as one function of
tensors only, ``step(token, route, force, uniforms, pos, *state) -> logits``, so that it can be
exported and compiled ahead of time (:mod:`cramkit.gpu.model.compiled`) and called once per token:

- ``pos`` is a 0-d int64 tensor, advanced inside the step; keys and values are written into the
  preallocated cache with ``index_copy_`` at ``pos``;
- the key/value caches (``A`` and ``G`` layers) hold ``bucket`` positions, a power of two
  (:func:`bucket_for`); attention reads the whole bucket with the positions after ``pos`` masked,
  so one graph serves every step of a bucket; ``W`` layers keep a ring of ``model.window`` slots;
- a CRAM layer's decision is ``where(force, route, own)``: the forced route (B,) or the router's
  own rule computed in the step (:data:`STEP_RULES`); the attention read and the semantic memory
  run as ``torch.cond`` branches taken only when some row needs them (run uncompiled, the same
  branches are chosen by a host read, which is cheap on the CPU);
- the short causal convolution of an ``S`` layer is a sum of shifted products (``F.conv1d`` on
  one position is a slow library call on the CPU).

The state (:class:`StepState`) is made from a filled :class:`~cramkit.gpu.model.state.InferenceState`
(the prompt runs through ``model.prefill``), and grown to a larger bucket when it is full.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.model.attention import DenseAttention, WindowAttention
from cramkit.gpu.model.cram import CramAttention
from cramkit.gpu.model.routers import stride_period
from cramkit.gpu.model.ssm import SSMMixer
from cramkit.gpu.model.state import CramState, InferenceState, SSMState
from cramkit.gpu.ops.ssm_scan import ssm_step

MIN_BUCKET = 64


def bucket_for(n_positions: int) -> int:
    """The cache length that holds ``n_positions``: the next power of two, at least :data:`MIN_BUCKET`."""
    return max(MIN_BUCKET, 1 << max(0, int(n_positions) - 1).bit_length())


# -- the routers' own rule, one position at a time, from tensors only --------------------------
# rule(layer, h (B, d), pos 0-d, uniform (B,), phase (B,)) -> (B,) bool
StepRule = Callable[[CramAttention, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _stride_rule(layer, h, pos, u, phase):
    s = stride_period(layer.budget)
    if s is None:
        return torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    return (pos + phase) % s == 0


STEP_RULES: dict[str, StepRule] = {
    "cram": lambda layer, h, pos, u, phase: layer.router_logits(h) > 0,
    "dense": lambda layer, h, pos, u, phase: torch.ones(h.shape[0], dtype=torch.bool, device=h.device),
    "none": lambda layer, h, pos, u, phase: torch.zeros(h.shape[0], dtype=torch.bool, device=h.device),
    "skip-all": lambda layer, h, pos, u, phase: torch.zeros(h.shape[0], dtype=torch.bool, device=h.device),
    "stride": _stride_rule,
    "random": lambda layer, h, pos, u, phase: u < float(layer.budget),
}
"""The routers that decide token by token, as tensor code. ``learned-static`` (top-k over a whole
sequence) and ``oracle-pos`` (reads the query-slot layout) have none: they need a forced route."""

STEP_MIXERS = (SSMMixer, CramAttention, WindowAttention, DenseAttention)  # W before G (a subclass)


def own_route_reason(model) -> str | None:
    """Why ``model``'s routers cannot decide inside the step (None when they can)."""
    if not model.cram_layers:
        return None
    name = model.router_policy.name
    if name not in STEP_RULES:
        return f"the {name} router cannot decide token by token (it needs a forced route)"
    return None


def step_reason(model) -> str | None:
    """Why ``model`` has no sync-free step (None when it has one)."""
    for blk in model.blocks:
        if not isinstance(blk.mixer, STEP_MIXERS):
            return f"the {type(blk.mixer).__name__} mixer ({blk.kind}) has no sync-free step"
    return None


def _kind(mixer) -> str:
    for cls, kind in ((SSMMixer, "S"), (CramAttention, "A"), (WindowAttention, "W"), (DenseAttention, "G")):
        if isinstance(mixer, cls):
            return kind
    raise CramError(f"the {type(mixer).__name__} mixer has no sync-free step")


SLOTS = {"S": ("ssm", "conv"), "G": ("k", "v"), "W": ("k", "v"), "A": ("k", "v", "h_prev", "log", "phase")}


class StepState:
    """The preallocated state of the sync-free step: ``pos`` (0-d int64) and, per layer, the
    tensors named in :data:`SLOTS`. ``n`` mirrors ``pos`` on the host (counted, never read)."""

    def __init__(self, kinds: str, layers: list[dict[str, torch.Tensor]], pos: torch.Tensor, n: int, bucket: int):
        self.kinds, self.layers, self.pos, self.n, self.bucket = kinds, layers, pos, n, bucket

    @property
    def batch_size(self) -> int:
        return self.layers[0][SLOTS[self.kinds[0]][0]].shape[0]

    def flat(self) -> list[torch.Tensor]:
        return [self.pos] + [st[name] for kind, st in zip(self.kinds, self.layers) for name in SLOTS[kind]]

    def routes(self) -> list[torch.Tensor]:
        """(B, n) bool decisions of every CRAM layer so far."""
        return [st["log"][:, : self.n] for kind, st in zip(self.kinds, self.layers) if kind == "A"]

    def grow(self, bucket: int) -> None:
        """Move the caches and route logs into ``bucket`` positions (copying what they hold)."""
        if bucket <= self.bucket:
            return
        for kind, st in zip(self.kinds, self.layers):
            if kind in "AG":
                for name in ("k", "v"):
                    old = st[name]
                    new = old.new_zeros(*old.shape[:2], bucket, old.shape[3])
                    new[:, :, : self.bucket] = old
                    st[name] = new
            if kind == "A":
                log = st["log"].new_zeros(st["log"].shape[0], bucket)
                log[:, : self.bucket] = st["log"]
                st["log"] = log
        self.bucket = bucket


def _bucketed(t: torch.Tensor, n: int, bucket: int, dim: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = bucket
    out = t.new_zeros(shape)
    out.narrow(dim, 0, n).copy_(t.narrow(dim, 0, n))
    return out


def step_state_from(model, state: InferenceState, bucket: int | None = None) -> StepState:
    """The :class:`StepState` continuing a filled (prefilled) ``state``, in ``bucket`` positions
    (default: the bucket of ``state.pos + 1``). The stride phase comes from the router's memo."""
    n = state.pos
    bucket = bucket or bucket_for(n + 1)
    kinds = "".join(_kind(b.mixer) for b in model.blocks)
    layers: list[dict[str, torch.Tensor]] = []
    for kind, blk, st in zip(kinds, model.blocks, state.layers):
        if kind == "S":
            assert isinstance(st, SSMState)
            layers.append({"ssm": st.ssm.clone(), "conv": st.conv.clone()})
        elif kind == "W":
            ring = blk.mixer.window
            keep = torch.arange(max(0, n - ring), n, device=st.k.device)
            out = {}
            for name in ("k", "v"):
                src = getattr(st, name)
                buf = src.new_zeros(*src.shape[:2], ring, src.shape[3])
                buf[:, :, keep % ring] = src[:, :, keep]
                out[name] = buf
            layers.append(out)
        else:
            out = {"k": _bucketed(st.k, n, bucket, 2), "v": _bucketed(st.v, n, bucket, 2)}
            if kind == "A":
                assert isinstance(st, CramState)
                phase = st.memo.get("stride_phase")
                out["h_prev"] = st.h_prev.clone()
                out["log"] = _bucketed(st.route, n, bucket, 1)
                out["phase"] = (phase.clone() if phase is not None else
                                torch.zeros(st.k.shape[0], dtype=torch.int64, device=st.k.device))  # fmt: skip
            layers.append(out)
    pos = torch.tensor(n, dtype=torch.int64, device=model.embed.weight.device)
    return StepState(kinds, layers, pos, n, bucket)


# -- the step ---------------------------------------------------------------------------------


def _branch(pred: torch.Tensor, on: Callable, off: Callable, args: tuple) -> torch.Tensor:
    """``torch.cond`` when traced (export, torch.compile); a host read when run eagerly."""
    if torch.compiler.is_compiling():
        return torch.cond(pred, on, off, args)
    return on(*args) if bool(pred) else off(*args)


def _cache_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One query per row (B, H, D) against the cache (B, H, L, D), keys at slots ``<= pos``.
    The mask is made inside the score computation (a stored bool mask of L slots costs more on
    the CPU than the step's matrix products)."""
    scores = (q[:, :, None, :] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, 1, L)
    scores = scores.masked_fill(torch.arange(k.shape[2], device=k.device) > pos, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v)[:, :, 0]


def _ssm(mx: SSMMixer, u, st):
    z, xbc, dt = torch.split(mx.in_proj(u), [mx.d_inner, mx.conv.in_channels, mx.h], dim=-1)
    conv = st["conv"]
    width = mx.conv.kernel_size[0]
    weight = mx.conv.weight[:, 0, :]  # (C, W)
    acc = xbc * weight[:, width - 1]
    for j in range(width - 1):  # the conv as a sum of shifted products
        acc = acc + conv[:, :, j] * weight[:, j]
    if mx.conv.bias is not None:
        acc = acc + mx.conv.bias
    if width > 1:
        conv.copy_(torch.cat([conv[:, :, 1:], xbc[:, :, None]], dim=2))
    x, xdt, log_a, b, c = mx._scan_inputs(F.silu(acc)[:, None], dt[:, None])
    y, new = ssm_step(st["ssm"], xdt[:, 0], log_a[:, 0], b[:, 0], c[:, 0])
    st["ssm"].copy_(new)
    return mx._output(y[:, None], x, z[:, None], u.dtype)[:, 0]


def _dense(mx: DenseAttention, x, st, pos, ring: int | None):
    bsz, d = x.shape
    q, k, v = mx.qkv(x).view(bsz, 3, mx.h, d // mx.h).unbind(1)  # (B, H, D)
    slot = (pos % ring if ring else pos).view(1)
    st["k"].index_copy_(2, slot, k[:, :, None])
    st["v"].index_copy_(2, slot, v[:, :, None])
    # a ring slot is filled once pos has reached it: the same mask as the full cache
    return mx.proj(_cache_attend(q, st["k"], st["v"], pos).reshape(bsz, d))


def _cram(layer: CramAttention, h, st, pos, route, force, u, rule: StepRule, mixes: bool):
    bsz, d = h.shape
    k = (layer.k(h) + layer.k_prev(st["h_prev"])).view(bsz, layer.h, 1, d // layer.h)
    v = layer.v(h).view(bsz, layer.h, 1, d // layer.h)
    st["k"].index_copy_(2, pos.view(1), k)
    st["v"].index_copy_(2, pos.view(1), v)
    st["h_prev"].copy_(h)
    r = torch.where(force, route, rule(layer, h, pos, u, st["phase"]))
    if not mixes:
        st["log"].index_copy_(1, pos.view(1), torch.zeros_like(r)[:, None])
        return torch.zeros_like(h)
    st["log"].index_copy_(1, pos.view(1), r[:, None])

    def attend(h, kc, vc, pos):
        q = layer.q(h).view(bsz, layer.h, d // layer.h)
        return layer.o(_cache_attend(q, kc, vc, pos).reshape(bsz, d))

    def memory(h):
        return layer.memory(h)

    def zeros(h, *rest):
        return torch.zeros_like(h)

    a = _branch(r.any(), attend, zeros, (h, st["k"], st["v"], pos))
    m = _branch((~r).any(), memory, zeros, (h,))
    return torch.where(r[:, None], a, m)


class DecodeStep(nn.Module):
    """``forward(token (B,), route (B,) bool, force () bool, uniforms (n_cram, B), pos (), *state)``
    -> logits (B, V'): one position for every sequence, the state (``StepState.flat()`` order,
    ``pos`` first) updated in place. ``force`` True: every CRAM layer takes ``route``; False: the
    router's own rule (``uniforms`` are the ``random`` router's draws, one row per CRAM layer)."""

    def __init__(self, model):
        super().__init__()
        reason = step_reason(model)
        if reason:
            raise CramError(reason)
        self.model = model
        self.kinds = "".join(_kind(b.mixer) for b in model.blocks)
        name = model.router_policy.name
        self.rule = STEP_RULES.get(name, STEP_RULES["skip-all"])  # forced-only routers: never used unforced
        self.mixes = model.router_policy.mixes

    def forward(self, token, route, force, uniforms, pos, *flat):
        m = self.model
        x = m.embed(token)
        if m.pos is not None:
            x = x + m.pos(pos)
        i, j = 0, 0
        for kind, blk in zip(self.kinds, m.blocks):
            names = SLOTS[kind]
            st = dict(zip(names, flat[i : i + len(names)]))
            i += len(names)
            h = blk.norm1(x)
            if kind == "S":
                y = _ssm(blk.mixer, h, st)
            elif kind == "A":
                y = _cram(blk.mixer, h, st, pos, route, force, uniforms[j], self.rule, self.mixes)
                j += 1
            else:
                y = _dense(blk.mixer, h, st, pos, blk.mixer.window if kind == "W" else None)
            x = blk._mlp(x + y)
        pos.add_(1)
        return m.readout(x)

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

Each mixer owns its part (gpu/model/mixer.py: ``step_state``, ``fast_step``, ``fast_prefill``);
this module is the loop over the blocks. The state (:class:`StepState`) is made from a filled
:class:`~cramkit.gpu.model.state.InferenceState` (:func:`step_state_from`) or filled by the
sync-free prefill (:mod:`cramkit.gpu.model.prefill_step`), and grown to a larger bucket when it
is full.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cramkit.gpu.model.attention import bucketed
from cramkit.gpu.model.cram import STEP_RULES
from cramkit.gpu.model.mixer import StepContext
from cramkit.gpu.model.routers import stride_period
from cramkit.gpu.model.state import InferenceState

__all__ = ["MIN_BUCKET", "STEP_RULES", "DecodeStep", "StepState", "bucket_for", "own_route_reason",
           "step_state_from", "stride_period"]  # fmt: skip

MIN_BUCKET = 64


def bucket_for(n_positions: int) -> int:
    """The cache length that holds ``n_positions``: the next power of two, at least :data:`MIN_BUCKET`."""
    return max(MIN_BUCKET, 1 << max(0, int(n_positions) - 1).bit_length())


def own_route_reason(model) -> str | None:
    """Why ``model``'s routers cannot decide inside the step (None when they can)."""
    if not model.cram_layers:
        return None
    name = model.router_policy.name
    if name not in STEP_RULES:
        return f"the {name} router cannot decide token by token (it needs a forced route)"
    return None


class StepState:
    """The preallocated state of the sync-free step: ``pos`` (0-d int64) and, per layer, the named
    tensors its mixer made (``Mixer.step_state``); ``grows`` per layer: the tensors that grow with
    the bucket and their dimension (``Mixer.step_bucketed``); ``routed`` per layer: a CRAM layer
    (its decisions in ``"log"``). ``n`` mirrors ``pos`` on the host (counted, never read)."""

    def __init__(self, layers: list[dict[str, torch.Tensor]], grows: list[dict[str, int]], routed: list[bool],
                 pos: torch.Tensor, n: int, bucket: int):  # fmt: skip
        self.layers, self.grows, self.routed = layers, grows, routed
        self.pos, self.n, self.bucket = pos, n, bucket

    @property
    def batch_size(self) -> int:
        return next(iter(self.layers[0].values())).shape[0]

    @property
    def n_routed(self) -> int:
        return sum(self.routed)

    def flat(self) -> list[torch.Tensor]:
        return [self.pos] + [t for st in self.layers for t in st.values()]

    def routes(self) -> list[torch.Tensor]:
        """(B, n) bool decisions of every CRAM layer so far."""
        return [st["log"][:, : self.n] for st, r in zip(self.layers, self.routed) if r]

    def grow(self, bucket: int) -> None:
        """Move the caches and route logs into ``bucket`` positions (copying what they hold)."""
        if bucket <= self.bucket:
            return
        for st, grows in zip(self.layers, self.grows):
            for name, dim in grows.items():
                st[name] = bucketed(st[name], self.bucket, bucket, dim)
        self.bucket = bucket


def unflatten(slots: list[tuple[str, ...]], flat) -> list[dict[str, torch.Tensor]]:
    """Per block, its step-state tensors by name from ``flat`` (``StepState.flat()`` order without
    ``pos``; ``slots``: each block's names)."""
    layers, i = [], 0
    for names in slots:
        layers.append(dict(zip(names, flat[i : i + len(names)])))
        i += len(names)
    return layers


def empty_step_state(model, batch: int, bucket: int) -> StepState:
    """A fresh :class:`StepState` (position 0) for ``batch`` sequences in ``bucket`` positions."""
    return step_state_from(model, model.init_state(batch, 1), bucket)


def step_state_from(model, state: InferenceState, bucket: int | None = None) -> StepState:
    """The :class:`StepState` continuing a filled (prefilled) ``state``, in ``bucket`` positions
    (default: the bucket of ``state.pos + 1``)."""
    n = state.pos
    bucket = bucket or bucket_for(n + 1)
    mixers = [b.mixer for b in model.blocks]
    layers = [mx.step_state(st, n, bucket) for mx, st in zip(mixers, state.layers)]
    pos = torch.tensor(n, dtype=torch.int64, device=model.embed.weight.device)
    return StepState(layers, [dict(mx.step_bucketed) for mx in mixers], [mx.routed for mx in mixers], pos, n, bucket)


# -- the step ---------------------------------------------------------------------------------


class DecodeStep(nn.Module):
    """``forward(token (B,), route (B,) bool, force () bool, uniforms (n_cram, B), pos (), *state)``
    -> logits (B, V'): one position for every sequence, the state (``StepState.flat()`` order,
    ``pos`` first) updated in place. ``force`` True: every CRAM layer takes ``route``; False: the
    router's own rule (``uniforms`` are the ``random`` router's draws, one row per CRAM layer)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # the step-state tensors each block takes (the order of StepState.flat, the same for every bucket)
        probe = empty_step_state(model, 1, MIN_BUCKET)
        self.slots = [tuple(st) for st in probe.layers]

    def forward(self, token, route, force, uniforms, pos, *flat):
        m = self.model
        x = m.embed(token)
        if m.pos is not None:
            x = x + m.pos(pos)
        sctx = StepContext(pos, route, force, uniforms)
        for st, blk in zip(unflatten(self.slots, flat), m.blocks):
            x = blk._mlp(x + blk.mixer.fast_step(blk.norm1(x), st, sctx))
            sctx.draw += blk.mixer.routed
        pos.add_(1)
        return m.readout(x)

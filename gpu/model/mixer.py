"""The mixer contract: what a mixer reads (:class:`ForwardContext`) and gives back
(:class:`MixerOut`, with a CRAM layer's :class:`LayerTrace`), and the :class:`Mixer` base class.

A mixer implements ``mix`` over whole sequences (plain mixers: ``forward(h) -> y``, which ``mix``
wraps), ``init_state`` / ``decode`` for token-by-token inference (docs/inference.md), and its
sync-free step (docs/inference.md, "The compiled decode step"):

- ``step_state(st, n, bucket) -> dict[str, Tensor]``: its preallocated step state (named tensors,
  their order the step's argument order) continuing the filled decode state ``st`` of ``n``
  positions, its caches holding ``bucket`` positions;
- ``step_bucketed``: which of those tensors grow with the bucket, and along which dimension;
- ``fast_step(h (B, d), st, sctx: StepContext) -> y (B, d)``: one position, no host read, shapes
  fixed per bucket, ``st`` updated in place;
- ``fast_prefill(h (B, T, d), st, pctx: PrefillContext) -> y (B, T, d)``: the first ``T``
  positions of a fresh step state, shapes fixed per (T, routed capacity), ``st`` filled so that
  ``fast_step`` continues from it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from cramkit.gpu.model.state import (
    DecodeContext,
)


@dataclass
class LayerTrace:
    """What one CRAM layer did in a forward pass (all detached)."""

    route: torch.Tensor  # (B, T) bool: attention computed and used
    router_route: torch.Tensor  # (B, T) bool: the router's own decision (no exploration)
    logits: torch.Tensor | None  # (B, T) router logits (learned routers) or None
    z: torch.Tensor | None = None  # (N,) bool router target at target positions
    loss_m: torch.Tensor | None = None  # (N,) semantic path loss at target positions
    loss_a: torch.Tensor | None = None  # (N,) episodic path loss where a is known (NaN elsewhere)
    distill: torch.Tensor | None = None  # (N,) relative distillation error (NaN where a unknown)
    pred_m: torch.Tensor | None = None  # (N,) argmax of the semantic readout
    pred_a: torch.Tensor | None = None  # (N,) argmax of the episodic readout (-1 where unknown)
    probe: torch.Tensor | None = None  # (B, T) bool: a computed for the gain label only (not in the output)


@dataclass
class MixerOut:
    y: torch.Tensor  # (B, T, d) the mixer's output (added to the residual by the block)
    trace: LayerTrace | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # named auxiliary losses


@dataclass
class StepContext:
    """What a mixer's ``fast_step`` reads: ``pos`` 0-d int64 (the position being written);
    ``route`` (B,) bool and ``force`` 0-d bool (True: the CRAM layers take ``route``, else their
    router's rule); ``uniforms`` (n_cram, B) the ``random`` router's draws, one row per CRAM layer
    (a routed mixer reads row ``draw``, set by the step before it runs the layer)."""

    pos: torch.Tensor
    route: torch.Tensor
    force: torch.Tensor
    uniforms: torch.Tensor
    draw: int = 0


@dataclass
class PrefillContext:
    """What a mixer's ``fast_prefill`` reads: ``route`` (B, T) bool forced decisions or None (the
    router decides, as the eager prefill does); ``generator`` for drawing routers; ``n_targets``
    (B,) the budget's denominator; ``capacity`` the routed-row buffer's length (None: a power of
    two >= the most rows routed in one sequence, one host read per routed layer)."""

    route: torch.Tensor | None
    generator: torch.Generator | None
    n_targets: torch.Tensor
    capacity: int | None = None


@dataclass
class ForwardContext:
    """What the layers read in a whole-sequence forward pass (built once by CramModel.forward).

    ``tmask`` (B, T) bool target positions and ``tgt`` (N,) their targets (in readout indices),
    None without targets; ``route`` (B, T) forces every CRAM layer's decision; ``readout(x, norm)``
    is the model's head (the CRAM layer's own losses read a_t and m_t through it, or through
    ``aux_readout``, a stop-gradient copy of it); ``sample`` (N,) bool the target positions at which
    the layer's readout losses and router labels are computed this step (None: every one)."""

    readout: Callable[[torch.Tensor, nn.Module | None], torch.Tensor]
    n_targets: torch.Tensor  # (B,) target positions per sequence (the budget's denominator)
    aux_readout: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None  # the head, frozen
    sample: torch.Tensor | None = None  # (N,) bool target positions of the readout losses (None: all)
    aux: bool = True  # compute the layers' own losses (False when every one of them has weight 0)
    tmask: torch.Tensor | None = None
    tgt: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None
    explore: torch.Tensor | None = None
    route: torch.Tensor | None = None
    generator: torch.Generator | None = None
    oracle: bool = False
    # the rest of the network after this block's mixer, where it is per position (the layer is in the
    # last block): the logits at the target rows ``rows`` (N,) bool if the mixer's output there were
    # ``y`` (n, d); None elsewhere (router.target = "gain" reads it, docs/training.md)
    suffix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def has_targets(self) -> bool:
        return self.tmask is not None


class Mixer(nn.Module, abc.ABC):
    """A sequence mixer: ``mix`` over whole sequences, ``decode`` to continue one from a state.

    Plain mixers implement ``forward(h) -> y`` (``mix`` wraps it), and every mixer implements
    ``init_state`` and ``decode`` (token-by-token inference)."""

    def mix(self, h: torch.Tensor, ctx: ForwardContext | None) -> MixerOut:
        return MixerOut(self(h))

    @abc.abstractmethod
    def init_state(self, batch: int, max_len: int, device, dtype):
        """The empty inference state of this mixer for ``batch`` sequences of up to ``max_len``."""

    @abc.abstractmethod
    def decode(self, h: torch.Tensor, state, dctx: DecodeContext) -> torch.Tensor:
        """The output for the next positions ``h``, continuing (and updating) ``state``."""

    # -- the sync-free step (see the module docstring) -----------------------------------------
    routed: bool = False  # reads a row of ``StepContext.uniforms`` and logs its decisions ("log")
    step_bucketed: ClassVar[dict[str, int]] = {}  # step-state tensors that grow with the bucket -> their dimension

    @abc.abstractmethod
    def step_state(self, st, n: int, bucket: int) -> dict[str, torch.Tensor]:
        """The preallocated step state continuing the filled decode state ``st`` of ``n`` positions."""

    @abc.abstractmethod
    def fast_step(self, h: torch.Tensor, st: dict[str, torch.Tensor], sctx: StepContext) -> torch.Tensor:
        """One position (B, d) -> (B, d), no host read, ``st`` updated in place."""

    @abc.abstractmethod
    def fast_prefill(self, h: torch.Tensor, st: dict[str, torch.Tensor], pctx: PrefillContext) -> torch.Tensor:
        """The first ``T`` positions (B, T, d) of a fresh step state, filling ``st``."""

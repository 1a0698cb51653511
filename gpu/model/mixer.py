"""The mixer contract: what a mixer reads (:class:`ForwardContext`) and gives back
(:class:`MixerOut`, with a CRAM layer's :class:`LayerTrace`), and the :class:`Mixer` base class.

A mixer implements ``mix`` over whole sequences (plain mixers: ``forward(h) -> y``, which ``mix``
wraps), and ``init_state`` / ``decode`` for token-by-token inference (docs/inference.md).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

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

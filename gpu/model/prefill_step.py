"""The sync-free prefill: the prompt's T positions in one pass of static shapes, straight into the
preallocated state of the sync-free step (docs/inference.md, "Prefill through the routed step").

:func:`prefill_into` runs a prompt (B, T) through every block's ``Mixer.fast_prefill`` into a fresh
:class:`~cramkit.gpu.model.decode_step.StepState`; :class:`~cramkit.gpu.model.decode_step.DecodeStep`
continues from it. A CRAM layer gathers its routed rows into a buffer of a fixed capacity (a power
of two >= the most rows routed in one sequence) instead of ``h[route]``: the query projection,
attention and output projection run on that buffer, the semantic memory on every row, the keys
and values go into the cache. Shapes depend only on (B, T, capacity); the one host read left is
the capacity (once per chunk for a forced route, once per CRAM layer for the router's own
decisions). :class:`PrefillStep` wraps it as one function of tensors, for ``torch.compile``
(forced routes; whether compiling pays is measured: docs/results/model-speed.md, "Prefill
through the routed step (issue 22)").
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cramkit.errors import CramError
from cramkit.gpu.model.decode_step import StepState, empty_step_state, unflatten
from cramkit.gpu.model.gathered import routed_capacity
from cramkit.gpu.model.mixer import PrefillContext
from cramkit.gpu.model.state import check_route


def check_prompt(model, tokens: torch.Tensor, bucket: int) -> None:
    """A clear error for a prompt the sync-free prefill cannot take."""
    if tokens.dim() != 2 or tokens.shape[1] < 1:
        raise CramError(f"prefill takes tokens of shape (B, T) with T >= 1, got {tuple(tokens.shape)}")
    if tokens.shape[1] > bucket:
        raise CramError(f"a prompt of {tokens.shape[1]} positions does not fit a state of {bucket}")
    if model.pos is not None and tokens.shape[1] > model.pos.num_embeddings:
        raise CramError(f"the prompt's {tokens.shape[1]} positions exceed model.max_len {model.pos.num_embeddings}")


def run_blocks(model, tokens: torch.Tensor, layers: list[dict[str, torch.Tensor]], pctx: PrefillContext) -> torch.Tensor:
    """Logits (B, T, V') of the first T positions, every layer's step state filled (the token
    range is checked by the caller: a host read)."""
    x = model.embed_positions(tokens)
    for blk, st in zip(model.blocks, layers):
        x = blk._mlp(x + blk.mixer.fast_prefill(blk.norm1(x), st, pctx))
    return model.readout(x)


@torch.no_grad()
def prefill_into(model, tokens: torch.Tensor, bucket: int, *, route=None, generator=None,
                 capacity: int | None = None) -> tuple[torch.Tensor, StepState]:  # fmt: skip
    """Run the prompt ``tokens`` (B, T) into a fresh step state of ``bucket`` positions; returns
    (logits (B, T, V'), state). ``route`` (B, T) bool forces every CRAM layer (None: their
    routers decide, as ``model.prefill`` does, drawing from ``generator``); ``capacity`` the
    routed-row buffer (default: from the forced route, or per layer from its decisions)."""
    check_prompt(model, tokens, bucket)
    bsz, t_len = tokens.shape
    route = check_route(route, (bsz, t_len), tokens.device)
    model.check_tokens(tokens)
    if capacity is None and route is not None:
        capacity = routed_capacity(route)
    state = empty_step_state(model, bsz, bucket)
    pctx = PrefillContext(route, generator, model.n_targets(bsz, t_len, device=tokens.device), capacity)
    logits = run_blocks(model, tokens, state.layers, pctx)
    state.pos.fill_(t_len)
    state.n = t_len
    return logits, state


class PrefillStep(nn.Module):
    """``forward(tokens (B, T), route (B, T) bool, *state) -> logits (B, T, V')`` for one forced
    route capacity: the sync-free prefill as one function of tensors (the state, in
    ``StepState.flat()`` order without ``pos``, filled in place), for ``torch.compile``."""

    def __init__(self, model, capacity: int, slots: list[tuple[str, ...]]):
        super().__init__()
        self.model, self.capacity, self.slots = model, int(capacity), slots

    def forward(self, tokens, route, *flat):
        n_targets = self.model.n_targets(*tokens.shape, device=tokens.device)
        pctx = PrefillContext(route, None, n_targets, self.capacity)
        return run_blocks(self.model, tokens, unflatten(self.slots, flat), pctx)

"""A block-by-block forward pass that captures attention inputs/outputs and can patch them.

:func:`run` is the one forward the measurement uses. With ``capture=True`` it returns, for every
layer, the normalised block input ``x = LN1(h)`` ``(B, T, d)``, the per-head outputs before the
output projection ``z`` ``(B, T, H, hd)`` and the layer output ``o`` ``(B, T, d)``. With a
``patch`` callable it replaces ``o_t`` by a prediction at chosen positions, computed from the
state of *this* (possibly already patched) run, which is what a deployed skip would see.
The residual stream receives ``adapter.block_output(layer, x, o)``: ``o`` for attention layers;
for a CRAM retrieval layer the model's own route decides between ``o`` (the episodic path) and
the layer's semantic memory, so the measured ``o`` is computed at every position while the
stream continues as the model computes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cramkit.gpu.redundancy.adapters import LMAdapter

# patch(layer, x (B,T,d), o (B,T,d)) -> new o, or None to leave the layer as it is
PatchFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]


@dataclass
class Pass:
    """What one forward returns."""

    nll: torch.Tensor  # (B, T) next-token NLL at position t (predicting t+1); last column 0
    xs: list[torch.Tensor] = field(default_factory=list)  # per layer (B, T, d)
    zs: list[torch.Tensor] = field(default_factory=list)  # per layer (B, T, H, hd)
    os: list[torch.Tensor] = field(default_factory=list)  # per layer (B, T, d)


def attention_output(adapter: LMAdapter, layer: int, z: torch.Tensor) -> torch.Tensor:
    """``o = z.flatten(-2) @ W_O + b_O`` for per-head outputs ``z`` ``(..., H, hd)``."""
    return z.flatten(-2) @ adapter.w_o(layer) + adapter.b_o(layer)


@torch.no_grad()
def run(
    adapter: LMAdapter,
    tokens: torch.Tensor,
    *,
    capture: bool = False,
    patch: PatchFn | None = None,
) -> Pass:
    """Run ``tokens`` ``(B, T)`` through the model; see the module doc for ``capture``/``patch``."""
    h = adapter.embed(tokens)
    out = Pass(nll=torch.empty(0))
    for layer in range(adapter.n_layers):
        h = adapter.before_attention(layer, h)
        x = adapter.ln1(layer, h)
        q, k, v = adapter.qkv(layer, x)
        z = adapter.attend(layer, q, k, v)  # (B, T, H, hd)
        o = attention_output(adapter, layer, z)
        if capture:
            out.xs.append(x)
            out.zs.append(z)
            out.os.append(o)
        if patch is not None:
            new = patch(layer, x, o)
            if new is not None:
                o = new
        h = adapter.after_attention(layer, h + adapter.block_output(layer, x, o))
    logits = adapter.logits(h).float()  # (B, T, V)
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view(tokens.shape[0], -1)
    out.nll = F.pad(nll, (0, 1))
    return out


def swapped_context_z(
    adapter: LMAdapter, layer: int, x_query: torch.Tensor, x_context: torch.Tensor
) -> torch.Tensor:
    """Per-head outputs with queries from ``x_query`` and keys/values from ``x_context``.

    Both are layer-``layer`` normalised inputs ``(B, T, d)``; position t then attends to the
    other document's prefix 0..t of the same length (control C3).
    """
    q, _, _ = adapter.qkv(layer, x_query)
    _, k, v = adapter.qkv(layer, x_context)
    return adapter.attend(layer, q, k, v)

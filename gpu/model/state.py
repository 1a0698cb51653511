"""The decode state of each mixer, and the checks on it (docs/inference.md).

The model offers (see docs/inference.md)::

    state = model.init_state(batch_size, max_len)          # an InferenceState
    logits = model.prefill(tokens, state, route=None)       # (B, T) -> (B, T, V); fills state
    logits = model.step(token, state, route=None)           # (B,) -> (B, V); appends one position

Each layer keeps what its mixer needs to continue a sequence (the mixer creates it with
``init_state`` and reads / updates it in ``decode``):

- an ``S`` block: the SSM state ``[B, H, N, P]`` after the last position and the last
  ``conv_width - 1`` inputs of its causal convolution (:class:`SSMState`);
- a ``G`` block: keys and values at every position (:class:`KVState`);
- an ``A`` (CRAM) block: keys and values at every position, the previous normalised state (its
  keys carry a token shift), the router's decisions so far and the router's per-sequence draws
  (:class:`CramState`).

Keys and values are cached at every position rather than made on demand from cached hidden
states: a routed query must see every earlier key, and making them on demand would cost a
``T x d x d`` projection per routed step (docs/inference.md has the measured memory of both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cramkit.errors import CramError


@dataclass
class SSMState:
    ssm: torch.Tensor  # (B, H, N, P) float32 state after the last position
    conv: torch.Tensor  # (B, C, W - 1) the last W - 1 inputs of the causal convolution


@dataclass
class KVState:
    k: torch.Tensor  # (B, H, max_len, D): one contiguous run of keys per head (fast reads)
    v: torch.Tensor  # (B, H, max_len, D)


@dataclass
class CramState(KVState):
    h_prev: torch.Tensor = None  # (B, d) normalised state at the last position (token shift of keys)
    route: torch.Tensor = None  # (B, max_len) bool: the decisions so far
    memo: dict = field(default_factory=dict)  # the router's per-sequence draws (stride phase)


@dataclass
class InferenceState:
    """Everything a model needs to continue ``batch_size`` sequences of up to ``max_len`` positions."""

    batch_size: int
    max_len: int
    pos: int  # positions filled so far
    layers: list  # one state per block (SSMState, KVState or CramState)

    def routes(self) -> list[torch.Tensor]:
        """(B, pos) bool decisions of every CRAM layer so far."""
        return [st.route[:, : self.pos] for st in self.layers if isinstance(st, CramState)]

    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        total = 0
        for st in self.layers:
            for value in vars(st).values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total


@dataclass
class DecodeContext:
    """What a mixer reads when it continues a sequence: where the chunk starts, the forced route
    (B, T) or None, the generator of the random routers, and the default target count."""

    pos: int
    route: torch.Tensor | None
    generator: torch.Generator | None
    n_targets: torch.Tensor  # (B,) for the budget of capacity routers


def check_room(state: InferenceState, t_len: int, batch: int) -> None:
    """A clear error when ``t_len`` more positions do not fit ``state``."""
    if batch != state.batch_size:
        raise CramError(f"the inference state holds {state.batch_size} sequences, got a batch of {batch}")
    if state.pos + t_len > state.max_len:
        raise CramError(
            f"the inference state holds max_len={state.max_len} positions; {state.pos} are filled and "
            f"{t_len} more do not fit (make the state with a larger max_len)"
        )


def check_route(route: torch.Tensor | None, shape: tuple[int, ...], device) -> torch.Tensor | None:
    if route is None:
        return None
    if not isinstance(route, torch.Tensor) or route.dtype != torch.bool or tuple(route.shape) != tuple(shape):
        raise CramError(f"route must be a bool tensor of shape {tuple(shape)}")
    return route.to(device)

"""The network's config sections (``model``, ``router``) and the one checking mechanism every
config section uses.

Each field's type comes from its annotation, and each section's ``validate()`` checks ranges and
choices declared beside the field as metadata (:func:`setting`); relations between fields are a
section's ``_relations()``. Every error is one line naming the key. The run config that nests
these sections is :mod:`cramkit.gpu.run.config`.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass


from cramkit.errors import CramError
from cramkit.gpu.model.routers import ROUTER_NAMES

ROUTERS = ROUTER_NAMES  # the one router registry: cramkit.gpu.model.routers


def setting(default: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False, choices: tuple | None = None) -> Any:  # fmt: skip
    """A config field with its range (``lo``/``hi``, inclusive unless ``*_open``) or ``choices``."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None and v is not False})


def _interval(m: dict) -> str:
    left = "(" if m.get("lo_open") else "["
    right = ")" if m.get("hi_open") else "]"
    return f"{left}{m.get('lo', '-inf')}, {m.get('hi', 'inf')}{right}"


def check_field(key: str, value: Any, meta: typing.Mapping) -> None:
    """Raise CramError when ``value`` is outside the range or choices of its field metadata."""
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            raise CramError(f"{key} must be one of {choices}, got {value!r}")
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is None and not meta.get("lo_open"):
        if value < lo:
            raise CramError(f"{key} must be >= {lo}, got {value}")
        return
    bad_lo = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    bad_hi = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
    if bad_lo or bad_hi:
        if hi is None:
            raise CramError(f"{key} must be > {lo}, got {value}")
        if lo is None:
            raise CramError(f"{key} must be <= {hi}, got {value}")
        raise CramError(f"{key} must be in {_interval(meta)}, got {value}")


class Section:
    """Base of the config sections: ``validate(name)`` checks every field's declared range or
    choices, then the section's own :meth:`_relations`."""

    def validate(self, name: str) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata:
                check_field(f"{name}.{f.name}", getattr(self, f.name), f.metadata)
        self._relations(name)

    def _relations(self, name: str) -> None:
        """Checks between fields of this section (none by default)."""


@dataclass(frozen=True)
class ModelConfig(Section):
    """Architecture. ``pattern`` lists the layers: ``S`` = SSM block, ``A`` = CRAM retrieval block,
    ``G`` = plain dense causal attention block, ``W`` = sliding-window causal attention block
    (each position attends itself and the ``window - 1`` positions before it)."""

    pattern: str = "SA"
    d_model: int = setting(128, lo=1)
    n_heads: int = setting(4, lo=1)  # attention heads of the CRAM / dense attention layers
    ssm_heads: int = setting(4, lo=1)
    ssm_head_dim: int = setting(32, lo=1)
    d_state: int = setting(16, lo=1)
    conv_width: int = setting(4, lo=1)
    mlp_mult: int = setting(2, lo=1)
    memory_hidden: int = setting(256, lo=1)  # hidden width of the semantic memory MLP
    router_hidden: int = setting(64, lo=0)  # hidden width of the router MLP (0 = linear router)
    max_len: int = setting(0, lo=0)  # > 0 adds learned absolute position embeddings
    tie_embeddings: bool = True
    chunk_size: int = setting(64, lo=1)
    window: int = setting(64, lo=1)  # W layers: positions each query sees (itself included)

    def _relations(self, name: str) -> None:
        if not self.pattern or set(self.pattern) - set("SAGW"):
            raise CramError(f"{name}.pattern must be a non-empty string of S, A, G and W, got {self.pattern!r}")
        if self.d_model % self.n_heads:
            raise CramError(f"{name}.d_model ({self.d_model}) must be divisible by {name}.n_heads ({self.n_heads})")


@dataclass(frozen=True)
class RouterConfig(Section):
    """Which router the CRAM layers use and how the learned ones are trained."""

    name: str = setting("cram", choices=ROUTERS)
    budget: float = setting(-1.0, hi=1.0)  # attention budget of the static routers; < 0: the task's default
    # "error": z = 1[l_m > tau]; "utility": z = 1[l_m - l_a > delta] where attention ran; "gain": the
    # same at every sampled target row, attention probed where the route skipped it (docs/training.md)
    target: str = setting("error", choices=("error", "utility", "gain"))
    tau: float = setting(0.05, lo=0.0)  # nats, for target = "error"
    delta: float = setting(0.05, lo=0.0)  # nats, for target = "utility" and "gain"
    explore: float = setting(0.05, lo=0.0, hi=1.0)  # fraction of positions that attend in training regardless of the router
    init_bias: float = 4.0  # router logit bias at step 0 (> 0: every position attends)
    # the learned router is not trained for its first open_steps training steps (its parameters keep
    # their initial values: init_bias > 0 attends nearly everywhere), so attention learns to retrieve
    # before a label judges it; "gain" needs it where attention starts unable to help (docs/training.md)
    open_steps: int = setting(0, lo=0)
    static_frac: float = setting(0.3, lo=0.0, hi=1.0, lo_open=True, hi_open=True)  # learned-static: share of steps training the router on another pool
    static_scope: str = setting("all", choices=("all", "queries"))  # learned-static top-k over all positions or only query slots
    loss_weight: float = setting(1.0, lo=0.0)
    # what the CRAM layer's own losses may train (docs/training.md, "Losses"): "auto" (default):
    # "shared" on SRCD, "isolated" on text and token files (resolved when a run config is loaded; a
    # model built from a RouterConfig directly takes "auto" as "isolated"); "isolated": only the
    # layer's own modules -- the memory on sg(h), the episodic readout of sg(a), both
    # readouts through a stop-gradient copy of the shared head, so the backbone, attention and head
    # get the task loss's gradient alone; "own": as isolated, but the episodic readout of o(sg(c))
    # also trains attention's output projection; "memory": only the memory's losses and the head
    # isolated (the episodic loss reaches q/k/v and the backbone); "shared": the formulation before
    # issue 24 (every loss reaches the backbone and the head; SRCD needs it)
    aux_grad: str = setting("auto", choices=("auto", "isolated", "own", "memory", "shared"))
    # the readout losses and router labels are computed at ceil(aux_share * the batch's positions)
    # target positions, drawn afresh each training step (every target when that is as many); the
    # evaluation always uses every target position
    aux_share: float = setting(0.25, lo=0.0, hi=1.0, lo_open=True)

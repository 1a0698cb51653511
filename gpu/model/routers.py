"""The router registry of the CRAM layers: one class per ``router.name``, one ``route(...)`` method.

Every router answers the same question -- which rows of a CRAM layer attend -- from the same
:class:`RouteRequest`. The registry :data:`ROUTERS` maps each name to its class;
:data:`ROUTER_NAMES` is the one list of names (``gpu/model/config.py`` validates ``router.name``
against it). Each class names its counterpart in the simulator (``cramkit.sim.routers``,
``sim_name``), so the two layers share one vocabulary: ``dense`` is the simulator's ``ALL``,
``stride`` its ``STRIDE_<s>``, ``random`` its ``RAND_<p>`` and so on (``none`` has no counterpart:
it removes the CRAM layers altogether).

**Budget** (one meaning for every router, see docs/training.md, "Routers"): ``budget`` is the
fraction of *target positions* -- positions that carry a target: the query slots on SRCD, every
position in language modelling -- that attend. It is converted in one place
(:func:`budget_count`, :func:`budget_probability`, :func:`stride_period`):

- ``learned-static`` attends ``k = round(budget * n_targets)`` positions per sequence, and at
  least one when ``budget > 0`` (a positive budget never silently attends nothing);
- ``random`` and ``oracle-pos`` attend each position with probability ``budget`` (``random`` at
  every position, so a fraction ``budget`` of the target positions in expectation; ``oracle-pos``
  only at query slots);
- ``stride`` attends every ``s = round(1 / budget)``-th position with a phase drawn per sequence
  from the generator, so every position -- every target position -- attends with probability
  ``1 / s`` whatever the task's layout.

On SRCD, ``n_targets = n_q`` and these are exactly the rules the routers had before the
registry, except that ``stride`` no longer has a fixed phase and ``learned-static`` rounds a
positive count below one up to one.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from cramkit.errors import CramError

# ----------------------------------------------------------------------------------------------
# the budget, converted once
# ----------------------------------------------------------------------------------------------


def budget_count(budget: float, n_targets: torch.Tensor) -> torch.Tensor:
    """Positions per sequence a capacity router attends: ``round(budget * n_targets)``, at least 1
    when ``budget > 0`` (and 0 when ``budget == 0``). ``n_targets``: (B,) int. Returns (B,) int64."""
    k = torch.round(n_targets.to(torch.float64) * float(budget)).to(torch.int64)
    return k.clamp_min(1) if budget > 0 else torch.zeros_like(k)


def budget_probability(budget: float) -> float:
    """Per-position probability of the Bernoulli routers: the budget itself."""
    return float(budget)


def stride_period(budget: float) -> int | None:
    """Period of the stride router (``round(1 / budget)``, >= 1); None when the budget is 0."""
    return max(1, round(1.0 / budget)) if budget > 0 else None


# ----------------------------------------------------------------------------------------------
# the request every router answers
# ----------------------------------------------------------------------------------------------


@dataclass
class RouteRequest:
    """What a router may read to decide which rows of one CRAM layer attend.

    ``positions``: (T,) absolute 0-based positions of the rows (a whole sequence in training; a
    chunk of a growing sequence at inference). ``logits``: (B, T) router logits (learned routers
    only). ``query_mask``: (B, T) bool query-slot layout or None. ``n_targets``: (B,) int target
    positions per sequence (the budget's denominator). ``memo``: per-layer, per-sequence draws
    that must persist across chunks of one sequence (the stride phase). ``whole_sequence``: the
    rows are the whole sequence (non-causal routers need it).
    """

    batch: int
    positions: torch.Tensor
    budget: float
    n_targets: torch.Tensor
    logits: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None
    generator: torch.Generator | None = None
    memo: dict = field(default_factory=dict)
    whole_sequence: bool = True

    @property
    def shape(self) -> tuple[int, int]:
        return self.batch, int(self.positions.shape[0])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def rand(self) -> torch.Tensor:
        """(B, T) uniforms from the generator (drawn on the CPU, so a seed gives one sequence on any device)."""
        return torch.rand(*self.shape, generator=self.generator, device="cpu").to(self.device)


class Router(abc.ABC):
    """Base class. Subclasses set the class attributes and implement :meth:`route`."""

    name: ClassVar[str] = ""
    sim_name: ClassVar[str | None] = None  # counterpart in cramkit.sim.routers (a parse_router form)
    learned: ClassVar[bool] = False  # reads router logits (the layer has a trained router MLP)
    uses_budget: ClassVar[bool] = False
    causal: ClassVar[bool] = True  # the decision at t reads nothing after t (token-by-token decoding)
    mixes: ClassVar[bool] = True  # False: the CRAM layer contributes nothing (no attention, no memory)
    needs_layout: ClassVar[bool] = False  # reads the query-slot layout (query_mask)

    def __init__(self, static_scope: str = "all"):
        self.static_scope = static_scope

    @abc.abstractmethod
    def route(self, req: RouteRequest) -> torch.Tensor:
        """(B, T) bool: the rows that attend."""

    def sim_counterpart(self, budget: float) -> str | None:
        """The simulator's router name for this router at ``budget`` (None if it has none)."""
        return self.sim_name

    def _zeros(self, req: RouteRequest) -> torch.Tensor:
        return torch.zeros(*req.shape, dtype=torch.bool, device=req.device)

    def _layout(self, req: RouteRequest) -> torch.Tensor:
        if req.query_mask is None:
            raise CramError(f"the {self.name} router needs the query-slot layout (query_mask); pass route= instead")
        return req.query_mask


class CramRouter(Router):
    """Learned, consolidating: attend iff the router logit is positive."""

    name, sim_name, learned = "cram", "CR_<K>", True

    def route(self, req):
        return req.logits > 0


class LearnedStaticRouter(Router):
    """Mixture-of-Depths-style capacity: the top ``budget_count`` positions per sequence by router
    score (over all positions, or only the query slots with ``static_scope = "queries"``)."""

    name, sim_name, learned, uses_budget, causal = "learned-static", "LEARNED-STATIC", True, True, False

    def route(self, req):
        if not req.whole_sequence:
            raise CramError("the learned-static router picks its top-k over a whole sequence; pass route= to step")
        route = self._zeros(req)
        scores = req.logits
        if self.static_scope == "queries":  # knows the layout (like oracle-pos), not the types
            qmask = self._layout(req)
            scores = scores.masked_fill(~qmask, float("-inf"))
        k = budget_count(req.budget, req.n_targets).clamp_max(req.shape[1])
        kmax = int(k.max()) if k.numel() else 0
        if kmax:
            keep = torch.arange(kmax, device=req.device)[None, :] < k.to(req.device)[:, None]
            route.scatter_(1, scores.topk(kmax, dim=1).indices, keep)
            if self.static_scope == "queries":
                route &= qmask
        return route


class DenseRouter(Router):
    name, sim_name = "dense", "ALL"

    def route(self, req):
        return torch.ones(*req.shape, dtype=torch.bool, device=req.device)


class NoneRouter(Router):
    """Pure SSM: the CRAM layers contribute nothing."""

    name, sim_name, mixes = "none", None, False

    def route(self, req):
        return self._zeros(req)


class SkipAllRouter(Router):
    """Never attend; the semantic memory answers."""

    name, sim_name = "skip-all", "SKIP-ALL+M"

    def route(self, req):
        return self._zeros(req)


class StrideRouter(Router):
    """Every ``s``-th position, ``s = stride_period(budget)``, with a phase drawn per sequence."""

    name, sim_name, uses_budget = "stride", "STRIDE_<s>", True

    def route(self, req):
        s = stride_period(req.budget)
        if s is None:
            return self._zeros(req)
        phase = req.memo.get("stride_phase")
        if phase is None:
            phase = torch.randint(0, s, (req.batch,), generator=req.generator, device="cpu").to(req.device)
            req.memo["stride_phase"] = phase
        return (req.positions[None, :] + phase[:, None]) % s == 0

    def sim_counterpart(self, budget):
        s = stride_period(budget)
        return None if s is None else f"STRIDE_{s}"


class RandomRouter(Router):
    """Bernoulli(budget) at every position (type- and layout-blind)."""

    name, sim_name, uses_budget = "random", "RAND_<p>", True

    def route(self, req):
        return req.rand() < budget_probability(req.budget)

    def sim_counterpart(self, budget):
        return f"RAND_{budget:g}"


class OraclePosRouter(Router):
    """Knows where the query slots are, not their type: Bernoulli(budget) at query slots."""

    name, sim_name, uses_budget, needs_layout = "oracle-pos", "ORACLE-POS", True, True

    def route(self, req):
        qmask = self._layout(req)
        return qmask & (req.rand() < budget_probability(req.budget))


ROUTERS: dict[str, type[Router]] = {
    cls.name: cls
    for cls in (
        CramRouter, DenseRouter, NoneRouter, StrideRouter, RandomRouter,
        OraclePosRouter, LearnedStaticRouter, SkipAllRouter,
    )
}  # fmt: skip
ROUTER_NAMES: tuple[str, ...] = tuple(ROUTERS)


def make_router(name: str, static_scope: str = "all") -> Router:
    """The router called ``name`` (a :class:`CramError` naming the known ones otherwise)."""
    if name not in ROUTERS:
        raise CramError(f"router.name must be one of {ROUTER_NAMES}, got {name!r}")
    return ROUTERS[name](static_scope)


def check_budget(budget: float) -> float:
    """The budget as a float in [0, 1] (a :class:`CramError` otherwise)."""
    b = float(budget)
    if not (math.isfinite(b) and 0.0 <= b <= 1.0):
        raise CramError(f"the attention budget must be a fraction in [0, 1], got {budget!r}")
    return b

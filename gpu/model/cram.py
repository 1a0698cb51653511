"""``A``: the CRAM retrieval layer and the losses it owns (docs/training.md, "The model").

CRAM retrieval layer at position t with normalised hidden state h_t:

- episodic path a_t: causal softmax attention, computed only at routed rows (query projection,
  :func:`cramkit.gpu.ops.routed_attention.routed_attention` and output projection run on the
  routed rows alone; keys and values are made at every position, since every routed query sees
  every earlier key). Keys see the previous position through an exact token shift, which is
  what an induction-style lookup ``key -> next token`` needs;
- semantic memory m_t = M(h_t): an MLP that predicts a_t from h_t alone, run only where its
  output or a loss uses it (non-routed rows; the losses run it on sg(h_t) at their sampled target
  rows unless ``router.aux_grad = "shared"``);
- router: one of :data:`cramkit.gpu.model.routers.ROUTERS`; the learned ones read
  r_t = R(sg(h_t)) (an MLP on the detached state), bias initialised so that every position
  attends at step 0;
- output o_t = g_t a_t + (1 - g_t) m_t with a hard gate g_t (router decision; in training also the
  exploration mask).

The layer returns its output, a :class:`LayerTrace` and its own losses (:func:`episodic_loss`,
:func:`semantic_loss`, :func:`consolidation_loss`, :func:`router_loss`);
:meth:`cramkit.gpu.model.network.CramModel.forward` adds them to the task loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.gpu.model.attention import branch, bucketed, cache_attend, cached_attention
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.gathered import gather_slots, gathered_attention, routed_capacity
from cramkit.gpu.model.layers import MLP, RMSNorm
from cramkit.gpu.model.mixer import (
    ForwardContext,
    LayerTrace,
    Mixer,
    MixerOut,
    PrefillContext,
    StepContext,
)
from cramkit.gpu.model.routers import Router, RouteRequest, make_router, stride_period
from cramkit.gpu.model.state import (
    CramState,
    DecodeContext,
)
from cramkit.gpu.ops.routed_attention import routed_attention


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows; 0 (with a gradient path) when there are none, never NaN."""
    return x.mean() if x.numel() else x.sum()


def semantic_loss(lm: torch.Tensor) -> torch.Tensor:
    """The semantic memory's own loss: mean readout loss of m_t over every target position."""
    return _mean(lm)


def episodic_loss(la: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The episodic path's own loss: mean readout loss of a_t over attended target positions."""
    return (la * attended).sum() / attended.sum().clamp_min(1)


def consolidation_loss(dist: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """||M(h) - sg(a)||^2 / ||sg(a)||^2 averaged over attended target positions."""
    return (dist * attended).sum() / attended.sum().clamp_min(1)


def router_targets(lm: torch.Tensor, la: torch.Tensor, known: torch.Tensor, rcfg: RouterConfig) -> torch.Tensor:
    """z at target positions: ``error``: 1[l(m) > tau]; ``utility`` and ``gain``: 1[l(m) - l(a) > delta]
    where a is known (``gain``: every sampled row in training, :func:`probe_rows`)."""
    if rcfg.target == "error":
        return lm.detach() > rcfg.tau
    return (lm.detach() - la.detach() > rcfg.delta) & known


def label_defined(rcfg: RouterConfig, sel: torch.Tensor, known_sel: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the target positions at which the router's BCE reads z: the sampled ones
    (``sel``), only where a is known for ``utility``; ``gain`` probes a at every sampled row in
    training, so there it is every sampled row too (``known_sel``: sel & a known)."""
    return known_sel if rcfg.target in ("utility", "gain") else sel


def probe_rows(tmask: torch.Tensor, sample: torch.Tensor | None, route: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the sampled target rows the route skips, where the ``gain`` target computes the
    episodic path for its label only (never for the output or the task loss)."""
    return _scatter_mask(tmask, sample) & ~route


def router_loss(
    logits: torch.Tensor, z: torch.Tensor, tmask: torch.Tensor, defined_t: torch.Tensor
) -> torch.Tensor:
    """Router BCE: z at target positions (where defined), 0 elsewhere (attention has no use without
    a target); averaged separately over target and non-target positions, each 0 when empty."""
    ztgt = torch.zeros_like(logits)
    ztgt[tmask] = z.float()
    defined = torch.ones_like(tmask)
    defined[tmask] = defined_t
    bce = F.binary_cross_entropy_with_logits(logits, ztgt, reduction="none")
    on_t = (bce * (tmask & defined)).sum() / (tmask & defined).sum().clamp_min(1)
    off_t = (bce * ~tmask).sum() / (~tmask).sum().clamp_min(1)
    return on_t + off_t


def _place(rows: torch.Tensor, values: torch.Tensor, fill: float) -> torch.Tensor:
    """An (N,) tensor: ``values`` at the True entries of ``rows`` (N,) bool, ``fill`` elsewhere."""
    out = values.new_full(rows.shape, fill)
    out[rows] = values
    return out


def _scatter_mask(tmask: torch.Tensor, sample: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: the target positions of ``tmask`` chosen by ``sample`` (N,) (all when None)."""
    if sample is None:
        return tmask
    out = torch.zeros_like(tmask)
    out[tmask] = sample
    return out


def _scatter_rows(rows: torch.Tensor, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, T, d) tensor shaped like ``like``: ``values`` (n, d) at the True rows of ``rows``, 0 elsewhere."""
    out = like.new_zeros(like.shape)
    out[rows] = values
    return out


class CramAttention(Mixer):
    """The CRAM retrieval layer: router, routed episodic attention, semantic memory."""

    def __init__(self, cfg: ModelConfig, rcfg: RouterConfig, router: Router | None = None):
        super().__init__()
        d = cfg.d_model
        self.h = cfg.n_heads
        self.rcfg = rcfg
        self.router_name = rcfg.name
        self.policy = router or make_router(rcfg.name, rcfg.static_scope)
        self.budget = 1.0  # set by CramModel
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.k_prev = nn.Linear(d, d, bias=False)  # exact token shift into the keys
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d, bias=False)  # no bias: non-routed rows stay exactly zero
        self.memory = MLP(d, cfg.memory_hidden)
        if cfg.router_hidden:
            self.router = nn.Sequential(nn.Linear(d, cfg.router_hidden), nn.GELU(), nn.Linear(cfg.router_hidden, 1))
        else:
            self.router = nn.Sequential(nn.Linear(d, 1))
        self.norm_a = RMSNorm(d)
        self.norm_m = RMSNorm(d)

    # -- pieces -----------------------------------------------------------------------------
    def router_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.router(h.detach()).squeeze(-1).float()  # (B, T)

    def keys_values(self, h: torch.Tensor, h_prev: torch.Tensor | None = None):
        """Keys (with the token shift) and values at every position, (B, T, H, D) each.
        ``h_prev`` (B, d) is the state before the first row (zeros when None)."""
        bsz, t_len, d = h.shape
        first = h.new_zeros(bsz, 1, d) if h_prev is None else h_prev[:, None]
        shifted = torch.cat([first, h[:, :-1]], dim=1)
        k = (self.k(h) + self.k_prev(shifted)).view(bsz, t_len, self.h, d // self.h)
        return k, self.v(h).view(bsz, t_len, self.h, d // self.h)

    def attend(self, h: torch.Tensor, route: torch.Tensor, core: bool = False, kv=None):
        """The episodic path a (B, T, d): exact zeros at non-routed rows; the query and output
        projections run on the routed rows only. ``core``: also return the attention result before
        the output projection (B, T, d), zeros at non-routed rows. ``kv``: the keys and values of
        :meth:`keys_values` when already made (None: made here)."""
        if not bool(route.any()):
            return (torch.zeros_like(h), torch.zeros_like(h)) if core else torch.zeros_like(h)
        bsz, t_len, d = h.shape
        k, v = self.keys_values(h) if kv is None else kv
        q = _scatter_rows(route, self.q(h[route]), h).view(bsz, t_len, self.h, d // self.h)
        c = routed_attention(q, k, v, route).reshape(bsz, t_len, d)  # zero at non-routed rows
        a = _scatter_rows(route, self.o(c[route]), h)
        return (a, c) if core else a

    def memory_rows(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The semantic memory m (B, T, d) at ``rows`` only (zeros elsewhere)."""
        if not bool(rows.any()):
            return torch.zeros_like(h)
        return _scatter_rows(rows, self.memory(h[rows]), h)

    def decide(self, h: torch.Tensor, req: RouteRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The router's own decision (B, T) bool and its logits (learned routers)."""
        if self.policy.learned:
            req.logits = self.router_logits(h)
        return self.policy.route(req), req.logits

    # -- whole sequences ----------------------------------------------------------------------
    def mix(self, h: torch.Tensor, ctx: ForwardContext) -> MixerOut:
        bsz, t_len, _ = h.shape
        if ctx.route is not None:
            router_route, logits = ctx.route, None
            route = ctx.route
        else:
            req = RouteRequest(bsz, torch.arange(t_len, device=h.device), self.budget, ctx.n_targets,
                               query_mask=ctx.query_mask, generator=ctx.generator)  # fmt: skip
            router_route, logits = self.decide(h, req)
            route = router_route if ctx.explore is None else (router_route | ctx.explore)
        if not self.policy.mixes:
            route = torch.zeros_like(route)
            trace = LayerTrace(route=route, router_route=router_route.detach(), logits=_detach(logits))
            return MixerOut(torch.zeros_like(h), trace)
        tmask = ctx.tmask
        attn_rows = route | tmask if (ctx.oracle and tmask is not None) else route
        shared = self.rcfg.aux_grad == "shared"
        if tmask is None or not shared or not ctx.aux:  # "memory"/"own": the losses run the memory on sg(h) themselves
            mem_rows = ~route
        else:
            mem_rows = ~route | _scatter_mask(tmask, ctx.sample)
        probe = probe_rows(tmask, ctx.sample, attn_rows) if self._probes(ctx) else None
        kv = self.keys_values(h) if probe is not None else None
        a, c = self.attend(h, attn_rows, core=True, kv=kv)
        m = self.memory_rows(h, mem_rows)
        y = torch.where(route[..., None], a, m)
        if probe is not None:  # the gain label's a where the route skipped it: never in y, no gradient
            ap, cp = self._probe(h, probe, kv)
            a, c = torch.where(probe[..., None], ap, a), torch.where(probe[..., None], cp, c)
            attn_rows = attn_rows | probe
        trace = LayerTrace(route=route.detach(), router_route=router_route.detach(), logits=_detach(logits),
                           probe=probe)  # fmt: skip
        losses = self.losses(h, a, c, m, route, attn_rows, logits, trace, ctx) if (tmask is not None and ctx.aux) else {}
        return MixerOut(y, trace, losses)

    def losses(self, h, a, c, m, route, attn_rows, logits, trace: LayerTrace, ctx: ForwardContext) -> dict:
        """The layer's own losses (and the trace's per-target fields) at the sampled target positions
        (``ctx.sample``; every target position when None): the semantic readout there, the episodic
        readout and the consolidation distance only where a is also known. Fields of the trace are
        NaN (-1 for predictions) where they were not computed.

        ``router.aux_grad`` says what these losses train: "shared" (every loss reaches the head and,
        through h and a, the backbone), "memory" (the memory's losses on sg(h), both readouts
        through a stop-gradient copy of the head), "own" (as "memory", and the episodic readout
        reads o(sg(c)), so that it trains the output projection and norm_a alone)."""
        tmask, tgt = ctx.tmask, ctx.tgt
        mode = "isolated" if self.rcfg.aux_grad == "auto" else self.rcfg.aux_grad
        n = tgt.shape[0]
        sel = ctx.sample if ctx.sample is not None else torch.ones(n, dtype=torch.bool, device=tgt.device)
        known = attn_rows[tmask]  # (N,) a is known here
        att_t = route[tmask]  # attended target positions (training gate)
        rows_a = sel & known  # episodic readout and distance rows
        read = ctx.readout if (mode == "shared" or ctx.aux_readout is None) else ctx.aux_readout
        if mode == "shared":
            m_s = m[tmask][sel]
        else:
            m_s = self.memory(h[tmask][sel].detach())
        if mode == "isolated":
            a_s = a[tmask][rows_a].detach()
        elif mode == "own":
            a_s = self.o(c[tmask][rows_a].detach())
        else:
            a_s = a[tmask][rows_a]
        tgt_s, tgt_a = tgt[sel], tgt[rows_a]
        lm_logits = read(m_s, self.norm_m)
        lm_s = F.cross_entropy(lm_logits, tgt_s, reduction="none")
        la_logits = read(a_s, self.norm_a)
        la_s = F.cross_entropy(la_logits, tgt_a, reduction="none")
        a_sg = a[tmask][rows_a].detach().float()
        dist_s = (m_s[known[sel]].float() - a_sg).pow(2).sum(-1) / a_sg.pow(2).sum(-1).clamp_min(1e-8)
        lm = _place(sel, lm_s, float("nan"))
        la = _place(rows_a, la_s, float("nan"))
        dist = _place(rows_a, dist_s, float("nan"))
        trace.loss_m, trace.loss_a, trace.distill = lm.detach(), la.detach(), dist.detach()
        trace.pred_m = _place(sel, lm_logits.detach().argmax(-1), -1)
        trace.pred_a = _place(rows_a, la_logits.detach().argmax(-1), -1)
        gm, ga = self._model_losses(ctx, sel, rows_a, m_s, a, tmask, tgt_s, tgt_a) or (lm, la)
        trace.z = router_targets(gm.nan_to_num(0.0), ga.nan_to_num(0.0), rows_a, self.rcfg) & sel
        att_s = att_t[rows_a].float()
        out = {"epi": episodic_loss(la_s, att_s), "sem": semantic_loss(lm_s), "distill": consolidation_loss(dist_s, att_s)}
        if logits is not None:
            defined_t = label_defined(self.rcfg, sel, rows_a)
            out["router"] = router_loss(logits, trace.z, tmask, defined_t)
        return out

    @torch.no_grad()
    def _model_losses(self, ctx: ForwardContext, sel, rows_a, m_s, a, tmask, tgt_s, tgt_a):
        """``gain``'s losses of the whole model (N,) each, NaN where not computed: the task loss at the
        sampled rows had this layer output m there, and at the rows where a is known had it output a,
        through the rest of the network (``ctx.suffix``; the layer in the last block). None when
        the target is another or the rest of the network is not per position (then ``gain`` compares
        the layer's readouts, as ``utility`` does)."""
        if self.rcfg.target != "gain" or ctx.suffix is None:
            return None
        lm = F.cross_entropy(ctx.suffix(sel, m_s.detach()), tgt_s, reduction="none")
        la = F.cross_entropy(ctx.suffix(rows_a, a[tmask][rows_a].detach()), tgt_a, reduction="none")
        return _place(sel, lm, float("nan")), _place(rows_a, la, float("nan"))

    @torch.no_grad()
    def _probe(self, h, probe, kv):
        """The episodic path ``a`` and its core ``c`` (B, T, d) at the ``probe`` rows only, from the
        pass's own keys and values, without a gradient (the label reads them, nothing trains on them)."""
        k, v = kv
        return self.attend(h.detach(), probe, core=True, kv=(k.detach(), v.detach()))

    def _probes(self, ctx: ForwardContext) -> bool:
        """Whether this training pass probes the episodic path for the ``gain`` labels: a learned
        router (the only ones that read labels), targets, the layer's own losses, training mode
        (evaluation passes ``oracle`` where it wants a everywhere)."""
        return (self.rcfg.target == "gain" and self.policy.learned and self.training and ctx.tmask is not None
                and ctx.aux)  # fmt: skip

    # -- inference ----------------------------------------------------------------------------
    def init_state(self, batch, max_len, device, dtype):
        d = self.q.in_features
        shape = (batch, self.h, max_len, d // self.h)
        return CramState(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            h_prev=torch.zeros(batch, d, device=device, dtype=dtype),
            route=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
        )

    def decode(self, h, st: CramState, dctx: DecodeContext):
        bsz, t_len, d = h.shape
        pos = dctx.pos
        if dctx.route is not None:
            route = dctx.route
        else:
            req = RouteRequest(bsz, torch.arange(pos, pos + t_len, device=h.device), self.budget, dctx.n_targets,
                               generator=dctx.generator, memo=st.memo, whole_sequence=pos == 0)  # fmt: skip
            route, _ = self.decide(h, req)
        if not self.policy.mixes:
            route = torch.zeros_like(route)
        k, v = self.keys_values(h, st.h_prev)
        st.k[:, :, pos : pos + t_len], st.v[:, :, pos : pos + t_len] = k.transpose(1, 2), v.transpose(1, 2)
        st.h_prev = h[:, -1].clone()
        st.route[:, pos : pos + t_len] = route
        if not self.policy.mixes:
            return torch.zeros_like(h)
        a = self._attend_cached(h, route, st, pos, k, v) if bool(route.any()) else torch.zeros_like(h)
        return torch.where(route[..., None], a, self.memory_rows(h, ~route))

    def _attend_cached(self, h, route, st: CramState, pos: int, k, v) -> torch.Tensor:
        bsz, t_len, d = h.shape
        if pos == 0:  # the whole prefix is this chunk: the routed op, as in training
            q = _scatter_rows(route, self.q(h[route]), h).view(bsz, t_len, self.h, d // self.h)
            a = routed_attention(q, k, v, route).reshape(bsz, t_len, d)[route]
        else:
            q = self.q(h[route]).view(-1, self.h, d // self.h)
            a = cached_attention(q, route.nonzero(), st, pos).reshape(-1, d)
        return _scatter_rows(route, self.o(a), h)


    # -- the sync-free step and prefill (gpu/model/mixer.py; docs/inference.md) ---------------
    routed = True
    step_bucketed = {"k": 2, "v": 2, "log": 1}

    def step_state(self, st: CramState, n: int, bucket: int) -> dict[str, torch.Tensor]:
        """Keys, values and decisions in ``bucket`` slots, the previous state, the stride phase
        (from the router's memo; zeros before it is drawn)."""
        phase = st.memo.get("stride_phase")
        return {"k": bucketed(st.k, n, bucket, 2), "v": bucketed(st.v, n, bucket, 2), "h_prev": st.h_prev.clone(),
                "log": bucketed(st.route, n, bucket, 1),
                "phase": phase.clone() if phase is not None else torch.zeros(st.k.shape[0], dtype=torch.int64, device=st.k.device)}  # fmt: skip

    def fast_step(self, h: torch.Tensor, st: dict[str, torch.Tensor], sctx: StepContext) -> torch.Tensor:
        bsz, d = h.shape
        pos = sctx.pos
        k = (self.k(h) + self.k_prev(st["h_prev"])).view(bsz, self.h, 1, d // self.h)
        v = self.v(h).view(bsz, self.h, 1, d // self.h)
        st["k"].index_copy_(2, pos.view(1), k)
        st["v"].index_copy_(2, pos.view(1), v)
        st["h_prev"].copy_(h)
        rule = STEP_RULES.get(self.policy.name, _never)  # forced-only routers: never used unforced
        r = torch.where(sctx.force, sctx.route, rule(self, h, pos, sctx.uniforms[sctx.draw], st["phase"]))
        if not self.policy.mixes:
            st["log"].index_copy_(1, pos.view(1), torch.zeros_like(r)[:, None])
            return torch.zeros_like(h)
        st["log"].index_copy_(1, pos.view(1), r[:, None])

        def attend(h, kc, vc, pos):
            q = self.q(h).view(bsz, self.h, d // self.h)
            return self.o(cache_attend(q, kc, vc, pos).reshape(bsz, d))

        def zeros(h, *rest):
            return torch.zeros_like(h)

        a = branch(r.any(), attend, zeros, (h, st["k"], st["v"], pos))
        m = branch((~r).any(), self.memory, zeros, (h,))
        return torch.where(r[:, None], a, m)

    def fast_prefill(self, h: torch.Tensor, st: dict[str, torch.Tensor], pctx: PrefillContext) -> torch.Tensor:
        """The first T positions: keys and values at every row (into the cache), the router's
        decision (or the forced one), the routed rows gathered into a buffer of ``capacity`` rows
        (:func:`gather_slots`) for the query projection, attention (:func:`gathered_attention`)
        and the output projection; the semantic memory at every row (taken at the others)."""
        bsz, t_len, d = h.shape
        route = self._prefill_route(h, st, pctx)
        k, v = self.keys_values(h, st["h_prev"])  # (B, T, H, D)
        st["k"][:, :, :t_len] = k.transpose(1, 2)
        st["v"][:, :, :t_len] = v.transpose(1, 2)
        st["h_prev"].copy_(h[:, -1])
        st["log"][:, :t_len] = route
        if not self.policy.mixes:
            return torch.zeros_like(h)
        cap = pctx.capacity if pctx.capacity is not None else routed_capacity(route)
        m = self.memory(h)
        if cap == 0:
            return m
        slot, idx = gather_slots(route, cap)
        hq = h.gather(1, idx[..., None].expand(bsz, cap, d))  # (B, C, d)
        q = self.q(hq).view(bsz, cap, self.h, d // self.h).transpose(1, 2)  # (B, H, C, D)
        c = gathered_attention(q, st["k"][:, :, :t_len], st["v"][:, :, :t_len], idx)  # (B, H, C, D)
        a = self.o(c.transpose(1, 2).reshape(bsz, cap, d))  # (B, C, d)
        a = a.gather(1, slot.clamp_max(cap - 1)[..., None].expand(bsz, t_len, d))  # back to (B, T, d)
        return torch.where(route[..., None], a, m)

    def _prefill_route(self, h: torch.Tensor, st: dict[str, torch.Tensor], pctx: PrefillContext) -> torch.Tensor:
        """The decisions (B, T) of the first T positions, as the eager prefill makes them (the
        stride phase it draws goes into the step state)."""
        bsz, t_len, _ = h.shape
        if pctx.route is not None:
            route = pctx.route
        else:
            memo: dict = {}
            req = RouteRequest(bsz, torch.arange(t_len, device=h.device), self.budget, pctx.n_targets,
                               generator=pctx.generator, memo=memo, whole_sequence=True)  # fmt: skip
            route, _ = self.decide(h, req)
            if memo.get("stride_phase") is not None:
                st["phase"].copy_(memo["stride_phase"])
        return route if self.policy.mixes else torch.zeros_like(route)


def _never(layer, h, pos, u, phase):
    return torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)


def _stride_rule(layer, h, pos, u, phase):
    s = stride_period(layer.budget)
    if s is None:
        return torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    return (pos + phase) % s == 0


STEP_RULES = {
    "cram": lambda layer, h, pos, u, phase: layer.router_logits(h) > 0,
    "dense": lambda layer, h, pos, u, phase: torch.ones(h.shape[0], dtype=torch.bool, device=h.device),
    "none": _never,
    "skip-all": _never,
    "stride": _stride_rule,
    "random": lambda layer, h, pos, u, phase: u < float(layer.budget),
}
"""The routers that decide token by token in the sync-free step, as tensor code:
``rule(layer, h (B, d), pos 0-d, uniform (B,), phase (B,)) -> (B,) bool``. ``learned-static``
(top-k over a whole sequence) and ``oracle-pos`` (reads the query-slot layout) have none: they
need a forced route."""


def _detach(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()

"""The hybrid SSM + attention model with CRAM retrieval layers (docs/training.md, "The model").

A model is embedding -> blocks -> final norm -> head. Each letter of ``ModelConfig.pattern`` names
the *mixer* of one block (:data:`MIXERS`): ``S`` a Mamba-2-style selective-scan mixer (scalar decay
per head, short causal depthwise conv, chunked scan :func:`cramkit.gpu.ops.ssm_scan.ssm_scan`), ``A``
a CRAM retrieval layer, ``G`` plain dense causal attention (GPT-2 style), ``W`` sliding-window
causal attention (each position sees the last ``model.window`` positions). A :class:`Block` is handed
its mixer (mamba's ``Block(mixer, mlp)``) and adds the residuals; it never looks at the letter.

CRAM retrieval layer at position t with normalised hidden state h_t:

- episodic path a_t: causal softmax attention, computed only at routed rows (query projection,
  :func:`cramkit.gpu.ops.routed_attention.routed_attention` and output projection run on the
  routed rows alone; keys and values are made at every position, since every routed query sees
  every earlier key). Keys see the previous position through an exact token shift, which is
  what an induction-style lookup ``key -> next token`` needs;
- semantic memory m_t = M(h_t): an MLP that predicts a_t from h_t alone, run only where its
  output or a loss uses it (non-routed rows, and target rows in training);
- router: one of :data:`cramkit.gpu.routers.ROUTERS`; the learned ones read
  r_t = R(sg(h_t)) (an MLP on the detached state), bias initialised so that every position
  attends at step 0;
- output o_t = g_t a_t + (1 - g_t) m_t with a hard gate g_t (router decision; in training also the
  exploration mask).

The layer returns its output, a :class:`LayerTrace` and its own losses (:func:`episodic_loss`,
:func:`semantic_loss`, :func:`consolidation_loss`, :func:`router_loss`); :meth:`CramModel.forward`
adds them to the task loss (:func:`task_loss`). Recurrent inference (``init_state``, ``prefill``,
``step``) is in docs/inference.md and :mod:`cramkit.gpu.inference`.

Launch (see docs/training.md): ``cram train`` (quick preset, CPU) or, on GPUs,
``torchrun --standalone --nproc_per_node=4 -m cramkit.cli.main train --preset paper --out runs/p``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.config import ModelConfig, RouterConfig
from cramkit.gpu.inference import (
    CramState,
    DecodeContext,
    InferenceState,
    KVState,
    SSMState,
    check_room,
    check_route,
)
from cramkit.gpu.ops.routed_attention import routed_attention
from cramkit.gpu.ops.ssm_scan import ssm_scan, ssm_step
from cramkit.gpu.routers import Router, RouteRequest, check_budget, make_router


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int | None = None):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden)
        self.proj = nn.Linear(d_hidden, d_out or d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


# ----------------------------------------------------------------------------------------------
# what a mixer gives back, and the context it reads
# ----------------------------------------------------------------------------------------------


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
    is the model's head (the CRAM layer's own losses read a_t and m_t through it)."""

    readout: Callable[[torch.Tensor, nn.Module | None], torch.Tensor]
    n_targets: torch.Tensor  # (B,) target positions per sequence (the budget's denominator)
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


# ----------------------------------------------------------------------------------------------
# S: selective-scan mixer
# ----------------------------------------------------------------------------------------------


class SSMMixer(Mixer):
    """Mamba-2-style selective scan: in_proj -> short causal conv on (x, B, C) -> scan -> gate."""

    def __init__(self, cfg: ModelConfig, rcfg: RouterConfig | None = None):
        super().__init__()
        self.h, self.p, self.n = cfg.ssm_heads, cfg.ssm_head_dim, cfg.d_state
        self.chunk_size = cfg.chunk_size
        d_inner = self.h * self.p
        self.d_inner = d_inner
        conv_ch = d_inner + 2 * self.h * self.n
        self.in_proj = nn.Linear(cfg.d_model, d_inner + conv_ch + self.h, bias=False)  # z, xBC, dt
        self.conv = nn.Conv1d(conv_ch, conv_ch, cfg.conv_width, groups=conv_ch, padding=cfg.conv_width - 1)
        # decay rates A in [1, 16] and dt in [1e-3, 1e-1] at init, as in Mamba-2
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, self.h)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), self.h))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.D = nn.Parameter(torch.ones(self.h))
        self.norm = RMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)

    def _scan_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        """(x, x*dt, log_a, b, c) from the convolved x, B, C and the raw step sizes."""
        bsz, t_len, _ = xbc.shape
        x, b, c = torch.split(xbc, [self.d_inner, self.h * self.n, self.h * self.n], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, T, H)
        log_a = -torch.exp(self.A_log.float()) * dt  # (B, T, H), <= 0
        x = x.view(bsz, t_len, self.h, self.p)
        b = b.view(bsz, t_len, self.h, self.n).float()
        c = c.view(bsz, t_len, self.h, self.n).float()
        return x, x.float() * dt[..., None], log_a, b, c

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor, dtype) -> torch.Tensor:
        bsz, t_len = x.shape[:2]
        y = y.to(dtype) + x * self.D.to(dtype)[:, None]
        y = self.norm(y.reshape(bsz, t_len, self.d_inner) * F.silu(z))
        return self.out_proj(y)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        t_len = u.shape[1]
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv.in_channels, self.h], dim=-1)
        xbc = F.silu(self.conv(xbc.transpose(1, 2))[..., :t_len].transpose(1, 2))  # causal conv
        x, xdt, log_a, b, c = self._scan_inputs(xbc, dt)
        y, _ = ssm_scan(xdt, log_a, b, c, chunk_size=self.chunk_size)  # (B, T, H, P)
        return self._output(y, x, z, u.dtype)

    def init_state(self, batch, max_len, device, dtype):
        w = self.conv.kernel_size[0]
        return SSMState(
            ssm=torch.zeros(batch, self.h, self.n, self.p, device=device, dtype=torch.float32),
            conv=torch.zeros(batch, self.conv.in_channels, w - 1, device=device, dtype=dtype),
        )

    def decode(self, u, st: SSMState, dctx):
        t_len = u.shape[1]
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv.in_channels, self.h], dim=-1)
        window = torch.cat([st.conv, xbc.transpose(1, 2)], dim=2)  # (B, C, W - 1 + T)
        keep = st.conv.shape[2]
        st.conv = window[:, :, window.shape[2] - keep :].clone()
        conv = F.conv1d(window, self.conv.weight, self.conv.bias, groups=self.conv.in_channels)
        x, xdt, log_a, b, c = self._scan_inputs(F.silu(conv.transpose(1, 2)), dt)
        if t_len == 1:
            y, st.ssm = ssm_step(st.ssm, xdt[:, 0], log_a[:, 0], b[:, 0], c[:, 0])
            y = y[:, None]
        else:
            y, st.ssm = ssm_scan(xdt, log_a, b, c, initial_state=st.ssm, chunk_size=self.chunk_size)
        return self._output(y, x, z, u.dtype)


# ----------------------------------------------------------------------------------------------
# attention over a key/value cache (inference)
# ----------------------------------------------------------------------------------------------


def cached_attention(q: torch.Tensor, rows: torch.Tensor, st: KVState, pos: int) -> torch.Tensor:
    """Causal attention of routed query rows against the cache ``st`` (keys 0 .. pos + t).

    q: (n, H, D) queries of the rows ``rows`` (n, 2) = (batch, chunk position). Reads the
    cached keys of the routed sequences only. Returns (n, H, D)."""
    bi, ti = rows[:, 0], rows[:, 1]
    top = pos + int(ti.max()) + 1
    if len(bi) == st.k.shape[0] and bool((bi == torch.arange(len(bi), device=bi.device)).all()):
        keys, vals = st.k[:, :, :top], st.v[:, :, :top]  # one row per sequence, in order: no copy
    else:
        keys, vals = st.k[bi, :, :top], st.v[bi, :, :top]  # (n, H, L, D)
    scores = (q[:, :, None, :] @ keys.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (n, H, 1, L)
    if bool((pos + ti < top - 1).any()):  # several rows of one chunk: hide each row's future
        visible = torch.arange(top, device=q.device)[None, :] <= (pos + ti)[:, None]  # (n, L)
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ vals)[:, :, 0]


# ----------------------------------------------------------------------------------------------
# G: dense causal attention
# ----------------------------------------------------------------------------------------------


class DenseAttention(Mixer):
    """Plain multi-head causal self-attention (GPT-2 style) for ``G`` layers."""

    def __init__(self, cfg: ModelConfig, rcfg: RouterConfig | None = None):
        super().__init__()
        self.h = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t_len, d = x.shape
        q, k, v = self.qkv(x).view(bsz, t_len, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(bsz, t_len, d))

    def init_state(self, batch, max_len, device, dtype):
        d = self.proj.in_features
        shape = (batch, self.h, max_len, d // self.h)
        return KVState(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def decode(self, x, st: KVState, dctx):
        bsz, t_len, d = x.shape
        pos = dctx.pos
        q, k, v = self.qkv(x).view(bsz, t_len, 3, self.h, d // self.h).unbind(2)  # (B, T, H, D)
        st.k[:, :, pos : pos + t_len], st.v[:, :, pos : pos + t_len] = k.transpose(1, 2), v.transpose(1, 2)
        if pos == 0:
            y = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
            y = y.transpose(1, 2)
        else:
            rows = torch.ones(bsz, t_len, dtype=torch.bool, device=x.device).nonzero()
            y = cached_attention(q.reshape(-1, self.h, d // self.h), rows, st, pos).view(bsz, t_len, self.h, -1)
        return self.proj(y.reshape(bsz, t_len, d))


# ----------------------------------------------------------------------------------------------
# W: sliding-window causal attention
# ----------------------------------------------------------------------------------------------


def window_mask(n_queries: int, n_keys: int, window: int, start: int = 0, device=None) -> torch.Tensor:
    """(n_queries, n_keys) bool: query row i (absolute position ``start + i``) sees key j iff
    ``start + i - window < j <= start + i`` -- itself and the ``window - 1`` positions before it."""
    q = torch.arange(start, start + n_queries, device=device)[:, None]
    k = torch.arange(n_keys, device=device)[None, :]
    return (k <= q) & (k > q - window)


class WindowAttention(DenseAttention):
    """Sliding-window causal attention for ``W`` layers: the ``G`` layer with each position
    attending only the last ``model.window`` positions (itself included). With ``window >= T``
    it is exactly dense causal attention. Causal SDPA with a band mask: O(T^2) work, meant as a
    quality baseline on short contexts, not a fast kernel."""

    def __init__(self, cfg: ModelConfig, rcfg: RouterConfig | None = None):
        super().__init__(cfg, rcfg)
        self.window = int(cfg.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t_len, d = x.shape
        q, k, v = self.qkv(x).view(bsz, t_len, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        if self.window >= t_len:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(t_len, t_len, self.window, device=x.device))
        return self.proj(y.transpose(1, 2).reshape(bsz, t_len, d))

    def decode(self, x, st: KVState, dctx):
        bsz, t_len, d = x.shape
        pos = dctx.pos
        q, k, v = self.qkv(x).view(bsz, t_len, 3, self.h, d // self.h).unbind(2)  # (B, T, H, D)
        st.k[:, :, pos : pos + t_len], st.v[:, :, pos : pos + t_len] = k.transpose(1, 2), v.transpose(1, 2)
        lo = max(0, pos - self.window + 1)  # no row of this chunk sees a key before lo
        keys, vals = st.k[:, :, lo : pos + t_len], st.v[:, :, lo : pos + t_len]
        mask = window_mask(t_len, pos + t_len, self.window, start=pos, device=x.device)[:, lo:]
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, vals, attn_mask=mask)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(bsz, t_len, d))


# ----------------------------------------------------------------------------------------------
# the CRAM layer's own losses
# ----------------------------------------------------------------------------------------------


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows; 0 (with a gradient path) when there are none, never NaN."""
    return x.mean() if x.numel() else x.sum()


def task_loss(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model output at target positions (0 when the batch has none)."""
    return F.cross_entropy(logits, tgt) if tgt.numel() else logits.sum() * 0.0


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
    """z at target positions: ``error``: 1[l(m) > tau]; ``utility``: 1[l(m) - l(a) > delta] where a is known."""
    if rcfg.target == "error":
        return lm.detach() > rcfg.tau
    return (lm.detach() - la.detach() > rcfg.delta) & known


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


# ----------------------------------------------------------------------------------------------
# A: the CRAM retrieval layer
# ----------------------------------------------------------------------------------------------


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

    def attend(self, h: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """The episodic path a (B, T, d): exact zeros at non-routed rows; the query and output
        projections run on the routed rows only."""
        if not bool(route.any()):
            return torch.zeros_like(h)
        bsz, t_len, d = h.shape
        k, v = self.keys_values(h)
        q = _scatter_rows(route, self.q(h[route]), h).view(bsz, t_len, self.h, d // self.h)
        a = routed_attention(q, k, v, route)  # (B, T, H, D), zero at non-routed rows
        return _scatter_rows(route, self.o(a.reshape(bsz, t_len, d)[route]), h)

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
        mem_rows = ~route if tmask is None else (~route | tmask)
        a = self.attend(h, attn_rows)
        m = self.memory_rows(h, mem_rows)
        y = torch.where(route[..., None], a, m)
        trace = LayerTrace(route=route.detach(), router_route=router_route.detach(), logits=_detach(logits))
        losses = self.losses(a, m, route, attn_rows, logits, trace, ctx) if tmask is not None else {}
        return MixerOut(y, trace, losses)

    def losses(self, a, m, route, attn_rows, logits, trace: LayerTrace, ctx: ForwardContext) -> dict:
        """The layer's own losses (and the trace's per-target fields) at the target positions."""
        tmask, tgt = ctx.tmask, ctx.tgt
        known = attn_rows[tmask]  # (N,) a is known here
        att_t = route[tmask]  # attended target positions (training gate)
        a_t, m_t = a[tmask], m[tmask]
        lm_logits = ctx.readout(m_t, self.norm_m)
        lm = F.cross_entropy(lm_logits, tgt, reduction="none")
        la_logits = ctx.readout(a_t, self.norm_a)
        la = F.cross_entropy(la_logits, tgt, reduction="none")
        a_sg = a_t.detach().float()
        dist = (m_t.float() - a_sg).pow(2).sum(-1) / a_sg.pow(2).sum(-1).clamp_min(1e-8)
        nan = torch.full_like(la, float("nan"))
        trace.loss_m = lm.detach()
        trace.loss_a = torch.where(known, la.detach(), nan)
        trace.distill = torch.where(known, dist.detach(), nan)
        trace.pred_m = lm_logits.detach().argmax(-1)
        trace.pred_a = torch.where(known, la_logits.detach().argmax(-1), torch.full_like(tgt, -1))
        trace.z = router_targets(lm, la, known, self.rcfg)
        out = {"epi": episodic_loss(la, att_t), "sem": semantic_loss(lm), "distill": consolidation_loss(dist, att_t)}
        if logits is not None:
            defined_t = known if self.rcfg.target == "utility" else torch.ones_like(known)
            out["router"] = router_loss(logits, trace.z, tmask, defined_t)
        return out

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


def _detach(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()


# ----------------------------------------------------------------------------------------------
# blocks and the model
# ----------------------------------------------------------------------------------------------

MIXERS: dict[str, type[Mixer]] = {"S": SSMMixer, "A": CramAttention, "G": DenseAttention, "W": WindowAttention}


class Block(nn.Module):
    """Pre-norm residual block around a given mixer and an optional MLP (mamba's ``Block``)."""

    def __init__(self, d_model: int, mixer: Mixer, mlp: nn.Module | None = None, *, kind: str = ""):
        super().__init__()
        self.kind = kind  # the pattern letter, for reports and adapters only
        # registration order = parameter order (optimizer state in checkpoints follows it)
        self.norm1 = RMSNorm(d_model)
        self.norm2 = RMSNorm(d_model) if mlp is not None else None
        self.mlp = mlp
        self.mixer = mixer

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mlp is None else x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, ctx: ForwardContext | None = None) -> tuple[torch.Tensor, MixerOut]:
        out = self.mixer.mix(self.norm1(x), ctx)
        return self._mlp(x + out.y), out

    def decode(self, x: torch.Tensor, state, dctx: DecodeContext) -> torch.Tensor:
        return self._mlp(x + self.mixer.decode(self.norm1(x), state, dctx))


def make_block(letter: str, cfg: ModelConfig, rcfg: RouterConfig) -> Block:
    """The block of one pattern letter (S, A, G or W; see :data:`MIXERS`)."""
    if letter not in MIXERS:
        raise CramError(f"model.pattern letters must be among {''.join(MIXERS)}, got {letter!r}")
    return Block(cfg.d_model, MIXERS[letter](cfg, rcfg), MLP(cfg.d_model, cfg.mlp_mult * cfg.d_model), kind=letter)


@dataclass
class ForwardOut:
    loss: torch.Tensor | None
    parts: dict[str, float]
    logits: torch.Tensor  # (N, V') at target positions (or all positions when no targets)
    target_index: torch.Tensor | None  # (N, 2) (batch, position) of each row of logits
    traces: list[LayerTrace] = field(default_factory=list)


LOSS_NAMES = ("epi", "sem", "distill", "router")  # the CRAM layers' own losses, in summation order


class CramModel(nn.Module):
    """Embedding -> blocks (pattern) -> final norm -> head (tied to the embedding by default).

    ``budget``: the static routers' attention budget, a fraction of target positions
    (:mod:`cramkit.gpu.routers`). ``n_q``: target positions per sequence when a batch does not say
    (no targets and no query mask); None = every position is a target."""

    def __init__(
        self,
        cfg: ModelConfig,
        rcfg: RouterConfig,
        vocab_size: int,
        *,
        target_range: tuple[int, int] | None = None,
        budget: float = 1.0,
        n_q: int | None = None,
    ):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise CramError(f"model.d_model ({cfg.d_model}) must be a multiple of model.n_heads ({cfg.n_heads})")
        self.cfg, self.rcfg = cfg, rcfg
        self.router_policy = make_router(rcfg.name, rcfg.static_scope)
        self.vocab_size = vocab_size
        self.target_range = target_range  # logits are restricted to [lo, hi) (SRCD: value tokens)
        self.budget = check_budget(budget)
        self.n_q = None if n_q is None else int(n_q)
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.max_len else None
        self.blocks = nn.ModuleList(make_block(k, cfg, rcfg) for k in cfg.pattern)
        self.norm_f = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        for layer in self.cram_layers:
            layer.budget = self.budget
            nn.init.constant_(layer.router[-1].bias, rcfg.init_bias)

    @staticmethod
    def _init(mod: nn.Module) -> None:
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Embedding):
            nn.init.normal_(mod.weight, std=0.02)

    @property
    def cram_layers(self) -> list[CramAttention]:
        return [b.mixer for b in self.blocks if isinstance(b.mixer, CramAttention)]

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.cram_layers for p in m.router.parameters()]

    def readout(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        logits = self.head((norm or self.norm_f)(x)).float()
        if self.target_range is not None:
            logits = logits[..., self.target_range[0] : self.target_range[1]]
        return logits

    def n_targets(self, bsz: int, t_len: int, targets=None, query_mask=None, device=None) -> torch.Tensor:
        """(B,) target positions per sequence, the budget's denominator: counted from the targets,
        else from the query mask, else ``n_q``, else every position."""
        if targets is not None:
            return (targets >= 0).sum(1)
        if query_mask is not None:
            return query_mask.sum(1)
        return torch.full((bsz,), t_len if self.n_q is None else self.n_q, dtype=torch.int64, device=device)

    def embed_tokens(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise CramError(f"token ids must lie in [0, {self.vocab_size}), got {int(tokens.min())}..{int(tokens.max())}")
        x = self.embed(tokens)
        if self.pos is not None:
            end = start + tokens.shape[1]
            if end > self.pos.num_embeddings:
                raise CramError(f"sequence length {end} exceeds model.max_len {self.pos.num_embeddings}")
            x = x + self.pos(torch.arange(start, end, device=tokens.device))
        return x

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        query_mask: torch.Tensor | None = None,
        explore: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        oracle: bool = False,
        weights: dict[str, float] | None = None,
        route: torch.Tensor | None = None,
    ) -> ForwardOut:
        """Run the model.

        tokens: (B, T) int64; targets: (B, T) int64 token ids, -1 where there is no target.
        query_mask: (B, T) bool layout of query slots (oracle-pos and the layout-aware routers read it).
        explore: (B, T) bool positions that attend regardless of the router (training).
        oracle: also compute the episodic path at target positions for measurement only (the
            model output still uses only the router's positions).
        route: (B, T) bool forces every CRAM layer's decision (no exploration is added).
        """
        bsz, t_len = tokens.shape
        w = {"epi": 1.0, "sem": 1.0, "distill": 1.0, "router": self.rcfg.loss_weight}
        w.update(weights or {})
        x = self.embed_tokens(tokens)
        ctx = self._context(tokens, targets, query_mask, explore, generator, oracle, route)
        aux = x.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        traces: list[LayerTrace] = []
        for blk in self.blocks:
            x, out = blk(x, ctx)
            if out.trace is not None:
                traces.append(out.trace)
            for name in LOSS_NAMES:
                if name in out.losses:
                    aux = aux + w[name] * out.losses[name]
                    parts[name] = parts.get(name, 0.0) + float(out.losses[name].detach())
        if not ctx.has_targets:
            return ForwardOut(None, parts, self.readout(x), None, traces)
        logits = self.readout(x[ctx.tmask])
        task = task_loss(logits, ctx.tgt)
        parts["task"] = float(task.detach())
        loss = task + aux
        parts["total"] = float(loss.detach())
        return ForwardOut(loss, parts, logits, ctx.tmask.nonzero(), traces)

    def _context(self, tokens, targets, query_mask, explore, generator, oracle, route) -> ForwardContext:
        bsz, t_len = tokens.shape
        ctx = ForwardContext(self.readout, self.n_targets(bsz, t_len, targets, query_mask, tokens.device),
                             query_mask=query_mask, explore=explore, generator=generator, oracle=oracle,
                             route=check_route(route, (bsz, t_len), tokens.device))  # fmt: skip
        if targets is not None:
            ctx.tmask = targets >= 0
            tgt = targets[ctx.tmask]
            ctx.tgt = tgt - self.target_range[0] if self.target_range is not None else tgt
        return ctx

    # -- recurrent inference (docs/inference.md) ------------------------------------------------
    def init_state(self, batch_size: int, max_len: int) -> InferenceState:
        """An empty :class:`InferenceState` for ``batch_size`` sequences of up to ``max_len`` positions."""
        if int(batch_size) < 1 or int(max_len) < 1:
            raise CramError(f"batch_size and max_len must be >= 1, got {batch_size} and {max_len}")
        if self.pos is not None and max_len > self.pos.num_embeddings:
            raise CramError(f"max_len {max_len} exceeds model.max_len {self.pos.num_embeddings}")
        ref = self.embed.weight
        layers = [b.mixer.init_state(int(batch_size), int(max_len), ref.device, ref.dtype) for b in self.blocks]
        return InferenceState(int(batch_size), int(max_len), 0, layers)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, state: InferenceState, *, route=None, generator=None) -> torch.Tensor:
        """Run the prompt ``tokens`` (B, T) into a fresh ``state``; returns logits (B, T, V').
        ``route`` (B, T) bool forces every CRAM layer's decision (None: the model's router, no
        exploration)."""
        if state.pos != 0:
            raise CramError("prefill needs a fresh state from init_state; extend a filled one with step")
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise CramError(f"prefill takes tokens of shape (B, T) with T >= 1, got {tuple(tokens.shape)}")
        return self._decode(tokens, state, route, generator)

    @torch.no_grad()
    def step(self, token: torch.Tensor, state: InferenceState, *, route=None, generator=None) -> torch.Tensor:
        """Append one position: ``token`` (B,) -> logits (B, V'); ``route`` (B,) bool or None."""
        if token.dim() != 1:
            raise CramError(f"step takes one token per sequence, shape (B,), got {tuple(token.shape)}")
        if route is not None:
            route = check_route(route, (token.shape[0],), token.device)[:, None]
        return self._decode(token[:, None], state, route, generator)[:, 0]

    def _decode(self, tokens, state: InferenceState, route, generator) -> torch.Tensor:
        bsz, t_len = tokens.shape
        check_room(state, t_len, bsz)
        dctx = DecodeContext(state.pos, check_route(route, (bsz, t_len), tokens.device), generator,
                             self.n_targets(bsz, t_len, device=tokens.device))  # fmt: skip
        x = self.embed_tokens(tokens, state.pos)
        for blk, st in zip(self.blocks, state.layers):
            x = blk.decode(x, st, dctx)
        state.pos += t_len
        return self.readout(x)


def attention_flops(route: torch.Tensor, d: int) -> tuple[float, float]:
    """(F_route, F_all) of one attention layer of width d summed over a batch (docs/training.md, "Evaluation").

    F_all = Σ_t (8 d² + 4 d t); F_route = Σ_t 4 d² + Σ_{t∈A} (4 d² + 4 d t), positions t = 1..n.
    The K/V projections (the Σ_t 4 d² term) are counted for every sequence with at least one
    routed position; a sequence that never attends needs no keys or values, so it costs 0.
    """
    bsz, n = route.shape
    t = torch.arange(1, n + 1, dtype=torch.float64, device=route.device)
    f_all = bsz * float((8 * d * d + 4 * d * t).sum())
    any_routed = float(route.any(dim=1).sum())
    f_route = any_routed * n * 4.0 * d * d + float(((4 * d * d + 4 * d * t) * route.double()).sum())
    return f_route, f_all

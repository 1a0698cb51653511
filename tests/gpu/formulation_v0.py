"""The CRAM model as it was before issue #9.2, kept as a reference for tests/gpu/test_routed_work.py:
the same losses and gradients computed with every projection and the memory at every position.
Not imported by the package; see cramkit.gpu.model for the model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.layers import MLP, RMSNorm
from cramkit.gpu.ops.routed_attention import routed_attention
from cramkit.gpu.ops.ssm_scan import ssm_scan

# the norm and the MLP are unchanged since this formulation: shared, not copied


class SSMMixer(nn.Module):
    """Mamba-2-style selective scan: in_proj -> short causal conv on (x, B, C) -> scan -> gate."""

    def __init__(self, cfg: ModelConfig):
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

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        bsz, t_len, _ = u.shape
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv.in_channels, self.h], dim=-1)
        xbc = F.silu(self.conv(xbc.transpose(1, 2))[..., :t_len].transpose(1, 2))  # causal conv
        x, b, c = torch.split(xbc, [self.d_inner, self.h * self.n, self.h * self.n], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, T, H)
        log_a = -torch.exp(self.A_log.float()) * dt  # (B, T, H), <= 0
        x = x.view(bsz, t_len, self.h, self.p)
        y, _ = ssm_scan(
            (x.float() * dt[..., None]),
            log_a,
            b.view(bsz, t_len, self.h, self.n).float(),
            c.view(bsz, t_len, self.h, self.n).float(),
            chunk_size=self.chunk_size,
        )  # (B, T, H, P)
        y = y.to(u.dtype) + x * self.D.to(u.dtype)[:, None]
        y = self.norm(y.reshape(bsz, t_len, self.d_inner) * F.silu(z))
        return self.out_proj(y)


class DenseAttention(nn.Module):
    """Plain multi-head causal self-attention (GPT-2 style) for ``G`` layers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t_len, d = x.shape
        q, k, v = self.qkv(x).view(bsz, t_len, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(bsz, t_len, d))


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


class CramAttention(nn.Module):
    """The CRAM retrieval layer: router, routed episodic attention, semantic memory."""

    def __init__(self, cfg: ModelConfig, rcfg: RouterConfig):
        super().__init__()
        d = cfg.d_model
        self.h = cfg.n_heads
        self.router_name = rcfg.name
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

    def router_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.router(h.detach()).squeeze(-1).float()  # (B, T)

    def attend(self, h: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        bsz, t_len, d = h.shape
        shifted = F.pad(h, (0, 0, 1, 0))[:, :t_len]
        q = self.q(h).view(bsz, t_len, self.h, d // self.h)
        k = (self.k(h) + self.k_prev(shifted)).view(bsz, t_len, self.h, d // self.h)
        v = self.v(h).view(bsz, t_len, self.h, d // self.h)
        a = routed_attention(q, k, v, route)  # (B, T, H, D), zero at non-routed rows
        return self.o(a.reshape(bsz, t_len, d))


class Block(nn.Module):
    def __init__(self, kind: str, cfg: ModelConfig, rcfg: RouterConfig):
        super().__init__()
        self.kind = kind
        self.norm1 = RMSNorm(cfg.d_model)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.mlp_mult * cfg.d_model)
        if kind == "S":
            self.mixer = SSMMixer(cfg)
        elif kind == "G":
            self.mixer = DenseAttention(cfg)
        else:
            self.mixer = CramAttention(cfg, rcfg)


@dataclass
class ForwardOut:
    loss: torch.Tensor | None
    parts: dict[str, float]
    logits: torch.Tensor  # (N, V') at target positions (or all positions when no targets)
    target_index: torch.Tensor | None  # (N, 2) (batch, position) of each row of logits
    traces: list[LayerTrace] = field(default_factory=list)


class CramModel(nn.Module):
    """Embedding -> blocks (pattern) -> final norm -> head (tied to the embedding by default)."""

    def __init__(
        self,
        cfg: ModelConfig,
        rcfg: RouterConfig,
        vocab_size: int,
        *,
        target_range: tuple[int, int] | None = None,
        budget: float = 1.0,
        n_q: int = 1,
    ):
        super().__init__()
        self.cfg, self.rcfg = cfg, rcfg
        self.vocab_size = vocab_size
        self.target_range = target_range  # logits are restricted to [lo, hi) (SRCD: value tokens)
        self.budget = float(budget)
        self.n_q = int(n_q)
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.max_len else None
        self.blocks = nn.ModuleList(Block(k, cfg, rcfg) for k in cfg.pattern)
        self.norm_f = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        for blk in self.blocks:
            if blk.kind == "A":
                nn.init.constant_(blk.mixer.router[-1].bias, rcfg.init_bias)

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
        return [b.mixer for b in self.blocks if b.kind == "A"]

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.cram_layers for p in m.router.parameters()]

    def readout(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        logits = self.head((norm or self.norm_f)(x)).float()
        if self.target_range is not None:
            logits = logits[..., self.target_range[0] : self.target_range[1]]
        return logits

    # ------------------------------------------------------------------------------------------
    def _route(
        self,
        layer: CramAttention,
        h: torch.Tensor,
        *,
        query_mask: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The router's decision (B, T) bool and, for learned routers, its logits."""
        bsz, t_len, _ = h.shape
        name = self.rcfg.name
        dev = h.device
        if name in ("cram", "learned-static"):
            logits = layer.router_logits(h)
            if name == "cram":
                return logits > 0, logits
            k = min(t_len, max(0, round(self.budget * self.n_q)))  # top-k capacity per sequence
            route = torch.zeros(bsz, t_len, dtype=torch.bool, device=dev)
            scores = logits
            if self.rcfg.static_scope == "queries":  # knows the layout (like oracle-pos), not the types
                if query_mask is None:
                    raise ValueError("router.static_scope = 'queries' needs the query-slot layout (query_mask)")
                scores = logits.masked_fill(~query_mask, float("-inf"))
            if k:
                route.scatter_(1, scores.topk(k, dim=1).indices, True)
                if self.rcfg.static_scope == "queries":
                    route &= query_mask
            return route, logits
        if name == "dense":
            return torch.ones(bsz, t_len, dtype=torch.bool, device=dev), None
        if name in ("none", "skip-all"):
            return torch.zeros(bsz, t_len, dtype=torch.bool, device=dev), None
        if name == "stride":
            s = max(1, round(1.0 / self.budget)) if self.budget > 0 else t_len + 1
            pos = torch.arange(t_len, device=dev)
            return ((pos + 1) % s == 0).expand(bsz, t_len).clone(), None
        rand = torch.rand(bsz, t_len, generator=generator, device="cpu").to(dev)
        coin = rand < self.budget
        if name == "random":
            return coin, None
        if name == "oracle-pos":
            if query_mask is None:
                raise ValueError("the oracle-pos router needs the query-slot layout (query_mask)")
            return query_mask & coin, None
        raise ValueError(f"unknown router {name!r}")  # pragma: no cover (validated in config)

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
    ) -> ForwardOut:
        """Run the model.

        tokens: (B, T) int64; targets: (B, T) int64 token ids, -1 where there is no target.
        query_mask: (B, T) bool layout of query slots (only the oracle-pos router reads it).
        explore: (B, T) bool positions that attend regardless of the router (training).
        oracle: also compute the episodic path at target positions for measurement only (the
            model output still uses only the router's positions).
        """
        bsz, t_len = tokens.shape
        w = {"epi": 1.0, "sem": 1.0, "distill": 1.0, "router": self.rcfg.loss_weight}
        w.update(weights or {})
        x = self.embed(tokens)
        if self.pos is not None:
            if t_len > self.pos.num_embeddings:
                raise ValueError(f"sequence length {t_len} exceeds model.max_len {self.pos.num_embeddings}")
            x = x + self.pos(torch.arange(t_len, device=tokens.device))
        has_t = targets is not None
        if has_t:
            tmask = targets >= 0  # (B, T)
            idx = tmask.nonzero()  # (N, 2)
            tgt = targets[tmask]
            if self.target_range is not None:
                tgt = tgt - self.target_range[0]
        aux = x.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        traces: list[LayerTrace] = []
        for blk in self.blocks:
            h = blk.norm1(x)
            if blk.kind != "A":
                x = x + blk.mixer(h)
                x = x + blk.mlp(blk.norm2(x))
                continue
            layer: CramAttention = blk.mixer
            router_route, rlogits = self._route(layer, h, query_mask=query_mask, generator=generator)
            route = router_route if explore is None else (router_route | explore)
            if self.rcfg.name == "none":
                route = torch.zeros_like(route)
            attn_route = route | tmask if (oracle and has_t) else route
            a = layer.attend(h, attn_route) if bool(attn_route.any()) else torch.zeros_like(h)
            a_used = a * route[..., None].to(a.dtype) if oracle and has_t else a
            if self.rcfg.name == "none":
                o = torch.zeros_like(h)
                m = None
            else:
                m = layer.memory(h)
                o = a_used + (~route)[..., None].to(h.dtype) * m
            x = x + o
            x = x + blk.mlp(blk.norm2(x))
            trace = LayerTrace(route=route.detach(), router_route=router_route.detach(),
                               logits=None if rlogits is None else rlogits.detach())  # fmt: skip
            traces.append(trace)
            if not has_t or m is None:
                continue
            known = attn_route[tmask]  # (N,) a is known here
            att_t = route[tmask]  # attended target positions (training gate)
            a_t, m_t = a[tmask], m[tmask]
            lm_logits = self.readout(m_t, layer.norm_m)
            lm = F.cross_entropy(lm_logits, tgt, reduction="none")
            la_logits = self.readout(a_t, layer.norm_a)
            la = F.cross_entropy(la_logits, tgt, reduction="none")
            a_sg = a_t.detach().float()
            dist = (m_t.float() - a_sg).pow(2).sum(-1) / a_sg.pow(2).sum(-1).clamp_min(1e-8)
            nan = torch.full_like(la, float("nan"))
            trace.loss_m = lm.detach()
            trace.loss_a = torch.where(known, la.detach(), nan)
            trace.distill = torch.where(known, dist.detach(), nan)
            trace.pred_m = lm_logits.detach().argmax(-1)
            trace.pred_a = torch.where(known, la_logits.detach().argmax(-1), torch.full_like(tgt, -1))
            if self.rcfg.target == "error":
                z = lm.detach() > self.rcfg.tau
            else:
                z = (lm.detach() - la.detach() > self.rcfg.delta) & known
            trace.z = z
            n_att = att_t.sum().clamp_min(1)
            l_epi = (la * att_t).sum() / n_att
            l_sem = lm.mean()
            l_dist = (dist * att_t).sum() / n_att
            aux = aux + w["epi"] * l_epi + w["sem"] * l_sem + w["distill"] * l_dist
            parts["epi"] = parts.get("epi", 0.0) + float(l_epi.detach())
            parts["sem"] = parts.get("sem", 0.0) + float(l_sem.detach())
            parts["distill"] = parts.get("distill", 0.0) + float(l_dist.detach())
            if rlogits is not None:
                # targets at target positions; 0 elsewhere (attention has no use without a target).
                # With the utility target, z is only defined where a is known.
                ztgt = torch.zeros(bsz, t_len, device=x.device)
                ztgt[tmask] = z.float()
                defined = torch.ones(bsz, t_len, dtype=torch.bool, device=x.device)
                if self.rcfg.target == "utility":
                    defined[tmask] = known
                bce = F.binary_cross_entropy_with_logits(rlogits, ztgt, reduction="none")
                on_t = (bce * (tmask & defined)).sum() / (tmask & defined).sum().clamp_min(1)
                off_t = (bce * ~tmask).sum() / (~tmask).sum().clamp_min(1)
                l_router = on_t + off_t
                aux = aux + w["router"] * l_router
                parts["router"] = parts.get("router", 0.0) + float(l_router.detach())
        if has_t:
            logits = self.readout(x[tmask])
            task = F.cross_entropy(logits, tgt)
            parts["task"] = float(task.detach())
            loss = task + aux
            parts["total"] = float(loss.detach())
            return ForwardOut(loss, parts, logits, idx, traces)
        logits = self.readout(x)
        return ForwardOut(None, parts, logits, None, traces)


def build_model(run_cfg) -> CramModel:
    """Build the model of a :class:`cramkit.gpu.run.config.RunConfig` (vocabulary and budget from the task)."""
    if run_cfg.task == "text":
        return CramModel(run_cfg.model, run_cfg.router, 256)
    scfg = run_cfg.srcd_config()
    return CramModel(
        run_cfg.model,
        run_cfg.router,
        scfg.vocab_size,
        target_range=(scfg.value_offset, scfg.value_offset + scfg.v),
        budget=run_cfg.budget(),
        n_q=scfg.n_q,
    )


def attention_flops(route: torch.Tensor, d: int) -> tuple[float, float]:
    """(F_route, F_all) of one attention layer of width d summed over a batch (docs/training.md).

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

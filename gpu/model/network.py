"""The hybrid SSM + attention model: :class:`Block` and :class:`CramModel` (docs/training.md, "The model").

A model is embedding -> blocks -> final norm -> head. Each letter of ``ModelConfig.pattern`` names
the *mixer* of one block (:data:`MIXERS`): ``S`` a Mamba-2-style selective-scan mixer
(:mod:`.ssm`), ``A`` a CRAM retrieval layer (:mod:`.cram`), ``G`` plain dense causal attention,
``W`` sliding-window causal attention (:mod:`.attention`). A :class:`Block` is handed its mixer
(mamba's ``Block(mixer, mlp)``) and adds the residuals; it never looks at the letter.
:meth:`CramModel.forward` is a plain loop over the blocks that adds the losses the layers return to
the task loss (:func:`task_loss`). Recurrent inference (``init_state``, ``prefill``, ``step``) is
in docs/inference.md, the decode state in :mod:`cramkit.gpu.model.state`.

Launch (see docs/training.md): ``cram train`` (quick preset, CPU) or, on GPUs,
``torchrun --standalone --nproc_per_node=4 -m cramkit.cli.main train --preset paper --out runs/p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.model.attention import DenseAttention, WindowAttention
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.cram import CramAttention
from cramkit.gpu.model.layers import MLP, RMSNorm
from cramkit.gpu.model.mixer import ForwardContext, LayerTrace, Mixer, MixerOut
from cramkit.gpu.model.routers import check_budget, make_router
from cramkit.gpu.model.ssm import SSMMixer
from cramkit.gpu.model.state import (
    DecodeContext,
    InferenceState,
    check_room,
    check_route,
)


def task_loss(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model output at target positions (0 when the batch has none)."""
    return F.cross_entropy(logits, tgt) if tgt.numel() else logits.sum() * 0.0


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
    (:mod:`cramkit.gpu.model.routers`). ``n_q``: target positions per sequence when a batch does not say
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

    def own_parameters(self) -> list[nn.Parameter]:
        """The CRAM layers' own modules that only their losses and the memory's output train:
        memory, router and the two readout norms."""
        mods = [mod for m in self.cram_layers for mod in (m.memory, m.router, m.norm_m, m.norm_a)]
        return [p for mod in mods for p in mod.parameters()]

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.cram_layers for p in m.router.parameters()]

    def readout(self, x: torch.Tensor, norm: RMSNorm | None = None) -> torch.Tensor:
        logits = self.head((norm or self.norm_f)(x)).float()
        if self.target_range is not None:
            logits = logits[..., self.target_range[0] : self.target_range[1]]
        return logits

    def aux_readout(self, x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """The head as the CRAM layers' own readout losses see it: the same logits as
        :meth:`readout` with ``norm``, through a stop-gradient copy of the head weight (those losses
        train their own modules, never the shared head), restricted to the target range first."""
        w = self.head.weight.detach()
        if self.target_range is not None:
            w = w[self.target_range[0] : self.target_range[1]]
        return F.linear(norm(x), w).float()

    def aux_sample(self, n: int, positions: int, generator: torch.Generator | None, device=None) -> torch.Tensor | None:
        """(n,) bool: the n target positions at which the CRAM layers compute their readout losses
        and router labels this step: ``ceil(router.aux_share * positions)`` of them (``positions``:
        the batch's positions, so the cost is a share of the forward pass's whatever the share of
        targets), drawn uniformly without replacement, so a mean over them is an unbiased estimate
        of the mean over all n. None (every target) when that count reaches n, in evaluation mode or
        without a generator. The draw uses its own generator seeded from ``generator``'s seed, so it
        leaves the step's other draws alone."""
        k = max(1, math.ceil(self.rcfg.aux_share * positions))
        if k >= n or not self.training or generator is None or not self.cram_layers:
            return None
        g = torch.Generator().manual_seed((generator.initial_seed() * 2_654_435_761 + 97) % (2**63))
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=g)[:k]] = True
        return keep.to(device)

    def n_targets(self, bsz: int, t_len: int, targets=None, query_mask=None, device=None) -> torch.Tensor:
        """(B,) target positions per sequence, the budget's denominator: counted from the targets,
        else from the query mask, else ``n_q``, else every position."""
        if targets is not None:
            return (targets >= 0).sum(1)
        if query_mask is not None:
            return query_mask.sum(1)
        return torch.full((bsz,), t_len if self.n_q is None else self.n_q, dtype=torch.int64, device=device)

    def embed_tokens(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """:meth:`embed_positions` after :meth:`check_tokens`."""
        self.check_tokens(tokens, start)
        return self.embed_positions(tokens, start)

    def check_tokens(self, tokens: torch.Tensor, start: int = 0) -> None:
        """A clear error for token ids out of the vocabulary or positions past ``model.max_len``
        (host reads: kept out of compiled code)."""
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise CramError(f"token ids must lie in [0, {self.vocab_size}), got {int(tokens.min())}..{int(tokens.max())}")
        end = start + tokens.shape[1]
        if self.pos is not None and end > self.pos.num_embeddings:
            raise CramError(f"sequence length {end} exceeds model.max_len {self.pos.num_embeddings}")

    def embed_positions(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token embeddings (B, T, d) of positions ``start`` on, with the learned position
        embeddings where the model has them; no check, no host read."""
        x = self.embed(tokens)
        if self.pos is not None:
            x = x + self.pos(torch.arange(start, start + tokens.shape[1], device=tokens.device))
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
        weights: the CRAM layers' own losses' weights by name (:data:`LOSS_NAMES`; default 1, the
            router's ``router.loss_weight``); when every one is 0 the layers compute none of them
            (the task loss alone, and no per-target trace fields).
        """
        bsz, t_len = tokens.shape
        w = {"epi": 1.0, "sem": 1.0, "distill": 1.0, "router": self.rcfg.loss_weight}
        w.update(weights or {})
        x = self.embed_tokens(tokens)
        ctx = self._context(tokens, targets, query_mask, explore, generator, oracle, route)
        ctx.aux = any(w[name] != 0 for name in LOSS_NAMES)  # all weights 0: the task loss alone, none computed
        aux = x.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        traces: list[LayerTrace] = []
        for blk in self.blocks:
            ctx.suffix = self._suffix(blk, x, ctx) if (blk is self.blocks[-1] and ctx.has_targets) else None
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

    def _suffix(self, blk: Block, x: torch.Tensor, ctx: ForwardContext):
        """What follows ``blk``'s mixer when ``blk`` is the last block (its MLP, the final norm, the
        head: per position): the logits at target rows ``rows`` (N,) bool had the mixer output ``y``
        (n, d) there, on the detached block input ``x`` (ForwardContext.suffix). Nothing is computed
        unless a layer calls it."""
        return lambda rows, y: self.readout(blk._mlp(x.detach()[ctx.tmask][rows] + y))

    def _context(self, tokens, targets, query_mask, explore, generator, oracle, route) -> ForwardContext:
        bsz, t_len = tokens.shape
        ctx = ForwardContext(self.readout, self.n_targets(bsz, t_len, targets, query_mask, tokens.device),
                             aux_readout=self.aux_readout,
                             query_mask=query_mask, explore=explore, generator=generator, oracle=oracle,
                             route=check_route(route, (bsz, t_len), tokens.device))  # fmt: skip
        if targets is not None:
            ctx.tmask = targets >= 0
            tgt = targets[ctx.tmask]
            ctx.tgt = tgt - self.target_range[0] if self.target_range is not None else tgt
            ctx.sample = self.aux_sample(int(tgt.shape[0]), tokens.numel(), generator, tokens.device)
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

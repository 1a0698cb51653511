"""Baseline models that CRAM is measured against (``cram bench model``).

:class:`TransformerLM` is a plain GPT-2-style causal transformer: token + learned position
embeddings, ``depth`` pre-LayerNorm blocks of multi-head causal self-attention (one fused
``scaled_dot_product_attention`` call) and a GELU MLP, a final LayerNorm and a head tied to the
embedding. It has the inference API of the CRAM model (see docs/kernels.md, "cram bench model"):

    state = model.init_state(batch_size, max_len)   # a KV cache
    logits = model.prefill(tokens, state)           # (B, T, V)
    logits = model.step(token, state)               # (B, V)

The KV cache holds keys and values of every layer for ``max_len`` positions; a step writes one
position and attends over the filled prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.model.attention import cache_attend


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_mult: int):
        super().__init__()
        self.h = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, mlp_mult * d_model)
        self.out = nn.Linear(mlp_mult * d_model, d_model)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, t_len, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(bsz, t_len, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        return q, k, v  # (B, H, T, D) each

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        bsz, _, t_len, _ = attn.shape
        x = x + self.proj(attn.transpose(1, 2).reshape(bsz, t_len, -1))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                pos: int = 0) -> torch.Tensor:  # fmt: skip
        q, k, v = self._qkv(x)
        t_len = x.shape[1]
        if cache is None:
            return self._finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
        kc, vc = cache
        kc[:, :, pos : pos + t_len] = k
        vc[:, :, pos : pos + t_len] = v
        if t_len == 1:  # one new query sees the whole filled prefix: no mask needed
            attn = F.scaled_dot_product_attention(q, kc[:, :, : pos + 1], vc[:, :, : pos + 1])
        elif pos == 0:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk after a prefix: query i sees keys 0 .. pos + i
            keys = torch.arange(pos + t_len, device=x.device)
            allowed = keys[None, :] <= (pos + torch.arange(t_len, device=x.device))[:, None]
            attn = F.scaled_dot_product_attention(q, kc[:, :, : pos + t_len], vc[:, :, : pos + t_len], attn_mask=allowed)
        return self._finish(x, attn)


@dataclass
class KVCache:
    """Keys and values per layer, ``[B, H, max_len, D]`` each, and how many positions are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    max_len: int
    length: int = 0


class TransformerLM(nn.Module):
    """GPT-2-style causal transformer of width ``d_model`` and ``depth`` blocks (see the module
    docstring); ``max_len`` bounds the learned position table."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, depth: int, *, mlp_mult: int = 2,
                 max_len: int = 4096):  # fmt: skip
        super().__init__()
        if d_model % n_heads:
            raise CramError(f"d_model {d_model} must be a multiple of n_heads {n_heads}")
        self.vocab_size, self.max_len = vocab_size, max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, mlp_mult) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)
        self.head.weight = self.embed.weight

    @staticmethod
    def _init(mod: nn.Module) -> None:
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=0.02)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        t_len = tokens.shape[1]
        if start + t_len > self.max_len:
            raise CramError(f"position {start + t_len} exceeds the model's max_len {self.max_len}")
        return self.embed(tokens) + self.pos(torch.arange(start, start + t_len, device=tokens.device))

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits ``(B, T, V)``, or the mean cross-entropy against ``targets`` (``-1`` = none)."""
        x = self._embed(tokens, 0)
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

    def init_state(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` positions."""
        if max_len > self.max_len:
            raise CramError(f"max_len {max_len} exceeds the model's max_len {self.max_len}")
        p = self.embed.weight
        blk = self.blocks[0]
        shape = (batch_size, blk.h, max_len, p.shape[1] // blk.h)
        new = lambda: torch.zeros(shape, dtype=p.dtype, device=p.device)  # noqa: E731
        return KVCache([new() for _ in self.blocks], [new() for _ in self.blocks], max_len)

    def _run_cached(self, tokens: torch.Tensor, state: KVCache) -> torch.Tensor:
        t_len = tokens.shape[1]
        if state.length + t_len > state.max_len:
            raise CramError(f"the cache holds {state.max_len} positions; {state.length} + {t_len} do not fit")
        x = self._embed(tokens, state.length)
        for blk, kc, vc in zip(self.blocks, state.keys, state.values):
            x = blk(x, (kc, vc), state.length)
        state.length += t_len
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, state: KVCache, route=None) -> torch.Tensor:
        """Run a prompt ``(B, T)`` into the cache; logits ``(B, T, V)``. ``route`` is ignored (every
        position attends) and accepted for the CRAM model's signature."""
        return self._run_cached(tokens, state)

    @torch.no_grad()
    def step(self, token: torch.Tensor, state: KVCache, route=None) -> torch.Tensor:
        """One token per sequence ``(B,)``; logits ``(B, V)``."""
        return self._run_cached(token[:, None], state)[:, 0]


class TransformerStep(nn.Module):
    """The transformer's static-KV decode step (gpt-fast style), the counterpart of
    :class:`cramkit.gpu.model.decode_step.DecodeStep` for ``cram bench model``'s decode rows:
    ``forward(token (B,), pos () int64, *caches) -> logits (B, V)`` with the caches (every block's
    keys, then its values, ``KVCache`` order: ``[B, H, L, D]``) preallocated at a fixed length,
    written with ``index_copy_`` at ``pos``, read whole with the slots after ``pos`` masked; ``pos``
    advanced inside. No host read, one graph for a cache length."""

    def __init__(self, model: TransformerLM):
        super().__init__()
        self.model = model

    def forward(self, token, pos, *caches):
        m = self.model
        x = m.embed(token) + m.pos(pos)
        n = len(m.blocks)
        for blk, kc, vc in zip(m.blocks, caches[:n], caches[n:]):
            bsz, d = x.shape
            q, k, v = blk.qkv(blk.ln1(x)).view(bsz, 3, blk.h, d // blk.h).unbind(1)  # (B, H, D)
            kc.index_copy_(2, pos.view(1), k[:, :, None])
            vc.index_copy_(2, pos.view(1), v[:, :, None])
            x = x + blk.proj(cache_attend(q, kc, vc, pos).reshape(bsz, d))
            x = x + blk.out(F.gelu(blk.fc(blk.ln2(x))))
        pos.add_(1)
        return m.head(m.ln_f(x))

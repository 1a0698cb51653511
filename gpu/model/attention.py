"""``G`` and ``W``: plain dense causal attention (GPT-2 style) and sliding-window causal attention,
with :func:`cached_attention`, the routed-rows attention over a key/value cache used in decode.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.mixer import Mixer, PrefillContext, StepContext
from cramkit.gpu.model.state import (
    KVState,
)


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


def cache_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The sync-free step's attention: one query per row (B, H, D) against the cache (B, H, L, D),
    keys at slots ``<= pos`` (0-d). The mask is made inside the score computation (a stored bool
    mask of L slots costs more on the CPU than the step's matrix products)."""
    scores = (q[:, :, None, :] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, 1, L)
    scores = scores.masked_fill(torch.arange(k.shape[2], device=k.device) > pos, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v)[:, :, 0]


def branch(pred: torch.Tensor, on, off, args: tuple) -> torch.Tensor:
    """``torch.cond`` when traced (export, torch.compile); a host read when run eagerly; ``on``
    alone while a CUDA graph is being captured (no host read can be; the caller's ``where``
    picks the rows ``on`` serves)."""
    if torch.compiler.is_compiling():
        return torch.cond(pred, on, off, args)
    if pred.is_cuda and torch.cuda.is_current_stream_capturing():
        return on(*args)
    return on(*args) if bool(pred) else off(*args)


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

    # -- the sync-free step (gpu/model/mixer.py): keys and values in a cache of ``bucket`` slots --
    step_bucketed = {"k": 2, "v": 2}

    def step_state(self, st: KVState, n: int, bucket: int) -> dict[str, torch.Tensor]:
        return {"k": bucketed(st.k, n, bucket, 2), "v": bucketed(st.v, n, bucket, 2)}

    def _slot(self, pos: torch.Tensor) -> torch.Tensor:
        return pos.view(1)

    def fast_step(self, x: torch.Tensor, st: dict[str, torch.Tensor], sctx: StepContext) -> torch.Tensor:
        bsz, d = x.shape
        q, k, v = self.qkv(x).view(bsz, 3, self.h, d // self.h).unbind(1)  # (B, H, D)
        slot = self._slot(sctx.pos)
        st["k"].index_copy_(2, slot, k[:, :, None])
        st["v"].index_copy_(2, slot, v[:, :, None])
        # a ring slot is filled once pos has reached it: the same mask as the full cache
        return self.proj(cache_attend(q, st["k"], st["v"], sctx.pos).reshape(bsz, d))

    def fast_prefill(self, x: torch.Tensor, st: dict[str, torch.Tensor], pctx: PrefillContext) -> torch.Tensor:
        """The whole-sequence forward (causal SDPA), its keys and values written into the cache."""
        bsz, t_len, d = x.shape
        q, k, v = self.qkv(x).view(bsz, t_len, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        self._fill(st, k, v)
        y = self._prefill_attend(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(bsz, t_len, d))

    def _fill(self, st: dict[str, torch.Tensor], k: torch.Tensor, v: torch.Tensor) -> None:
        t_len = k.shape[2]
        st["k"][:, :, :t_len] = k
        st["v"][:, :, :t_len] = v

    def _prefill_attend(self, q, k, v) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def bucketed(t: torch.Tensor, n: int, bucket: int, dim: int) -> torch.Tensor:
    """A copy of ``t`` with ``bucket`` slots along ``dim``, its first ``n`` from ``t``, zeros after."""
    shape = list(t.shape)
    shape[dim] = bucket
    out = t.new_zeros(shape)
    out.narrow(dim, 0, n).copy_(t.narrow(dim, 0, n))
    return out


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

    # -- the sync-free step: keys and values in a ring of ``window`` slots (position p at p % window)
    step_bucketed = {}

    def step_state(self, st: KVState, n: int, bucket: int) -> dict[str, torch.Tensor]:
        out = {name: t.new_zeros(*t.shape[:2], self.window, t.shape[3]) for name, t in (("k", st.k), ("v", st.v))}
        self._fill(out, st.k[:, :, :n], st.v[:, :, :n])
        return out

    def _slot(self, pos: torch.Tensor) -> torch.Tensor:
        return (pos % self.window).view(1)

    def _fill(self, st: dict[str, torch.Tensor], k: torch.Tensor, v: torch.Tensor) -> None:
        t_len, ring = k.shape[2], self.window
        keep = torch.arange(max(0, t_len - ring), t_len, device=k.device)
        st["k"][:, :, keep % ring] = k[:, :, keep]
        st["v"][:, :, keep % ring] = v[:, :, keep]

    def _prefill_attend(self, q, k, v) -> torch.Tensor:
        t_len = q.shape[2]
        if self.window >= t_len:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(t_len, t_len, self.window, device=q.device))

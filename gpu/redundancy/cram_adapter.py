"""Adapter for cram text checkpoints (``cram train --task text``): byte-level models seen block by
block. Every attention-like block is a measured layer (docs/redundancy.md, "cram checkpoints"):

* ``G`` dense causal attention, as GPT-2's;
* ``W`` sliding-window attention: the same, each position attending its last ``model.window``
  positions (the band mask of :class:`cramkit.gpu.model.attention.WindowAttention`);
* ``A`` a CRAM retrieval layer: the measured output is the episodic path ``a_t`` (query, token-
  shifted keys, values, causal attention, output projection ``o``; no bias) computed at *every*
  position, as the oracle evaluation pass does, before the gate. What the block adds to the
  residual stream is what the model itself adds: ``a_t`` where the layer's router attends and the
  semantic memory ``M(x_t)`` elsewhere (:meth:`CramTextAdapter.block_output`), so a patched
  ``a_t`` reaches the stream only at routed positions.

SSM blocks (``S``) between them run as non-attention blocks. The block input is normalised by the
block's RMSNorm (the model's LN1).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.redundancy.adapters import LMAdapter, LoadedModel, byte_encoder

MEASURED = ("G", "W", "A")  # block kinds with an attention operation to measure
ROUTE_SEED = 12345  # the generator seed of the random and stride routers (one draw per batch)


class CramTextAdapter(LMAdapter):
    """A :class:`cramkit.gpu.model.CramModel` of the text task, seen block by block."""

    def __init__(self, model, name: str = "cram-text"):
        self.model = model.eval()
        self.name = name
        kinds = [b.kind for b in model.blocks]
        self.att = [i for i, k in enumerate(kinds) if k in MEASURED and self._contributes(model.blocks[i])]
        if not self.att:
            off = " (its CRAM layers are switched off by router 'none')" if "A" in kinds else ""
            raise CramError(f"this cram checkpoint has no attention layer (G, W or A) to measure{off}")
        self.kinds = [kinds[i] for i in self.att]
        cfg = model.cfg
        self.n_layers = len(self.att)
        self.n_heads = int(cfg.n_heads)
        self.d_model = int(cfg.d_model)
        self.head_dim = self.d_model // self.n_heads
        self.n_ctx = int(cfg.max_len) if cfg.max_len else 4096
        self.vocab_size = int(model.vocab_size)

    @staticmethod
    def _contributes(block) -> bool:
        """False for a CRAM layer whose router removes it (``none``: the block adds no mixer output)."""
        return block.kind != "A" or block.mixer.policy.mixes

    def _mixer(self, layer):
        return self.model.blocks[self.att[layer]].mixer

    def layer_kind(self, layer):
        return self.kinds[layer]

    def n_keys(self, layer, T):
        keys = super().n_keys(layer, T)
        return keys.clamp_max(float(self._mixer(layer).window)) if self.kinds[layer] == "W" else keys

    def layer_block(self, layer):
        return self.att[layer]

    def _run_plain(self, h, lo, hi):
        for blk in self.model.blocks[lo:hi]:
            if self._contributes(blk):
                h = h + blk.mixer(blk.norm1(h))
            h = h + blk.mlp(blk.norm2(h))
        return h

    def embed(self, tokens):
        return self.model.embed_positions(tokens)

    def before_attention(self, layer, h):
        lo = self.att[layer - 1] + 1 if layer > 0 else 0
        return self._run_plain(h, lo, self.att[layer])

    def ln1(self, layer, h):
        return self.model.blocks[self.att[layer]].norm1(h)

    def qkv(self, layer, x):
        B, T, d = x.shape
        mixer = self._mixer(layer)
        if self.kinds[layer] == "A":  # keys read the previous position too (the token shift)
            k, v = mixer.keys_values(x)  # (B, T, H, hd)
            q = mixer.q(x).view(B, T, self.n_heads, self.head_dim)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        qkv = mixer.qkv(x)
        q, k, v = qkv.view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # (B, H, T, hd)

    def attend(self, layer, q, k, v):
        T = q.shape[2]
        if self.kinds[layer] == "W" and self._mixer(layer).window < T:
            from cramkit.gpu.model.attention import window_mask

            mask = window_mask(T, T, self._mixer(layer).window, device=q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)

    def w_o(self, layer):  # nn.Linear: y = x W^T + b
        mixer = self._mixer(layer)
        return (mixer.o if self.kinds[layer] == "A" else mixer.proj).weight.T

    def b_o(self, layer):
        mixer = self._mixer(layer)
        if self.kinds[layer] == "A":  # the CRAM output projection has no bias
            return torch.zeros(self.d_model, dtype=mixer.o.weight.dtype, device=mixer.o.weight.device)
        return mixer.proj.bias

    def route(self, layer, x):
        """(B, T) bool: the CRAM layer's own decision on the normalised input ``x``, as the model
        decides without targets (``model(tokens)``; random and stride routers draw from a
        generator seeded with :data:`ROUTE_SEED` at every batch, so clean and patched passes of
        one batch see the same draws)."""
        from cramkit.gpu.model.routers import RouteRequest

        mixer = self._mixer(layer)
        B, T, _ = x.shape
        gen = torch.Generator().manual_seed(ROUTE_SEED + layer)
        req = RouteRequest(B, torch.arange(T, device=x.device), mixer.budget,
                           self.model.n_targets(B, T, device=x.device), generator=gen)  # fmt: skip
        return mixer.decide(x, req)[0]

    def semantic_memory(self, layer, x):
        """The CRAM layer's semantic memory ``M(x)`` at every position, ``(B, T, d)``."""
        return self._mixer(layer).memory(x)

    def block_output(self, layer, x, o):
        if self.kinds[layer] != "A":
            return o
        mixer = self._mixer(layer)
        if not mixer.policy.mixes:  # a router that switches the layer off: it adds nothing
            return torch.zeros_like(o)
        route = self.route(layer, x)
        return torch.where(route[..., None], o, mixer.memory_rows(x, ~route))

    def after_attention(self, layer, h):
        blk = self.model.blocks[self.att[layer]]
        h = h + blk.mlp(blk.norm2(h))
        if layer == self.n_layers - 1:
            h = self._run_plain(h, self.att[layer] + 1, len(self.model.blocks))
        return h

    def logits(self, h):
        return self.model.head(self.model.norm_f(h))


def load_cram_text(path: str | Path, tokenizer: str = "auto") -> LoadedModel:
    """Load a cram text checkpoint (architecture and config from the checkpoint itself)."""
    from cramkit.gpu.run.load import load_checkpoint

    ck = load_checkpoint(path)
    if ck.cfg.task != "text":
        raise CramError(
            f"{path} is a {ck.cfg.task!r} checkpoint; cram redundancy measures text checkpoints "
            "(cram train --task text) or GPT-2"
        )
    from cramkit.gpu.run.textrun import run_tokenizer

    tok = run_tokenizer(ck.path, ck.meta, ck.model.vocab_size)  # bytes, or the run's checked tokenizer.json
    if tokenizer not in ("auto", "bytes") or (tokenizer == "bytes" and tok.hf is not None):
        raise CramError(f"a cram text checkpoint reads its own tokenizer ({tok.source}): use --tokenizer auto")
    adapter = CramTextAdapter(ck.model.float(), name=Path(path).name)
    encode = byte_encoder(adapter.vocab_size) if tok.hf is None else (lambda text: tok.encode(text).tolist())
    return LoadedModel(
        adapter, encode, None, "bytes" if tok.hf is None else tok.source, "cram-text", str(ck.path),
        step=ck.meta.get("step"),
    )  # fmt: skip

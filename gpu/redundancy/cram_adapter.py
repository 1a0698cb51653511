"""Adapter for cram text checkpoints (``cram train --task text``): byte-level models whose dense
attention blocks (``G``) are measured like GPT-2's; SSM blocks (``S``) between them run as
non-attention blocks. The block input is normalised by the block's RMSNorm (the model's LN1).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.redundancy.adapters import LMAdapter, LoadedModel, byte_encoder


class CramTextAdapter(LMAdapter):
    """A :class:`cramkit.gpu.model.CramModel` of the text task, seen block by block."""

    def __init__(self, model, name: str = "cram-text"):
        self.model = model.eval()
        self.name = name
        kinds = [b.kind for b in model.blocks]
        if "A" in kinds:
            raise CramError(
                "this cram checkpoint has CRAM retrieval (A) layers; cram redundancy measures dense "
                "attention, i.e. text checkpoints from cram train --task text"
            )
        self.att = [i for i, k in enumerate(kinds) if k == "G"]
        if not self.att:
            raise CramError("this cram checkpoint has no attention (G) layer to measure")
        cfg = model.cfg
        self.n_layers = len(self.att)
        self.n_heads = int(cfg.n_heads)
        self.d_model = int(cfg.d_model)
        self.head_dim = self.d_model // self.n_heads
        self.n_ctx = int(cfg.max_len) if cfg.max_len else 4096
        self.vocab_size = int(model.vocab_size)

    def _run_plain(self, h, lo, hi):
        for blk in self.model.blocks[lo:hi]:
            h = h + blk.mixer(blk.norm1(h))
            h = h + blk.mlp(blk.norm2(h))
        return h

    def embed(self, tokens):
        x = self.model.embed(tokens)
        if self.model.pos is not None:
            x = x + self.model.pos(torch.arange(tokens.shape[1], device=tokens.device))
        return x

    def before_attention(self, layer, h):
        lo = self.att[layer - 1] + 1 if layer > 0 else 0
        return self._run_plain(h, lo, self.att[layer])

    def ln1(self, layer, h):
        return self.model.blocks[self.att[layer]].norm1(h)

    def qkv(self, layer, x):
        B, T, d = x.shape
        qkv = self.model.blocks[self.att[layer]].mixer.qkv(x)
        q, k, v = qkv.view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # (B, H, T, hd)

    def attend(self, layer, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)

    def w_o(self, layer):
        return self.model.blocks[self.att[layer]].mixer.proj.weight.T  # nn.Linear: y = x W^T + b

    def b_o(self, layer):
        return self.model.blocks[self.att[layer]].mixer.proj.bias

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
    from cramkit.gpu.eval import load_checkpoint

    ck = load_checkpoint(path)
    if ck.cfg.task != "text":
        raise CramError(
            f"{path} is a {ck.cfg.task!r} checkpoint; cram redundancy measures text checkpoints "
            "(cram train --task text) or GPT-2"
        )
    if tokenizer not in ("auto", "bytes"):
        raise CramError("cram text checkpoints are byte-level: use --tokenizer bytes (or auto)")
    adapter = CramTextAdapter(ck.model.float(), name=Path(path).name)
    return LoadedModel(
        adapter, byte_encoder(adapter.vocab_size), None, "bytes", "cram-text", str(ck.path),
        step=ck.meta.get("step"),
    )  # fmt: skip

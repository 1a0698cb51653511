"""A tiny GPT-2 with planted redundant heads: the positive control of ``cram redundancy``.

``save_planted_gpt2(path, heads=(0,))`` writes a 2-layer, 2-head, d=32 byte-level GPT-2 whose
listed heads of layer 0 attend only to their own position, so their output is an exact linear
function of LN1(h_t); the other weights are GPT-2's random initialisation. A correct measurement
flags the planted heads as redundant (π ≈ 1) and the shuffled control does not.

Construction: every embedding lies in a 16-dim subspace V orthogonal to the all-ones vector, so
LN1(h) = h / std(h) stays in V with norm sqrt(d); with W_Q = W_K = s U (U an orthonormal basis of
V) the attention score of key j is s² x_t · x_j / sqrt(hd), largest by a wide margin at x_j = x_t
(and equal keys carry equal values).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cramkit.gpu.redundancy.adapters import _import_transformers


def planted_gpt2(
    heads: tuple[int, ...] = (0,), *, seed: int = 0, inverse_layer_scale: bool = False
):
    """Build the model (a ``GPT2LMHeadModel``); see the module doc."""
    _import_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=256, n_positions=96, n_embd=32, n_layer=2, n_head=2,
        scale_attn_by_inverse_layer_idx=inverse_layer_scale, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    if heads:
        d, hd = 32, 16
        g = torch.randn(d, hd)
        g -= g.mean(0, keepdim=True)  # orthogonal to the ones vector
        U, _ = torch.linalg.qr(g)  # (d, hd) orthonormal basis of V
        with torch.no_grad():
            model.transformer.wte.weight.copy_(torch.randn(256, hd) @ U.T)
            model.transformer.wpe.weight.zero_()
            attn = model.transformer.h[0].attn
            for h in heads:
                q = slice(h * hd, (h + 1) * hd)
                k = slice(d + h * hd, d + (h + 1) * hd)
                v = slice(2 * d + h * hd, 2 * d + (h + 1) * hd)
                attn.c_attn.weight[:, q] = 5.0 * U
                attn.c_attn.weight[:, k] = 5.0 * U
                attn.c_attn.bias[q] = 0.0
                attn.c_attn.bias[k] = 0.0
                attn.c_attn.weight[:, v] = torch.randn(d, hd) * 0.3  # a visible, random value map
    return model


def save_planted_gpt2(path: str | Path, heads: tuple[int, ...] = (0,), *, seed: int = 0, **kw):
    """Build the model and ``save_pretrained`` it to ``path`` (use ``--tokenizer bytes``)."""
    model = planted_gpt2(heads, seed=seed, **kw)
    model.save_pretrained(str(path))
    return model

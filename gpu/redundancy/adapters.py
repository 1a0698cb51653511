"""Model adapters: the one place that knows how a model family lays out its modules.

The redundancy measurement never calls a model's own ``forward``. It runs the network block by
block through an :class:`LMAdapter`, so that it can read the residual input of every block, the
per-head attention outputs before the output projection, patch a layer's attention output, and
recompute a layer's attention with keys and values taken from another document. An adapter
exposes exactly those pieces:

* ``embed(tokens)``         -> the residual stream entering block 0, ``(B, T, d)``
* ``ln1(layer, h)``         -> the normalised block input the attention reads, ``(B, T, d)``
* ``qkv(layer, x)``         -> queries, keys and values, each ``(B, H, T, hd)``
* ``attend(layer, q, k, v)``-> causal per-head outputs ``z``, ``(B, T, H, hd)``
* ``w_o(layer), b_o(layer)``-> the output projection: ``o = z.flatten(-2) @ W_O + b_O``
* ``before_attention(layer, h)`` -> any non-attention blocks before attention layer ``layer``
* ``block_output(layer, x, o)`` -> what the block adds to the residual stream in place of the
  attention output ``o`` (``o`` itself for attention layers; a CRAM layer mixes it with its
  semantic memory by its own route, see ``cram_adapter``)
* ``after_attention(layer, h)`` -> the rest of the block (MLP sublayer with its residual add)
  and any non-attention blocks up to the next attention layer
* ``logits(h)``             -> next-token logits ``(B, T, V)``
* ``named_parameters()``    -> the weights, checked for NaN and inf before a measurement

:class:`HFGPT2Adapter` implements it for Hugging Face GPT-2 checkpoints loaded from a local
directory (never downloaded). A cram text checkpoint plugs in through the same protocol.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cramkit.errors import CramError

GPT2_HOWTO = (
    "to get GPT-2 on disk, run once on a machine with internet access: "
    'python -c "from transformers import GPT2LMHeadModel, GPT2TokenizerFast as T; '
    "GPT2LMHeadModel.from_pretrained('gpt2').save_pretrained('gpt2'); "
    "T.from_pretrained('gpt2').save_pretrained('gpt2')\" "
    "and pass --model ./gpt2"
)
INSTALL_HINT = "transformers is not installed: run pip install 'cram[gpt2]'"


class LMAdapter(ABC):
    """A pre-LayerNorm decoder-only language model seen block by block (see the module doc)."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    head_dim: int
    n_ctx: int
    vocab_size: int

    @abstractmethod
    def embed(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def before_attention(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Blocks without attention that run before attention layer ``layer`` (none for GPT-2)."""
        return h

    @abstractmethod
    def ln1(self, layer: int, h: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def qkv(
        self, layer: int, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor: ...

    @abstractmethod
    def w_o(self, layer: int) -> torch.Tensor: ...

    @abstractmethod
    def b_o(self, layer: int) -> torch.Tensor: ...

    def block_output(self, layer: int, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """What the block adds to the residual stream given the (possibly patched) attention
        output ``o`` ``(B, T, d)`` and the normalised input ``x``: ``o`` itself for attention."""
        return o

    def n_keys(self, layer: int, T: int) -> torch.Tensor:
        """(T,) float64: the keys position t reads in attention layer ``layer`` (t + 1, causal)."""
        return torch.arange(1, T + 1, dtype=torch.float64)

    def layer_kind(self, layer: int) -> str:
        """The kind of attention layer ``layer`` (``G`` dense causal attention unless told)."""
        return "G"

    def layer_block(self, layer: int) -> int:
        """The index of the model block that holds attention layer ``layer``."""
        return layer

    @abstractmethod
    def after_attention(self, layer: int, h: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def logits(self, h: torch.Tensor) -> torch.Tensor: ...

    def named_parameters(self):
        """The model's weights as ``(name, tensor)`` pairs (checked for NaN before measuring);
        adapters that wrap a ``torch.nn.Module`` as ``self.model`` need not override it."""
        return self.model.named_parameters()


class HFGPT2Adapter(LMAdapter):
    """A Hugging Face ``GPT2LMHeadModel`` run block by block.

    Only module attribute names that every transformers release since 4.x shares are used
    (``transformer.wte/wpe/h/ln_f``, ``ln_1``, ``attn.c_attn``, ``attn.c_proj``, ``ln_2``,
    ``mlp``, ``lm_head``); the attention itself is recomputed here with the scaling the config
    asks for, so that the result does not depend on the installed attention backend.
    """

    def __init__(self, model, name: str = "gpt2"):
        cfg = model.config
        self.model = model.eval()
        self.name = name
        self.n_layers = int(cfg.n_layer)
        self.n_heads = int(cfg.n_head)
        self.d_model = int(cfg.n_embd)
        self.head_dim = self.d_model // self.n_heads
        self.n_ctx = int(cfg.n_positions)
        self.vocab_size = int(cfg.vocab_size)
        self._tr = model.transformer
        self._scale_weights = bool(getattr(cfg, "scale_attn_weights", True))
        self._scale_inv_layer = bool(getattr(cfg, "scale_attn_by_inverse_layer_idx", False))
        if getattr(cfg, "add_cross_attention", False):
            raise CramError("GPT-2 models with cross-attention are not supported")

    def embed(self, tokens):
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self._tr.wte(tokens) + self._tr.wpe(pos)[None]

    def ln1(self, layer, h):
        return self._tr.h[layer].ln_1(h)

    def qkv(self, layer, x):
        qkv = self._tr.h[layer].attn.c_attn(x)  # (B, T, 3d)
        B, T, _ = qkv.shape
        q, k, v = qkv.split(self.d_model, dim=2)
        shape = (B, T, self.n_heads, self.head_dim)
        return tuple(t.reshape(shape).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)

    def attend(self, layer, q, k, v):
        scale = self.head_dim**-0.5 if self._scale_weights else 1.0
        if self._scale_inv_layer:
            scale /= float(layer + 1)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)  # (B, H, T, hd)
        return z.transpose(1, 2)  # (B, T, H, hd)

    def w_o(self, layer):
        return self._tr.h[layer].attn.c_proj.weight  # Conv1D: (d_in, d_out), y = x @ W + b

    def b_o(self, layer):
        return self._tr.h[layer].attn.c_proj.bias

    def after_attention(self, layer, h):
        block = self._tr.h[layer]
        return h + block.mlp(block.ln_2(h))

    def logits(self, h):
        return self.model.lm_head(self._tr.ln_f(h))


@dataclass
class LoadedModel:
    """An adapter plus the tokenizer that turns text into its token ids."""

    adapter: LMAdapter
    encode: Callable[[str], list[int]]
    bos_id: int | None
    tokenizer: str  # "bytes" or the tokenizer's source directory
    source: str  # "hf-gpt2" or "cram-text"
    path: str
    step: int | None = None  # training step of a cram checkpoint


def _import_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise CramError(INSTALL_HINT) from None
    return transformers


def byte_encoder(vocab_size: int) -> Callable[[str], list[int]]:
    """UTF-8 bytes as token ids (0..255); needs a vocabulary of at least 256 entries."""
    if vocab_size < 256:
        raise CramError(
            f"--tokenizer bytes needs a vocabulary of at least 256 tokens, the model has {vocab_size}"
        )

    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    return encode


def load_hf_gpt2(path: str | os.PathLike, tokenizer: str = "auto") -> LoadedModel:
    """Load a GPT-2 checkpoint from a local directory (``config.json`` + weights); never downloads.

    ``tokenizer`` is ``auto`` (the tokenizer files in the model directory), ``bytes`` (UTF-8
    bytes, for byte-level models) or another local directory holding tokenizer files.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CramError(
            f"{path} has no config.json, so it is not a Hugging Face model directory; {GPT2_HOWTO}"
        )
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise CramError(f"cannot read {cfg_file}: {exc}") from None
    if model_type != "gpt2":
        raise CramError(
            f"{path} holds a '{model_type}' model; cram redundancy measures GPT-2 models only"
        )
    _import_transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # config warnings and load bars would garble the report
    hf_logging.disable_progress_bar()

    try:
        model = GPT2LMHeadModel.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken directory
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CramError(f"cannot load the GPT-2 weights in {path}: {first}") from None
    model = model.float().eval()
    adapter = HFGPT2Adapter(model, name=path.name or str(path))
    encode, bos, tok_name = _tokenizer_for(path, tokenizer, adapter.vocab_size)
    return LoadedModel(adapter, encode, bos, tok_name, "hf-gpt2", str(path))


def _tokenizer_for(model_dir: Path, tokenizer: str, vocab_size: int):
    if tokenizer == "bytes":
        return byte_encoder(vocab_size), None, "bytes"
    tok_dir = model_dir if tokenizer == "auto" else Path(tokenizer)
    if not tok_dir.is_dir():
        raise CramError(f"tokenizer directory {tok_dir} does not exist")
    from transformers import AutoTokenizer

    files = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
    try:
        if not any((tok_dir / f).is_file() for f in files):
            raise FileNotFoundError(tok_dir)
        tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        if len(tok) == 0:
            raise ValueError("empty vocabulary")
    except Exception:
        raise CramError(
            f"no tokenizer files in {tok_dir}: save GPT-2's tokenizer there (see --help), point "
            "--tokenizer to a directory that has them, or use --tokenizer bytes for a byte-level model"
        ) from None
    if len(tok) > vocab_size:
        raise CramError(
            f"the tokenizer in {tok_dir} has {len(tok)} tokens but the model only {vocab_size}"
        )
    bos = tok.bos_token_id

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    return encode, (int(bos) if bos is not None else None), str(tok_dir)


def check_finite_model(loaded: LoadedModel) -> None:
    """Refuse a model with NaN or inf in any weight (a corrupt or diverged checkpoint), naming
    the file and the first such tensor."""
    for name, w in loaded.adapter.named_parameters():
        if not bool(torch.isfinite(w).all()):
            raise CramError(
                f"the model in {loaded.path} has NaN or inf weights ({name}); there is nothing to measure"
            )

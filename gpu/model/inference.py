"""Token-by-token generation with a model's recurrent API: :func:`sample` and :func:`generate`
(prefill, then one step per token: the compiled sync-free step of :mod:`cramkit.gpu.model.compiled`
by default, ``model.step`` with ``backend="eager"``; docs/inference.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cramkit.errors import CramError
from cramkit.gpu.model.state import check_room

GENERATE_BACKENDS = ("auto", "cudagraph", "aoti", "compile", "uncompiled", "eager")


def sample(logits: torch.Tensor, *, temperature: float, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids: greedy when ``temperature == 0``, else softmax sampling at
    ``temperature`` from the ``top_k`` most likely tokens (all when ``top_k == 0``)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, n_new) generated ids
    seconds: float  # wall time of prefill + steps
    prefill_seconds: float
    routes: list[torch.Tensor]  # per CRAM layer, (B, n_new) bool: generated positions that attended
    backend: str = "eager"  # what ran the steps: aoti, compile, uncompiled (the sync-free step) or eager
    compile_seconds: float = 0.0  # compiling or loading the step (not in ``seconds``)


def _stderr(line: str) -> None:
    print(f"cram: {line}", file=sys.stderr)


@torch.no_grad()
def generate(
    model,
    prompt: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    max_len: int | None = None,
    backend: str = "auto",
    cache_folder=None,
    warn: Callable[[str], None] = _stderr,
) -> Generation:
    """Continue ``prompt`` (B, T0) by ``max_new_tokens`` tokens with prefill + steps.

    ``backend``: ``eager`` runs ``model.step``; the others run the sync-free step
    (:class:`cramkit.gpu.model.compiled.FastDecoder`: ``auto``, ``aoti``, ``compile``,
    ``uncompiled``), compiled before the clock starts (``warn``: the compiler's fallback line). A
    router that cannot decide token by token goes to the eager step, whose error says so."""
    from cramkit.gpu.model.compiled import FastDecoder
    from cramkit.gpu.model.decode_step import own_route_reason

    if backend not in GENERATE_BACKENDS:
        raise CramError(f"the decode backend must be one of {GENERATE_BACKENDS}, got {backend!r}")
    bsz, t0 = prompt.shape
    total = max_len or (t0 + max_new_tokens)
    check_room(_Room(bsz, total), t0 + max_new_tokens, bsz)
    if model.pos is not None and total > model.pos.num_embeddings:
        raise CramError(f"max_len {total} exceeds model.max_len {model.pos.num_embeddings}")
    if backend != "eager" and own_route_reason(model):
        backend = "eager"  # its router decides over whole sequences: the eager step says so
    if backend == "eager":
        return _generate_eager(model, prompt, max_new_tokens, temperature, top_k, generator, total)
    dec = FastDecoder(model, backend=backend, folder=cache_folder, warn=warn)
    dec.prepare(bsz, t0 + 1, total)  # compile (or load) before the clock starts
    compiled = dec.compile_seconds
    start = time.perf_counter()
    logits = dec.prefill(prompt, total, generator=generator)[:, -1]
    prefill_s = time.perf_counter() - start - (dec.compile_seconds - compiled)
    out = []
    for i in range(max_new_tokens):
        tok = sample(logits, temperature=temperature, top_k=top_k, generator=generator)
        out.append(tok)
        if i + 1 < max_new_tokens:
            logits = dec.step(tok, generator=generator, check=False)
    seconds = time.perf_counter() - start - (dec.compile_seconds - compiled)
    routes = [r[:, t0 - 1 : t0 - 1 + max_new_tokens] for r in dec.routes()]
    toks = torch.stack(out, dim=1) if out else prompt.new_zeros(bsz, 0)
    return Generation(toks, seconds, prefill_s, routes, dec.backend_used, dec.compile_seconds)


@dataclass
class _Room:  # what check_room reads, before any state is allocated
    batch_size: int
    max_len: int
    pos: int = 0


def _generate_eager(model, prompt, max_new_tokens, temperature, top_k, generator, total) -> Generation:
    bsz, t0 = prompt.shape
    state = model.init_state(bsz, total)
    start = time.perf_counter()
    logits = model.prefill(prompt, state, generator=generator)[:, -1]
    prefill_s = time.perf_counter() - start
    out = []
    for i in range(max_new_tokens):
        tok = sample(logits, temperature=temperature, top_k=top_k, generator=generator)
        out.append(tok)
        if i + 1 < max_new_tokens:
            logits = model.step(tok, state, generator=generator)
    seconds = time.perf_counter() - start
    # attention use over the positions that produced a generated token: t0 - 1 .. t0 + n - 2
    routes = [r[:, t0 - 1 : t0 - 1 + max_new_tokens] for r in state.routes()]
    toks = torch.stack(out, dim=1) if out else prompt.new_zeros(bsz, 0)
    return Generation(toks, seconds, prefill_s, routes, "eager", 0.0)

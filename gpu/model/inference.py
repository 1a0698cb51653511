"""Token-by-token generation with a model's recurrent API: :func:`sample` and :func:`generate`
(prefill, then one ``step`` per token; docs/inference.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cramkit.gpu.model.state import check_room


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
) -> Generation:
    """Continue ``prompt`` (B, T0) by ``max_new_tokens`` tokens with prefill + steps."""
    bsz, t0 = prompt.shape
    state = model.init_state(bsz, max_len or (t0 + max_new_tokens))
    check_room(state, t0 + max_new_tokens, bsz)
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
    return Generation(toks, seconds, prefill_s, routes)

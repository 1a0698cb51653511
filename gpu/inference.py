"""Recurrent inference for :class:`cramkit.gpu.model.CramModel`: the state, and sampling.

The model offers (see docs/inference.md)::

    state = model.init_state(batch_size, max_len)          # an InferenceState
    logits = model.prefill(tokens, state, route=None)       # (B, T) -> (B, T, V); fills state
    logits = model.step(token, state, route=None)           # (B,) -> (B, V); appends one position

Each layer keeps what its mixer needs to continue a sequence (the mixer creates it with
``init_state`` and reads / updates it in ``decode``):

- an ``S`` block: the SSM state ``[B, H, N, P]`` after the last position and the last
  ``conv_width - 1`` inputs of its causal convolution (:class:`SSMState`);
- a ``G`` block: keys and values at every position (:class:`KVState`);
- an ``A`` (CRAM) block: keys and values at every position, the previous normalised state (its
  keys carry a token shift), the router's decisions so far and the router's per-sequence draws
  (:class:`CramState`).

Keys and values are cached at every position rather than made on demand from cached hidden
states: a routed query must see every earlier key, and making them on demand would cost a
``T x d x d`` projection per routed step (docs/inference.md has the measured memory of both).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from cramkit.errors import CramError
from cramkit.progress import Progress, report_to
from cramkit.result import Result


@dataclass
class SSMState:
    ssm: torch.Tensor  # (B, H, N, P) float32 state after the last position
    conv: torch.Tensor  # (B, C, W - 1) the last W - 1 inputs of the causal convolution


@dataclass
class KVState:
    k: torch.Tensor  # (B, H, max_len, D): one contiguous run of keys per head (fast reads)
    v: torch.Tensor  # (B, H, max_len, D)


@dataclass
class CramState(KVState):
    h_prev: torch.Tensor = None  # (B, d) normalised state at the last position (token shift of keys)
    route: torch.Tensor = None  # (B, max_len) bool: the decisions so far
    memo: dict = field(default_factory=dict)  # the router's per-sequence draws (stride phase)


@dataclass
class InferenceState:
    """Everything a model needs to continue ``batch_size`` sequences of up to ``max_len`` positions."""

    batch_size: int
    max_len: int
    pos: int  # positions filled so far
    layers: list  # one state per block (SSMState, KVState or CramState)

    def routes(self) -> list[torch.Tensor]:
        """(B, pos) bool decisions of every CRAM layer so far."""
        return [st.route[:, : self.pos] for st in self.layers if isinstance(st, CramState)]

    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        total = 0
        for st in self.layers:
            for value in vars(st).values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total


@dataclass
class DecodeContext:
    """What a mixer reads when it continues a sequence: where the chunk starts, the forced route
    (B, T) or None, the generator of the random routers, and the default target count."""

    pos: int
    route: torch.Tensor | None
    generator: torch.Generator | None
    n_targets: torch.Tensor  # (B,) for the budget of capacity routers


def check_room(state: InferenceState, t_len: int, batch: int) -> None:
    """A clear error when ``t_len`` more positions do not fit ``state``."""
    if batch != state.batch_size:
        raise CramError(f"the inference state holds {state.batch_size} sequences, got a batch of {batch}")
    if state.pos + t_len > state.max_len:
        raise CramError(
            f"the inference state holds max_len={state.max_len} positions; {state.pos} are filled and "
            f"{t_len} more do not fit (make the state with a larger max_len)"
        )


def check_route(route: torch.Tensor | None, shape: tuple[int, ...], device) -> torch.Tensor | None:
    if route is None:
        return None
    if not isinstance(route, torch.Tensor) or route.dtype != torch.bool or tuple(route.shape) != tuple(shape):
        raise CramError(f"route must be a bool tensor of shape {tuple(shape)}")
    return route.to(device)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# `cram generate`: text from a byte-level checkpoint
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerateConfig:
    """Settings of ``cram generate`` (greedy when ``temperature == 0``; ``top_k == 0``: all tokens)."""

    run: str
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if not self.prompt:
            raise CramError("--prompt is empty; give at least one character")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise CramError(f"--max-new-tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise CramError(f"--temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k < 0:
            raise CramError(f"--top-k must be >= 0 (0 = every token), got {self.top_k}")


@dataclass
class GenerateResult(Result):
    name = "cram generate"

    checkpoint: str
    prompt: str
    text: str  # the generated continuation
    new_tokens: int
    seconds: float
    prefill_seconds: float
    attention: list[float]  # per CRAM layer: fraction of generating positions that attended
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "prompt": self.prompt, "text": self.text,
                "new_tokens": self.new_tokens, "seconds": self.seconds, "prefill_seconds": self.prefill_seconds,
                "tokens_per_s": self.tokens_per_s, "attention_per_layer": self.attention, **self.settings}  # fmt: skip

    def report(self) -> str:
        return self.prompt + self.text

    def stats(self) -> str:
        """One line: speed and attention use (the CLI prints it on stderr)."""
        att = ", ".join(f"{a:.3f}" for a in self.attention) if self.attention else "no CRAM layers"
        return (f"{self.new_tokens} tokens in {self.seconds:.3f} s ({self.tokens_per_s:.1f} tokens/s, "
                f"prefill {self.prefill_seconds * 1e3:.1f} ms); attention use per CRAM layer: {att}")  # fmt: skip


def encode_bytes(text: str) -> torch.Tensor:
    """(1, n) byte ids of ``text`` in UTF-8 (the text task's tokens)."""
    return torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)


def generate_text(model, cfg: GenerateConfig, checkpoint: str = "") -> GenerateResult:
    """Continue ``cfg.prompt`` with a byte-level ``model``; clear errors for what cannot fit."""
    prompt = encode_bytes(cfg.prompt).to(model.embed.weight.device)
    n0 = prompt.shape[1]
    limit = model.cfg.max_len
    if limit and n0 > limit:
        raise CramError(f"the prompt is {n0} bytes, longer than the model's max_len {limit}")
    if limit and n0 + cfg.max_new_tokens > limit:
        raise CramError(
            f"prompt ({n0} bytes) + --max-new-tokens {cfg.max_new_tokens} exceed the model's max_len {limit}; "
            f"use --max-new-tokens {limit - n0} or less" if n0 < limit else
            f"the prompt fills the model's max_len {limit}; nothing can be generated after it"
        )  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        out = generate(model, prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, generator=gen)  # fmt: skip
    finally:
        model.train(was_training)
    text = bytes(out.tokens[0].tolist()).decode("utf-8", errors="replace")
    attention = [float(r.float().mean()) for r in out.routes]
    settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k,
                "seed": cfg.seed}  # fmt: skip
    return GenerateResult(checkpoint, cfg.prompt, text, int(out.tokens.shape[1]), out.seconds,
                          out.prefill_seconds, attention, settings)  # fmt: skip


def run(config: GenerateConfig, progress: Progress | None = None) -> GenerateResult:
    """``cram generate``: load a text checkpoint (file or run folder) and continue the prompt."""
    from cramkit.gpu.eval import load_checkpoint  # model -> inference; eval imports model

    tick = report_to(progress)
    ck = load_checkpoint(config.run)
    if ck.cfg.task != "text" or ck.model.vocab_size != 256 or ck.model.target_range is not None:
        raise CramError(f"{config.run} is not a text checkpoint (task {ck.cfg.task!r}); cram generate needs a byte-level model")
    tick("generate", 0, 1)
    result = generate_text(ck.model, config, str(ck.path))
    tick("generate", 1, 1)
    return result

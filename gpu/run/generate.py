"""``cram generate``: text from a text checkpoint (bytes or the run's subword tokenizer) (the command contract
``run(GenerateConfig, progress) -> GenerateResult``; docs/inference.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from cramkit.errors import CramError
from cramkit.gpu.model.inference import generate
from cramkit.progress import Progress, report_to
from cramkit.result import Result


@dataclass(frozen=True)
class GenerateConfig:
    """Settings of ``cram generate`` (greedy when ``temperature == 0``; ``top_k == 0``: all tokens)."""

    run: str
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    eager: bool = False  # True: model.step (the eager step) instead of the compiled sync-free step

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
    token_ids: list[int] = field(default_factory=list)  # the generated ids, before decoding

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "prompt": self.prompt, "text": self.text,
                "new_tokens": self.new_tokens, "seconds": self.seconds, "prefill_seconds": self.prefill_seconds,
                "tokens_per_s": self.tokens_per_s, "attention_per_layer": self.attention, **self.settings,
                "token_ids": self.token_ids}  # fmt: skip

    def report(self) -> str:
        return self.prompt + self.text

    def stats(self) -> str:
        """One line: speed and attention use (the CLI prints it on stderr)."""
        att = ", ".join(f"{a:.3f}" for a in self.attention) if self.attention else "no CRAM layers"
        step = self.settings.get("backend", "eager")
        compiled = self.settings.get("compile_seconds") or 0.0
        step += f", compile {compiled:.1f} s not counted" if compiled else ""
        return (f"{self.new_tokens} tokens in {self.seconds:.3f} s ({self.tokens_per_s:.1f} tokens/s, "
                f"prefill {self.prefill_seconds * 1e3:.1f} ms; step: {step}); attention use per CRAM layer: {att}")  # fmt: skip


def encode_bytes(text: str) -> torch.Tensor:
    """(1, n) byte ids of ``text`` in UTF-8 (the text task's tokens)."""
    return torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)


def generate_text(model, cfg: GenerateConfig, checkpoint: str = "", tokenizer=None) -> GenerateResult:
    """Continue ``cfg.prompt`` with a text ``model`` (bytes, or ``tokenizer``'s tokens: a
    :class:`cramkit.gpu.tasks.tokenizer.Tokenizer`); clear errors for what cannot fit."""
    if tokenizer is None or tokenizer.hf is None:
        prompt, unit = encode_bytes(cfg.prompt), "bytes"
    else:
        prompt, unit = torch.from_numpy(tokenizer.encode(cfg.prompt))[None], "tokens"
    prompt = prompt.to(model.embed.weight.device)
    n0 = prompt.shape[1]
    limit = model.cfg.max_len
    if limit and n0 > limit:
        raise CramError(f"the prompt is {n0} {unit}, longer than the model's max_len {limit}")
    if limit and n0 + cfg.max_new_tokens > limit:
        raise CramError(
            f"prompt ({n0} {unit}) + --max-new-tokens {cfg.max_new_tokens} exceed the model's max_len {limit}; "
            f"use --max-new-tokens {limit - n0} or less" if n0 < limit else
            f"the prompt fills the model's max_len {limit}; nothing can be generated after it"
        )  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    try:
        out = generate(model, prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       top_k=cfg.top_k, generator=gen, backend="eager" if cfg.eager else "auto")  # fmt: skip
    finally:
        model.train(was_training)
    ids = out.tokens[0].tolist()
    text = bytes(ids).decode("utf-8", errors="replace") if tokenizer is None or tokenizer.hf is None \
        else tokenizer.decode(ids)  # fmt: skip
    attention = [float(r.float().mean()) for r in out.routes]
    settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k,
                "seed": cfg.seed, "backend": out.backend, "compile_seconds": out.compile_seconds}  # fmt: skip
    return GenerateResult(checkpoint, cfg.prompt, text, int(out.tokens.shape[1]), out.seconds,
                          out.prefill_seconds, attention, settings, ids)  # fmt: skip


def run(config: GenerateConfig, progress: Progress | None = None) -> GenerateResult:
    """``cram generate``: load a text checkpoint (file or run folder) and continue the prompt."""
    from cramkit.gpu.run.load import load_checkpoint

    tick = report_to(progress)
    ck = load_checkpoint(config.run)
    if ck.cfg.task != "text" or ck.model.target_range is not None:
        raise CramError(f"{config.run} is not a text checkpoint (task {ck.cfg.task!r}); cram generate needs a text model")
    from cramkit.gpu.run.textrun import run_tokenizer

    tokenizer = run_tokenizer(ck.path, ck.meta, ck.model.vocab_size)
    tick("generate", 0, 1)
    result = generate_text(ck.model, config, str(ck.path), tokenizer)
    tick("generate", 1, 1)
    return result

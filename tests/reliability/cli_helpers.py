"""What the reliability tests share: the tiny quick-preset run they train (a few seconds on one
thread) and the one-error-line check."""

from __future__ import annotations

TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "train.batch_size=8",
        "train.eval_sequences=32", "train.warmup_steps=2", "train.threads=1", "train.eval_log_points=0",
        "train.steps=6", "train.eval_every=3", "train.ckpt_every=2"]  # fmt: skip


def tiny_sets(*extra: str) -> list[str]:
    """``--set`` arguments of the tiny run, then ``extra`` settings (which win)."""
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


def one_line_error(r, code: int = 2) -> str:
    """The one line a CLI result printed, checking the exit code and that there is no traceback."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    return lines[0]

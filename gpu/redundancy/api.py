"""Entry points by path: a GPT-2 directory, a cram checkpoint, or a cram run (trajectory).

:func:`run` is the command's library call (``cram redundancy``): ``run(RedundancyRun(...),
progress)`` returns a :class:`RedundancyResult` for one model or a :class:`TrajectoryResult` for
a run folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cramkit import runs
from cramkit.errors import CramError
from cramkit.gpu.redundancy.adapters import GPT2_HOWTO, LoadedModel, load_hf_gpt2
from cramkit.gpu.redundancy.config import RedundancyConfig, RedundancyRun
from cramkit.gpu.redundancy.measure import measure_redundancy
from cramkit.gpu.redundancy.results import RedundancyResult, TrajectoryResult
from cramkit.progress import Progress


def run(config: RedundancyRun, progress: Progress | None = None) -> RedundancyResult | TrajectoryResult:
    """Measure ``config.model``: one model, or every checkpoint of a cram run folder."""
    p = Path(config.model)
    if is_run_dir(p):
        return redundancy_trajectory(p, text=config.text, tokenizer=config.tokenizer, config=config.options,
                                     progress=progress)  # fmt: skip
    return measure_redundancy(load_model(p, config.tokenizer), config.text, config.options, progress)


def load_model(path: str | Path, tokenizer: str = "auto") -> LoadedModel:
    """A local Hugging Face GPT-2 directory or a cram text checkpoint (``*.safetensors``)."""
    p = Path(path)
    if not p.exists():
        raise CramError(f"no model at {p}; {GPT2_HOWTO}")
    if p.is_dir() and (p / "config.json").is_file():
        return load_hf_gpt2(p, tokenizer)
    if p.is_file() and p.suffix == ".safetensors":
        from cramkit.gpu.redundancy.cram_adapter import load_cram_text

        return load_cram_text(p, tokenizer)
    if p.is_dir():
        raise CramError(
            f"{p} is neither a Hugging Face GPT-2 directory (no config.json) nor a cram run "
            f"(no {runs.LAST} or {runs.CHECKPOINTS}/); {GPT2_HOWTO}"
        )
    raise CramError(f"{p} is not a model: give a GPT-2 directory or a cram .safetensors checkpoint")


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a cram run in step order (the kept ones, else the last one)."""
    found = runs.kept_checkpoints(run_dir)
    if not found and runs.last_checkpoint(run_dir).is_file():
        found = [runs.last_checkpoint(run_dir)]
    return found


def is_run_dir(p: Path) -> bool:
    return p.is_dir() and not (p / "config.json").is_file() and bool(run_checkpoints(p))


def measure_path(
    path: str | Path,
    *,
    text: str | None = None,
    tokenizer: str = "auto",
    config: RedundancyConfig | None = None,
    progress: Progress | None = None,
) -> dict:
    """:func:`run` on ``path`` as its JSON dict (the result of a run folder has ``trajectory``)."""
    job = RedundancyRun(str(path), text, tokenizer, config or RedundancyConfig())
    return run(job, progress).to_json()


def redundancy_trajectory(
    run_dir: Path,
    *,
    text: str | None = None,
    tokenizer: str = "auto",
    config: RedundancyConfig | None = None,
    progress: Progress | None = None,
) -> TrajectoryResult:
    """Measure each checkpoint of a run with the same corpus and settings; does redundancy fall?"""
    ckpts = run_checkpoints(run_dir)
    rows, results = [], []
    for i, ck in enumerate(ckpts):
        r = measure_redundancy(load_model(ck, tokenizer), text, config, _prefixed(progress, i, len(ckpts)))
        m = re.search(r"(\d+)", ck.stem)
        step = r.model.get("step")
        if step is None and m:
            step = int(m.group(1))
        rows.append(r.trajectory_row(ck.name, step))
        results.append(r)
    trend = None
    if len(rows) >= 2:
        y = np.array([row["headline"] for row in rows], dtype=float)
        trend = float(np.polyfit(np.arange(len(y)), y, 1)[0])
    return TrajectoryResult(str(run_dir), rows, trend, results)


def _prefixed(progress: Progress | None, i: int, n: int) -> Progress | None:
    """``progress`` with each stage named after checkpoint ``i`` of ``n``."""
    if progress is None:
        return None
    return lambda stage, done, total: progress(f"ckpt {i + 1}/{n} {stage}", done, total)

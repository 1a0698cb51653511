"""Entry points by path: a GPT-2 directory, a cram checkpoint, or a cram run (trajectory)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cramkit.gpu.redundancy.adapters import GPT2_HOWTO, LoadedModel, load_hf_gpt2
from cramkit.gpu.redundancy.measure import Progress, RedundancyConfig, measure_redundancy
from cramkit.errors import CramError


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
            f"(no last.safetensors or checkpoints/); {GPT2_HOWTO}"
        )
    raise CramError(f"{p} is not a model: give a GPT-2 directory or a cram .safetensors checkpoint")


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a cram run in step order (``checkpoints/step_*.safetensors``, else ``last``)."""
    found = (
        sorted((run_dir / "checkpoints").glob("*.safetensors"))
        if (run_dir / "checkpoints").is_dir()
        else []
    )
    if not found and (run_dir / "last.safetensors").is_file():
        found = [run_dir / "last.safetensors"]
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
    """Measure one model, or every checkpoint of a cram run (then the result has ``trajectory``)."""
    p = Path(path)
    if is_run_dir(p):
        return redundancy_trajectory(
            p, text=text, tokenizer=tokenizer, config=config, progress=progress
        )
    return measure_redundancy(load_model(p, tokenizer), text, config, progress)


def redundancy_trajectory(
    run_dir: Path,
    *,
    text: str | None = None,
    tokenizer: str = "auto",
    config: RedundancyConfig | None = None,
    progress: Progress | None = None,
) -> dict:
    """Measure each checkpoint of a run with the same corpus and settings; does redundancy fall?"""
    ckpts = run_checkpoints(run_dir)
    rows, results = [], []
    for i, ck in enumerate(ckpts):
        tick = None
        if progress is not None:

            def tick(stage, done, total, i=i):
                progress(f"ckpt {i + 1}/{len(ckpts)} {stage}", done, total)

        r = measure_redundancy(load_model(ck, tokenizer), text, config, tick)
        m = re.search(r"(\d+)", ck.stem)
        step = r["model"].get("step")
        if step is None and m:
            step = int(m.group(1))
        p1 = r["overall"].get("p1") or r["overall"][r["config"]["patch_predictor"]]
        rows.append(
            {
                "checkpoint": ck.name,
                "step": step,
                "headline": r["headline"]["fraction"],
                "headline_ci": r["headline"]["ci"],
                "headline_dnll": r["headline"]["dnll"],
                "pi_p1_0.1": p1["pi"].get("0.1"),
                "r2_p1": p1["r2"],
                "mean_ablation_dnll": r["controls"]["c5_patching"]["everywhere"]["p0_everywhere"][
                    "dnll"
                ],
                "budget_binding": r["headline"].get("budget_binding"),
            }
        )
        results.append(r)
    trend = None
    if len(rows) >= 2:
        y = np.array([row["headline"] for row in rows], dtype=float)
        trend = float(np.polyfit(np.arange(len(y)), y, 1)[0])
    return {"run_dir": str(run_dir), "trajectory": rows, "trend": trend, "checkpoints": results}

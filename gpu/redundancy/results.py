"""The results of ``cram redundancy`` (the :class:`cramkit.result.Result` contract): one model's
measurement (:class:`RedundancyResult`) and a run folder's trajectory over training
(:class:`TrajectoryResult`). Their JSON keys are documented in docs/redundancy.md ("Output");
the text and the figures come from :mod:`cramkit.gpu.redundancy.report`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cramkit.jsonable import to_jsonable
from cramkit.result import Result


@dataclass
class RedundancyResult(Result):
    """One model measured: each field is one top-level key of the JSON, in this order."""

    model: dict
    data: dict
    config: dict
    layers_measured: list[int]
    overall: dict
    layers: list[dict]
    controls: dict
    cdf: dict
    headline: dict
    timing_s: float
    stage_s: dict[str, float] = field(default_factory=dict)

    name = "redundancy"

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})

    def report(self) -> str:
        from cramkit.gpu.redundancy.report import format_report

        return format_report(self.to_json())

    def plot(self, path: str | os.PathLike) -> None:
        from cramkit.gpu.redundancy.report import plot_report

        plot_report(self.to_json(), path)

    def trajectory_row(self, checkpoint: str, step: int | None) -> dict:
        """This checkpoint's row of a run's trajectory."""
        p1 = self.overall.get("p1") or self.overall[self.config["patch_predictor"]]
        h = self.headline
        return {
            "checkpoint": checkpoint,
            "step": step,
            "headline": h["fraction"],
            "headline_ci": h["ci"],
            "headline_dnll": h["dnll"],
            "pi_p1_0.1": p1["pi"].get("0.1"),
            "r2_p1": p1["r2"],
            "mean_ablation_dnll": self.controls["c5_patching"]["everywhere"]["p0_everywhere"]["dnll"],
            "budget_binding": h.get("budget_binding"),
        }


@dataclass
class TrajectoryResult(Result):
    """Every checkpoint of a cram run measured with the same corpus and settings: one row per
    checkpoint, the least-squares slope of the headline over checkpoint index, the full results."""

    run_dir: str
    trajectory: list[dict]
    trend: float | None
    checkpoints: list[RedundancyResult]

    name = "redundancy"

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({"run_dir": self.run_dir, "trajectory": self.trajectory, "trend": self.trend,
                            "checkpoints": [c.to_json() for c in self.checkpoints]})  # fmt: skip

    def report(self) -> str:
        from cramkit.gpu.redundancy.report import format_trajectory

        return format_trajectory(self.to_json())

    def plot(self, path: str | os.PathLike) -> None:
        from cramkit.gpu.redundancy.report import plot_trajectory

        plot_trajectory(self.to_json(), path)

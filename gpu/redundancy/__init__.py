"""Attention redundancy (docs/redundancy.md): how much attention output the state already predicts.

The command's library call is :func:`run` (a :class:`RedundancyRun` in, a
:class:`RedundancyResult` or, for a run folder, a :class:`TrajectoryResult` out). Also public:
:func:`measure_path` (a GPT-2 directory, a cram checkpoint or a cram run),
:func:`measure_redundancy` (one loaded model), :func:`load_model` and :class:`RedundancyConfig`
(the measurement's options).

Modules: ``config`` (options), ``corpus`` (FIT/VAL/TEST), ``adapters`` and ``cram_adapter`` (the
model seen block by block), ``engine`` (the capturing and patching forward), ``predictors``,
``passes`` (FIT, VAL, gate and clean TEST passes), ``assembly`` (descriptive sections),
``controls`` (patching controls C5-C7), ``measure`` (the whole measurement), ``results`` and
``report`` (the Result objects, their text and figures), ``api`` (entry points by path).
"""

from cramkit.gpu.redundancy.adapters import LMAdapter, LoadedModel, load_hf_gpt2
from cramkit.gpu.redundancy.api import load_model, measure_path, redundancy_trajectory, run
from cramkit.gpu.redundancy.config import PREDICTORS, RedundancyConfig, RedundancyRun
from cramkit.gpu.redundancy.measure import measure_redundancy
from cramkit.gpu.redundancy.results import RedundancyResult, TrajectoryResult

__all__ = [
    "LMAdapter",
    "LoadedModel",
    "PREDICTORS",
    "RedundancyConfig",
    "RedundancyResult",
    "RedundancyRun",
    "TrajectoryResult",
    "load_hf_gpt2",
    "load_model",
    "measure_path",
    "measure_redundancy",
    "redundancy_trajectory",
    "run",
]

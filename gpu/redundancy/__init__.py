"""GPT-2 attention redundancy (SPEC §7): how much attention output the state already predicts.

Public entry points: :func:`measure_path` (a GPT-2 directory, a cram checkpoint or a cram run),
:func:`measure_redundancy` (one loaded model), :func:`load_model` and :class:`RedundancyConfig`.
"""

from cramkit.gpu.redundancy.adapters import LMAdapter, LoadedModel, load_hf_gpt2
from cramkit.gpu.redundancy.api import load_model, measure_path, redundancy_trajectory
from cramkit.gpu.redundancy.measure import PREDICTORS, RedundancyConfig, measure_redundancy

__all__ = [
    "LMAdapter",
    "LoadedModel",
    "PREDICTORS",
    "RedundancyConfig",
    "load_hf_gpt2",
    "load_model",
    "measure_path",
    "measure_redundancy",
    "redundancy_trajectory",
]

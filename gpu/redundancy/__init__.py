"""GPT-2 attention redundancy (SPEC §7): how much attention output the state already predicts.

Public entry points: :func:`measure_redundancy` (one model), :func:`load_model` (a local Hugging
Face GPT-2 directory or a cram text checkpoint) and :class:`RedundancyConfig`.
"""

from gpu.redundancy.adapters import LMAdapter, LoadedModel, load_hf_gpt2
from gpu.redundancy.measure import PREDICTORS, RedundancyConfig, measure_redundancy

__all__ = [
    "LMAdapter",
    "LoadedModel",
    "PREDICTORS",
    "RedundancyConfig",
    "load_hf_gpt2",
    "measure_redundancy",
]

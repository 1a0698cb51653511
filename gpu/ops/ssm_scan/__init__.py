"""Chunked selective SSM scan with initial and final state, and its single-step form for
decoding (see README.md)."""

from .interface import ssm_scan
from .step import ssm_step

__all__ = ["ssm_scan", "ssm_step"]

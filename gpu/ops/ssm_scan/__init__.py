"""Chunked selective SSM scan with initial and final state (see README.md)."""

from .interface import ssm_scan

__all__ = ["ssm_scan"]

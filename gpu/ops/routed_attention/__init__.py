"""Routed causal attention: only the routed query positions attend (see README.md)."""

from .interface import routed_attention

__all__ = ["routed_attention"]

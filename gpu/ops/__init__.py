"""Fused operators. Each op lives in its own folder with a reference, kernels and a README."""

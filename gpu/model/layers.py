"""The small layers every block shares: RMSNorm and the two-layer GELU MLP.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int | None = None):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden)
        self.proj = nn.Linear(d_hidden, d_out or d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))

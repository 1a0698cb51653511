"""``S``: the Mamba-2-style selective-scan mixer (scalar decay per head, short causal depthwise
conv, chunked scan :func:`cramkit.gpu.ops.ssm_scan.ssm_scan`; one-step :func:`ssm_step` in decode).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.layers import RMSNorm
from cramkit.gpu.model.mixer import Mixer, PrefillContext, StepContext
from cramkit.gpu.model.state import (
    SSMState,
)
from cramkit.gpu.ops.ssm_scan import ssm_scan, ssm_step


class SSMMixer(Mixer):
    """Mamba-2-style selective scan: in_proj -> short causal conv on (x, B, C) -> scan -> gate."""

    def __init__(self, cfg: ModelConfig, rcfg: RouterConfig | None = None):
        super().__init__()
        self.h, self.p, self.n = cfg.ssm_heads, cfg.ssm_head_dim, cfg.d_state
        self.chunk_size = cfg.chunk_size
        d_inner = self.h * self.p
        self.d_inner = d_inner
        conv_ch = d_inner + 2 * self.h * self.n
        self.in_proj = nn.Linear(cfg.d_model, d_inner + conv_ch + self.h, bias=False)  # z, xBC, dt
        self.conv = nn.Conv1d(conv_ch, conv_ch, cfg.conv_width, groups=conv_ch, padding=cfg.conv_width - 1)
        # decay rates A in [1, 16] and dt in [1e-3, 1e-1] at init, as in Mamba-2
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, self.h)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), self.h))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.D = nn.Parameter(torch.ones(self.h))
        self.norm = RMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)

    def _scan_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        """(x, x*dt, log_a, b, c) from the convolved x, B, C and the raw step sizes."""
        bsz, t_len, _ = xbc.shape
        x, b, c = torch.split(xbc, [self.d_inner, self.h * self.n, self.h * self.n], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, T, H)
        log_a = -torch.exp(self.A_log.float()) * dt  # (B, T, H), <= 0
        x = x.view(bsz, t_len, self.h, self.p)
        b = b.view(bsz, t_len, self.h, self.n).float()
        c = c.view(bsz, t_len, self.h, self.n).float()
        return x, x.float() * dt[..., None], log_a, b, c

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor, dtype) -> torch.Tensor:
        bsz, t_len = x.shape[:2]
        y = y.to(dtype) + x * self.D.to(dtype)[:, None]
        y = self.norm(y.reshape(bsz, t_len, self.d_inner) * F.silu(z))
        return self.out_proj(y)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        t_len = u.shape[1]
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv.in_channels, self.h], dim=-1)
        xbc = F.silu(self.conv(xbc.transpose(1, 2))[..., :t_len].transpose(1, 2))  # causal conv
        x, xdt, log_a, b, c = self._scan_inputs(xbc, dt)
        y, _ = ssm_scan(xdt, log_a, b, c, chunk_size=self.chunk_size)  # (B, T, H, P)
        return self._output(y, x, z, u.dtype)

    def init_state(self, batch, max_len, device, dtype):
        w = self.conv.kernel_size[0]
        return SSMState(
            ssm=torch.zeros(batch, self.h, self.n, self.p, device=device, dtype=torch.float32),
            conv=torch.zeros(batch, self.conv.in_channels, w - 1, device=device, dtype=dtype),
        )

    def decode(self, u, st: SSMState, dctx):
        t_len = u.shape[1]
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv.in_channels, self.h], dim=-1)
        window = torch.cat([st.conv, xbc.transpose(1, 2)], dim=2)  # (B, C, W - 1 + T)
        keep = st.conv.shape[2]
        st.conv = window[:, :, window.shape[2] - keep :].clone()
        conv = F.conv1d(window, self.conv.weight, self.conv.bias, groups=self.conv.in_channels)
        x, xdt, log_a, b, c = self._scan_inputs(F.silu(conv.transpose(1, 2)), dt)
        if t_len == 1:
            y, st.ssm = ssm_step(st.ssm, xdt[:, 0], log_a[:, 0], b[:, 0], c[:, 0])
            y = y[:, None]
        else:
            y, st.ssm = ssm_scan(xdt, log_a, b, c, initial_state=st.ssm, chunk_size=self.chunk_size)
        return self._output(y, x, z, u.dtype)

    # -- the sync-free step (gpu/model/mixer.py) -------------------------------------------------
    def step_state(self, st: SSMState, n: int, bucket: int) -> dict[str, torch.Tensor]:
        return {"ssm": st.ssm.clone(), "conv": st.conv.clone()}

    def _shifted_conv(self, window: torch.Tensor, t_len: int) -> torch.Tensor:
        """The causal depthwise conv of the last ``t_len`` positions of ``window`` (B, W - 1 + T, C)
        as a sum of shifted products (``F.conv1d`` is a slow library call on the CPU)."""
        weight = self.conv.weight[:, 0, :]  # (C, W)
        width = weight.shape[1]
        acc = window[:, width - 1 :] * weight[:, width - 1]
        for j in range(width - 1):
            acc = acc + window[:, j : j + t_len] * weight[:, j]
        return acc if self.conv.bias is None else acc + self.conv.bias

    def fast_step(self, u: torch.Tensor, st: dict[str, torch.Tensor], sctx: StepContext) -> torch.Tensor:
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv.in_channels, self.h], dim=-1)
        conv = st["conv"]  # (B, C, W - 1)
        window = torch.cat([conv.transpose(1, 2), xbc[:, None]], dim=1)  # (B, W, C)
        acc = self._shifted_conv(window, 1)[:, 0]
        if conv.shape[2]:
            conv.copy_(window[:, 1:].transpose(1, 2))
        x, xdt, log_a, b, c = self._scan_inputs(F.silu(acc)[:, None], dt[:, None])
        y, new = ssm_step(st["ssm"], xdt[:, 0], log_a[:, 0], b[:, 0], c[:, 0])
        st["ssm"].copy_(new)
        return self._output(y[:, None], x, z[:, None], u.dtype)[:, 0]

    def fast_prefill(self, u: torch.Tensor, st: dict[str, torch.Tensor], pctx: PrefillContext) -> torch.Tensor:
        t_len = u.shape[1]
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv.in_channels, self.h], dim=-1)
        conv = st["conv"]
        window = torch.cat([conv.transpose(1, 2), xbc], dim=1)  # (B, W - 1 + T, C)
        acc = self._shifted_conv(window, t_len)
        if conv.shape[2]:
            conv.copy_(window[:, window.shape[1] - conv.shape[2] :].transpose(1, 2))
        x, xdt, log_a, b, c = self._scan_inputs(F.silu(acc), dt)
        # the scan's own chunk choice for this length, not the configured one: the result does not
        # depend on it beyond rounding (docs/results/model-speed.md, "Prefill through the routed step")
        y, new = ssm_scan(xdt, log_a, b, c, initial_state=st["ssm"])
        st["ssm"].copy_(new)
        return self._output(y, x, z, u.dtype)

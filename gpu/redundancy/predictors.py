"""Predictors of a layer's attention output from its normalised input, and the deployable gate.

Every predictor maps features ``x`` (``LN1(h_t)``, or a window of them for P-local) to the
per-head outputs ``z_t`` before the output projection; ``o = z W_O + b_O`` is linear in ``z``, so
one fit yields the layer prediction and each head's prediction ``z_h W_O^h``. Errors are
measured in ``o`` space, with the metric ``M = W_O W_O^T`` on ``z``.

* P0, constant: the FIT mean of ``z``.
* P1 / P-local, ridge: closed form from streamed moments (float64), ``lambda`` chosen on VAL from
  VAL moments in the eigenbasis of the FIT covariance, so a grid of ``lambda`` costs one
  eigendecomposition.
* P2, MLP ``d -> 2d -> d`` (GELU), MSE in ``o`` space, Adam, early stopping on VAL.
* Gate (control C6): logistic regression on ``x`` predicting the oracle flag ``1[e_t < tau]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cramkit.errors import CramError

LAMBDA_GRID = tuple(
    10.0**k for k in range(-6, 3)
)  # relative to the mean eigenvalue of the FIT covariance


def lagged(x: torch.Tensor, w: int) -> torch.Tensor:
    """``[x_t, x_{t-1}, ..., x_{t-w}]`` along the last axis, zero before the window start.

    ``x`` is ``(B, T, d)``; the result is ``(B, T, (w + 1) d)``.
    """
    parts = [x]
    for k in range(1, w + 1):
        parts.append(F.pad(x, (0, 0, k, 0))[:, : x.shape[1]])
    return torch.cat(parts, dim=-1)


@dataclass
class Moments:
    """Streamed sums for ridge regression of several targets on one feature matrix (float64)."""

    dim_x: int
    n: int = 0
    sx: torch.Tensor | None = None
    sxx: torch.Tensor | None = None
    sz: dict[str, torch.Tensor] = field(default_factory=dict)
    sxz: dict[str, torch.Tensor] = field(default_factory=dict)
    szz: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(
        self, x: torch.Tensor, targets: dict[str, torch.Tensor], *, second: bool = False
    ) -> None:
        """Add rows ``x`` ``(N, D)`` and each target ``(N, dz)``; ``second`` also sums ``z z^T``."""
        if x.shape[0] == 0:
            return
        x = x.double()
        if self.sx is None:
            self.sx = torch.zeros(self.dim_x, dtype=torch.float64)
            self.sxx = torch.zeros(self.dim_x, self.dim_x, dtype=torch.float64)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sxx += x.T @ x
        for name, z in targets.items():
            z = z.double()
            if name not in self.sz:
                self.sz[name] = torch.zeros(z.shape[1], dtype=torch.float64)
                self.sxz[name] = torch.zeros(self.dim_x, z.shape[1], dtype=torch.float64)
                if second:
                    self.szz[name] = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64)
            self.sz[name] += z.sum(0)
            self.sxz[name] += x.T @ z
            if second:
                self.szz[name] += z.T @ z


class Predictor(ABC):
    """Base: ``predict(x) -> z_hat`` in float32; ``flops_per_token`` counts the folded ``o`` map."""

    name: str = ""
    flops_per_token: float = 0.0

    @abstractmethod
    def predict(self, x: torch.Tensor) -> torch.Tensor: ...


class ConstantPredictor(Predictor):
    def __init__(self, z_mean: torch.Tensor, name: str = "p0"):
        self.name = name
        self.z_mean = z_mean.float()
        self.flops_per_token = 0.0

    def predict(self, x):
        return self.z_mean.expand(*x.shape[:-1], self.z_mean.shape[0])


class RidgePredictor(Predictor):
    def __init__(self, B, x_mean, z_mean, lam, val_rel_err, name):
        self.name = name
        self.B = B.float()
        self.x_mean = x_mean.float()
        self.z_mean = z_mean.float()
        self.lam = float(lam)
        self.val_rel_err = float(val_rel_err)
        d_in, d_out = B.shape
        self.flops_per_token = 2.0 * d_in * d_out  # B W_O folds into one (d_in, d) matrix

    def predict(self, x):
        return (x - self.x_mean) @ self.B + self.z_mean


def fit_ridge(
    fit: Moments, val: Moments, target: str, M: torch.Tensor, *, name: str
) -> RidgePredictor:
    """Ridge of ``target`` on the features, ``lambda`` minimising the VAL error in ``o`` space.

    Error for a prediction ``(x - xbar) B + zbar`` on VAL, with ``a = x - xbar``, ``c = z - zbar``
    (FIT means), in the eigenbasis ``Q, s`` of the FIT covariance, ``B = Q diag(L) G``,
    ``G = Q^T S_ac(FIT)``, ``L_i = 1 / (s_i + lambda)``:
    ``err = tr(M S_cc) - 2 sum_i L_i (S'_ac M G^T)_ii + L^T (S'_aa * (G M G^T)) L``
    with the VAL moments rotated, ``S'_aa = Q^T S_aa Q``, ``S'_ac = Q^T S_ac``.
    """
    if fit.n < 2 or val.n < 1:
        raise CramError(
            f"too few tokens to fit a ridge predictor (FIT {fit.n}, VAL {val.n}); give more text"
        )
    n = fit.n
    xm = fit.sx / n
    zm = fit.sz[target] / n
    sxx_c = fit.sxx - n * torch.outer(xm, xm)
    sxz_c = fit.sxz[target] - n * torch.outer(xm, zm)
    s, Q = torch.linalg.eigh(sxx_c)
    s = s.clamp_min(0.0)
    G = Q.T @ sxz_c  # (D, dz)
    nv = val.n
    svx, svz = val.sx, val.sz[target]
    saa = val.sxx - torch.outer(svx, xm) - torch.outer(xm, svx) + nv * torch.outer(xm, xm)
    sac = val.sxz[target] - torch.outer(svx, zm) - torch.outer(xm, svz) + nv * torch.outer(xm, zm)
    scc = val.szz[target] - torch.outer(svz, zm) - torch.outer(zm, svz) + nv * torch.outer(zm, zm)
    M = M.double()
    base = float(torch.trace(M @ scc))
    saa_r = Q.T @ saa @ Q
    sac_r = Q.T @ sac
    lin = ((sac_r @ M) * G).sum(1)  # diag(S'_ac M G^T)
    quad = saa_r * (G @ M @ G.T)
    scale = float(s.mean()) if float(s.mean()) > 0 else 1.0
    best = None
    for rel in LAMBDA_GRID:
        L = 1.0 / (s + rel * scale)
        err = base - 2.0 * float(L @ lin) + float(L @ quad @ L)
        if best is None or err < best[1]:
            best = (rel * scale, err)
    lam, err = best
    B = Q @ (G / (s + lam)[:, None])
    rel_err = err / base if base > 0 else float("nan")
    return RidgePredictor(B, xm, zm, lam, rel_err, name)


class MLPPredictor(Predictor, nn.Module):
    """P2: ``d -> 2d -> d`` with GELU, starting at the constant predictor."""

    def __init__(self, d_in: int, d_out: int, x_mean, x_std, z_mean, name: str = "p2"):
        nn.Module.__init__(self)
        self.name = name
        self.fc = nn.Linear(d_in, 2 * d_in)
        self.out = nn.Linear(2 * d_in, d_out)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(z_mean.float())
        self.register_buffer("x_mean", x_mean.float())
        self.register_buffer("x_std", x_std.float())
        self.flops_per_token = (
            2.0 * d_in * 2 * d_in + 2.0 * 2 * d_in * d_out
        )  # 8 d^2 when d_in = d_out
        self.epochs_run = 0
        self.val_rel_err = float("nan")

    def forward(self, x):
        return self.out(F.gelu(self.fc((x - self.x_mean) / self.x_std)))

    @torch.no_grad()
    def predict(self, x):
        return self.forward(x.float())


def train_mlp(
    x_fit: torch.Tensor,
    z_fit: torch.Tensor,
    x_val: torch.Tensor,
    z_val: torch.Tensor,
    w_o: torch.Tensor,
    *,
    n_heads: int,
    max_epochs: int,
    patience: int = 3,
    lr: float = 1e-3,
    batch: int = 256,
    seed: int = 0,
) -> MLPPredictor:
    """Fit P2, keeping the best VAL epoch.

    The loss is the sum over heads of each head's error in ``o`` space,
    ``sum_h |(z_hat_h - z_h) W_O^h|^2``. A loss on the layer output alone would let errors of
    different heads cancel through an ill-conditioned ``W_O`` and make the per-head errors
    meaningless; this one bounds the layer error (by H times itself) and keeps each head honest.
    """
    if x_fit.shape[0] < 2 or x_val.shape[0] < 1:
        raise CramError("too few tokens to train the MLP predictor; give more text or drop p2")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    std = x_fit.std(0).clamp_min(1e-6)
    mlp = MLPPredictor(x_fit.shape[1], z_fit.shape[1], x_fit.mean(0), std, z_fit.mean(0))
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    d_z = z_fit.shape[1]
    hd = d_z // n_heads
    w_h = w_o.detach().float().reshape(n_heads, hd, -1)  # (H, hd, d): rows of W_O per head

    def head_err(u: torch.Tensor) -> torch.Tensor:  # (N, d_z) -> (N,)
        return torch.einsum("nhi,hid->nhd", u.view(-1, n_heads, hd), w_h).pow(2).sum((1, 2))

    val_base = float(head_err(z_val - z_fit.mean(0)).sum())

    def val_err() -> float:
        with torch.no_grad():
            return float(head_err(mlp(x_val) - z_val).sum())

    best_err, best_state, bad = val_err(), {k: v.clone() for k, v in mlp.state_dict().items()}, 0
    for epoch in range(max_epochs):
        perm = torch.randperm(x_fit.shape[0], generator=gen)
        with torch.enable_grad():
            for i in range(0, len(perm), batch):
                idx = perm[i : i + batch]
                loss = head_err(mlp(x_fit[idx]) - z_fit[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        err = val_err()
        mlp.epochs_run = epoch + 1
        if err < best_err:
            best_err, best_state, bad = err, {k: v.clone() for k, v in mlp.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    mlp.load_state_dict(best_state)
    mlp.val_rel_err = best_err / val_base if val_base > 0 else float("nan")
    mlp.eval()
    return mlp


class Gate:
    """Logistic regression ``g(x) = sigmoid(w . (x - mu) / sd + b)`` (control C6)."""

    def __init__(self, w, b, mu, sd, constant: float | None = None):
        self.w, self.b, self.mu, self.sd = w, b, mu, sd
        self.constant = constant
        self.flops_per_token = 2.0 * w.shape[0]

    @torch.no_grad()
    def proba(self, x: torch.Tensor) -> torch.Tensor:
        if self.constant is not None:
            return torch.full(x.shape[:-1], self.constant)
        return torch.sigmoid(((x.float() - self.mu) / self.sd) @ self.w + self.b)


def train_gate(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, iters: int = 100) -> Gate:
    """Fit the gate on features ``x`` ``(N, d)`` and 0/1 labels ``y`` ``(N,)`` with L-BFGS."""
    y = y.float()
    if x.shape[0] == 0:
        return Gate(torch.zeros(x.shape[1]), 0.0, None, None, constant=0.0)
    rate = float(y.mean())
    if rate in (0.0, 1.0):  # one class only: the gate is that constant
        return Gate(torch.zeros(x.shape[1]), 0.0, None, None, constant=rate)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.tensor(float(np.log(rate / (1 - rate))), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Gate(w.detach(), float(b.detach()), mu, sd)

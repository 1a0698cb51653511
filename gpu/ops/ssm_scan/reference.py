"""The float64 definition of the selective SSM scan.

For every batch row and head, with a state ``S`` of shape ``[N, P]``::

    S_t = exp(log_a_t) * S_{t-1} + b_t x_t^T        (outer product, N x P)
    y_t = c_t^T S_t                                 (contract over N, gives P values)

``S_{-1}`` is the initial state (zeros when none is given) and the final state is ``S_{T-1}``.
"""

from __future__ import annotations

import torch


def ssm_scan_reference(
    x: torch.Tensor,
    log_a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential float64 scan, one time step at a time.

    Shapes: x ``[B, T, H, P]``, log_a ``[B, T, H]``, b and c ``[B, T, H, N]``, initial_state
    ``[B, H, N, P]``. Returns ``y`` ``[B, T, H, P]`` in the dtype of ``x`` and the final state
    ``[B, H, N, P]``, both in the dtype of ``x``.
    """
    bsz, t_len, h, p = x.shape
    n = b.shape[-1]
    xd, ad, bd, cd = x.double(), log_a.double(), b.double(), c.double()
    if initial_state is None:
        state = torch.zeros(bsz, h, n, p, dtype=torch.float64, device=x.device)
    else:
        state = initial_state.double()
    ys = []
    for t in range(t_len):
        decay = torch.exp(ad[:, t])[:, :, None, None]  # (B, H, 1, 1)
        state = decay * state + bd[:, t, :, :, None] * xd[:, t, :, None, :]  # (B, H, N, P)
        ys.append(torch.einsum("bhn,bhnp->bhp", cd[:, t], state))
    y = torch.stack(ys, dim=1) if ys else xd.new_zeros(bsz, 0, h, p)
    return y.to(x.dtype), state.to(x.dtype)


def ssm_step_reference(
    state: torch.Tensor, x: torch.Tensor, log_a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the scan in float64: ``S' = exp(log_a) S + b x^T``, ``y = c^T S'``.

    Shapes: state ``[B, H, N, P]``, x ``[B, H, P]``, log_a ``[B, H]``, b and c ``[B, H, N]``.
    Returns ``(y [B, H, P], new_state [B, H, N, P])`` in the dtypes of ``x`` and ``state``.
    """
    sd, xd, ad, bd, cd = state.double(), x.double(), log_a.double(), b.double(), c.double()
    new = torch.exp(ad)[:, :, None, None] * sd + bd[:, :, :, None] * xd[:, :, None, :]
    y = torch.einsum("bhn,bhnp->bhp", cd, new)
    return y.to(x.dtype), new.to(state.dtype)

"""Recall tokens: the positions where attention should matter (docs/tasks.md, "Recall tokens").

A target position t of a sequence (token ``x[t]``, target ``y[t]``, the next token) is an
*associative-recall hit* when the bigram ``(x[t], y[t])`` already occurred earlier in the same
context: some s < t has ``x[s] == x[t]`` and ``y[s] == y[t]`` (with next-token targets, ``y[s] =
x[s+1]``, so the earlier bigram lies wholly inside what the model has read). This is the definition
of the Zoology study (Arora et al. 2023, "Zoology: measuring and improving recall in efficient
language models"), where the gap between gated convolutions and attention is almost all on such
tokens. A position without a target (-1) is never a hit.

:func:`recall_hits` is vectorised (one ``unique`` and one ``scatter_reduce`` over the batch);
:func:`recall_hits_reference` is the float-free definition in plain Python loops that the tests
compare it with. :func:`recall_metrics` is the per-class table of the text evaluation: loss,
bits per byte and attention use on recall hits and on the other positions.
"""

from __future__ import annotations

import math
from typing import Any

import torch

CLASSES = ("recall", "other")


def recall_hits(tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: whether each target position is an associative-recall hit (see the module)."""
    if tokens.shape != targets.shape or tokens.dim() != 2:
        raise ValueError("tokens and targets must be (B, T) tensors of the same shape")
    b, t = tokens.shape
    if tokens.numel() == 0:
        return torch.zeros(b, t, dtype=torch.bool, device=tokens.device)
    x, y = tokens.long(), targets.long()
    valid = y >= 0
    # one id per (row, bigram): equal ids <=> same row and same bigram
    pair = torch.stack([torch.arange(b, device=x.device)[:, None].expand(b, t), x, y.clamp_min(0)], -1).reshape(-1, 3)
    _, inverse = torch.unique(pair, dim=0, return_inverse=True)
    pos = torch.arange(t, device=x.device).expand(b, t).reshape(-1)
    big = torch.full_like(pos, t)
    first = torch.full((int(inverse.max()) + 1,), t, dtype=pos.dtype, device=x.device)
    first = first.scatter_reduce(0, inverse, torch.where(valid.reshape(-1), pos, big), reduce="amin")
    return (first[inverse] < pos).view(b, t) & valid


def recall_hits_reference(tokens: list[list[int]], targets: list[list[int]]) -> list[list[bool]]:
    """The definition, with sets and loops (no floats, no tensors)."""
    out = []
    for xs, ys in zip(tokens, targets):
        seen: set[tuple[int, int]] = set()
        row = []
        for x, y in zip(xs, ys):
            if y < 0:
                row.append(False)
                continue
            row.append((x, y) in seen)
            seen.add((x, y))
        out.append(row)
    return out


def _mean(x: torch.Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


def _bpb(loss: torch.Tensor, nbytes: torch.Tensor) -> float | None:
    total = float(nbytes.double().sum())
    return float(loss.double().sum()) / math.log(2) / total if total > 0 else None


def recall_metrics(hits: torch.Tensor, loss: torch.Tensor, nbytes: torch.Tensor,
                   route: torch.Tensor | None) -> dict[str, Any]:  # fmt: skip
    """Flat metrics by class: ``recall_share`` (the fraction of positions that are hits),
    ``val_loss_recall`` / ``val_loss_other`` (nats per token), ``bpb_recall`` / ``bpb_other``
    (bits per UTF-8 byte of the targets), and with a route ``rho_recall`` / ``rho_other`` (the
    routed fraction in each class) and ``attn_share_recall`` (the share of all routed positions
    that are hits). ``hits``, ``loss``, ``nbytes`` (bytes of each target) and ``route`` are
    tensors of one shape; a class with no position gives None."""
    m: dict[str, Any] = {"recall_share": _mean(hits.float())}
    for name, sel in (("recall", hits), ("other", ~hits)):
        m[f"val_loss_{name}"] = _mean(loss[sel])
        m[f"bpb_{name}"] = _bpb(loss[sel], nbytes[sel])
    if route is not None:
        for name, sel in (("recall", hits), ("other", ~hits)):
            m[f"rho_{name}"] = _mean(route[sel])
        routed = float(route.double().sum())
        m["attn_share_recall"] = float(route[hits].double().sum()) / routed if routed > 0 else None
    return m


def recall_table(hits: torch.Tensor, loss: torch.Tensor, nbytes: torch.Tensor,
                 route: torch.Tensor | None) -> list[dict[str, Any]]:  # fmt: skip
    """The same numbers as rows ``{class, n, share, loss, bpb, rho, attn_share}`` (``cram eval``)."""
    n_all = hits.numel()
    routed = float(route.double().sum()) if route is not None else 0.0
    rows = []
    for name, sel in (("recall", hits), ("other", ~hits)):
        n = int(sel.sum())
        rows.append({"class": name, "n": n, "share": n / n_all if n_all else None, "loss": _mean(loss[sel]),
                     "bpb": _bpb(loss[sel], nbytes[sel]), "rho": _mean(route[sel]) if route is not None else None,
                     "attn_share": float(route[sel].double().sum()) / routed if routed > 0 else None})  # fmt: skip
    return rows


def gain_metrics(gain: torch.Tensor, route: torch.Tensor, hits: torch.Tensor, delta: float) -> dict[str, Any]:
    """Attention use against where it helps: ``gain`` (nats, per position, e.g.
    :func:`cramkit.gpu.tasks.text.counterfactual_gain`), ``route`` (routed fraction per position),
    ``hits`` (recall tokens), tensors of one shape. ``need_share``: the share of positions with
    gain > ``delta``; ``gain_precision``: the share of the attention spent on them; ``gain_recall``:
    the routed fraction among them; ``gain_attended`` / ``gain_skipped``: the mean gain weighted by
    attention and by its absence; ``need_share_recall`` / ``need_share_other``: ``need_share``
    among recall tokens and among the rest. A class with no position gives None."""
    need = (gain > delta).double()
    r, g = route.double(), gain.double()
    routed, skipped = float(r.sum()), float((1 - r).sum())
    return {
        "need_share": _mean(need), "gain_mean": _mean(g),
        "gain_precision": float((r * need).sum()) / routed if routed > 0 else None,
        "gain_recall": float((r * need).sum()) / float(need.sum()) if float(need.sum()) > 0 else None,
        "gain_attended": float((r * g).sum()) / routed if routed > 0 else None,
        "gain_skipped": float(((1 - r) * g).sum()) / skipped if skipped > 0 else None,
        "need_share_recall": _mean(need[hits]), "need_share_other": _mean(need[~hits]),
    }  # fmt: skip

"""Scoring a model on SRCD sequences (docs/srcd.md): :func:`evaluate` runs a model on given
(cfg, world, seeds) with the router in eval mode and returns per-query attend decisions,
correctness and labels, plus the aggregate metrics (acc_r, acc_e, acc, rho_q, rho_all, phi, Pi_A,
router precision/recall, ...); :func:`time_routed_path` times the routed forward against the dense one.

The prediction at a query slot is the argmax over value tokens; the type labels are used for
scoring only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cramkit.gpu.model.network import CramModel, attention_flops
from cramkit.gpu.tasks.srcd import to_tensors
from cramkit.sim.srcd import SRCDConfig, World, generate


@dataclass
class EvalResult:
    """Per-query records (shape (S, n_q)) and the aggregate metrics of one evaluation."""

    attend: np.ndarray  # attended by the router (any CRAM layer) at the query slot
    correct: np.ndarray
    recurring: np.ndarray  # type labels: scoring only
    rank: np.ndarray  # pool rank, -1 for episodic
    metrics: dict[str, Any] = field(default_factory=dict)


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


@torch.no_grad()
def evaluate(
    model: CramModel,
    scfg: SRCDConfig,
    world: World,
    seeds: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    router_seed: int = 12345,
) -> EvalResult:
    """Evaluate ``model`` on the sequences ``generate(scfg, world, seeds)`` (router in eval mode)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(router_seed)
    lo = scfg.value_offset
    d = model.cfg.d_model
    n_layers = max(1, len(model.cram_layers))
    att, cor, rec, rnk = [], [], [], []
    tot = {"A": 0.0, "Aq": 0.0, "pi": 0.0, "f_route": 0.0, "f_all": 0.0, "z": 0.0, "r": 0.0, "rz": 0.0,
           "dist": 0.0, "dist_n": 0.0, "skipped": 0.0}  # fmt: skip
    costs = model_costs(model)
    n_seq = 0
    for i in range(0, len(seeds), batch_size):
        raw = generate(scfg, world, seeds[i : i + batch_size])
        tb = to_tensors(scfg, raw, device)
        out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=gen, oracle=True)
        pred = out.logits.argmax(-1) + lo  # rows in (batch, position) order
        bsz, n_q = raw.query_pos.shape
        # rows of out.logits follow targets' nonzero order: sorted by (b, position); map to query order
        order = np.argsort(raw.query_pos, axis=1, kind="stable")
        inv = np.argsort(order, axis=1)
        pred_sorted = pred.view(bsz, n_q).cpu().numpy()
        pred_q = np.take_along_axis(pred_sorted, inv, axis=1)
        cor.append(pred_q == raw.query_target)
        rec.append(raw.query_recurring.copy())
        rnk.append(raw.query_rank.copy())
        qpos = torch.from_numpy(raw.query_pos).to(device)
        attended = torch.zeros(bsz, n_q, dtype=torch.bool, device=device)
        rec_t = torch.from_numpy(raw.query_recurring).to(device)
        for tr in out.traces:
            route = tr.route
            attended |= route.gather(1, qpos)
            tot["A"] += float(route.sum())
            tot["Aq"] += float(route.gather(1, qpos).sum())
            pos = torch.arange(1, scfg.n + 1, device=device, dtype=torch.float64)
            tot["pi"] += float((route.double() * pos).sum())
            fr, fa = attention_flops(route, d)
            tot["f_route"] += fr
            tot["skipped"] += float((~route).sum())
            tot["f_all"] += fa
            if tr.z is not None:
                # z / distill are in (b, position) order; bring to query order
                z = tr.z.view(bsz, n_q).cpu().numpy()
                z = torch.from_numpy(np.take_along_axis(z, inv, axis=1)).to(device)
                r = tr.router_route.gather(1, qpos)
                tot["z"] += float(z.sum())
                tot["r"] += float(r.sum())
                tot["rz"] += float((r & z).sum())
                dist = tr.distill.view(bsz, n_q).cpu().numpy()
                dist = torch.from_numpy(np.take_along_axis(dist, inv, axis=1)).to(device)
                ok = rec_t & torch.isfinite(dist)
                tot["dist"] += float(dist[ok].sum())
                tot["dist_n"] += float(ok.sum())
        att.append(attended.cpu().numpy())
        n_seq += bsz
    if was_training:
        model.train()
    attend, correct = np.concatenate(att), np.concatenate(cor)
    recurring, rank = np.concatenate(rec), np.concatenate(rnk)
    res = EvalResult(attend, correct, recurring, rank)
    res.metrics = summarize(res, scfg, tot, n_seq, n_layers, has_attention=bool(model.cram_layers))
    # whole-model FLOP fraction: the routed model against the same stack attending everywhere
    # (without evaluating the semantic memory or the router)
    other = costs["other"] * n_seq * scfg.n
    routed = other + tot["f_route"]
    if model.rcfg.name in ("cram", "learned-static"):
        routed += costs["router"] * n_seq * scfg.n * n_layers
    if model.rcfg.name != "none":
        routed += costs["memory"] * tot["skipped"]
    res.metrics["phi_model"] = _ratio(routed, other + tot["f_all"])
    return res


def model_costs(model: CramModel) -> dict[str, float]:
    """Matmul FLOPs per position (2 per weight): everything but the CRAM attention projections
    ("other": SSM blocks, MLPs, head), one semantic memory, one router."""
    att, mem, rout = 0, 0, 0
    for layer in model.cram_layers:
        att += sum(p.numel() for m in (layer.q, layer.k, layer.k_prev, layer.v, layer.o) for p in m.parameters())
        mem = sum(p.numel() for p in layer.memory.parameters())
        rout = sum(p.numel() for p in layer.router.parameters())
    n_layers = max(1, len(model.cram_layers))
    blocks = sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2)
    other = blocks - att - n_layers * (mem + rout) * (1 if model.cram_layers else 0) + model.head.weight.numel()
    return {"other": 2.0 * other, "memory": 2.0 * mem, "router": 2.0 * rout}


def summarize(res: EvalResult, scfg: SRCDConfig, tot: dict, n_seq: int, n_layers: int, *, has_attention: bool) -> dict:
    r, c, a = res.recurring, res.correct, res.attend
    n_rec, n_epi = int(r.sum()), int((~r).sum())
    by_rank = []
    for j in range(scfg.P):
        sel = res.rank == j
        by_rank.append(None if not sel.any() else float(c[sel].mean()))
    nq_total = n_seq * scfg.n_q * n_layers
    m = {
        "acc_r": _ratio(float(c[r].sum()), n_rec),
        "acc_e": _ratio(float(c[~r].sum()), n_epi),
        "acc": float(c.mean()) if c.size else None,
        "rho_q": _ratio(tot["Aq"], nq_total) if has_attention else 0.0,
        "rho_all": _ratio(tot["A"], n_seq * scfg.n * n_layers) if has_attention else 0.0,
        "phi": _ratio(tot["f_route"], tot["f_all"]) if has_attention else 0.0,
        "pi_a": tot["pi"] / (n_seq * n_layers) if has_attention else 0.0,
        "rec_attended": int(a[r].sum()),
        "rec_total": n_rec,
        "epi_attended": int(a[~r].sum()),
        "epi_total": n_epi,
        "E_rec": _ratio(float(a[r].sum()), n_rec),
        "router_precision": _ratio(tot["rz"], tot["r"]),
        "router_recall": _ratio(tot["rz"], tot["z"]),
        "distill_err": _ratio(tot["dist"], tot["dist_n"]),
        "floor_rho_q": scfg.m_e / scfg.n_q,
        "n_sequences": n_seq,
        "acc_r_by_rank": by_rank,
    }
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}


#: sequences timed by :func:`time_routed_path` (a subset of the probe set keeps eval short)
TIMED_SEQUENCES = 256


@torch.no_grad()
def time_routed_path(model: CramModel, scfg: SRCDConfig, world: World, seeds: np.ndarray, *,
                     repeats: int = 3, batch_size: int = 128, router_seed: int = 12345) -> dict[str, Any]:
    """Wall time of the model's own routed forward pass (router in eval mode, no oracle pass)
    against the same model with every position routed, on the same sequences, interleaved repeat
    by repeat in one process; milliseconds per sequence (medians). This is what the analytic
    ``phi`` predicts: ``speedup_measured`` = dense time / routed time."""
    import time

    was_training = model.training
    model.eval()
    seeds = seeds[:TIMED_SEQUENCES]
    batches = [to_tensors(scfg, generate(scfg, world, seeds[i : i + batch_size]), next(model.parameters()).device)
               for i in range(0, len(seeds), batch_size)]  # fmt: skip

    def routed() -> None:
        gen = torch.Generator().manual_seed(router_seed)
        for tb in batches:
            model(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=gen)

    def dense() -> None:
        for tb in batches:
            model(tb.tokens, tb.targets, query_mask=tb.query_mask, route=torch.ones_like(tb.tokens, dtype=torch.bool))

    times: dict[str, list[float]] = {"routed": [], "dense": []}
    try:
        routed(), dense()  # warm-up
        for _ in range(repeats):
            for name, fn in (("routed", routed), ("dense", dense)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    ms = {k: 1e3 * float(np.median(v)) / len(seeds) for k, v in times.items()}
    return {"ms_per_seq_routed": ms["routed"], "ms_per_seq_dense": ms["dense"],
            "speedup_measured": ms["dense"] / ms["routed"] if ms["routed"] > 0 else None,
            "timed_sequences": int(len(seeds)), "timed_threads": torch.get_num_threads()}  # fmt: skip

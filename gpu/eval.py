"""Evaluation of CRAM checkpoints on SRCD splits, as library functions.

- :func:`load_checkpoint` rebuilds a model from a checkpoint (architecture from the checkpoint).
- :func:`split_data` rebuilds the pool of a split (IID, FRESH, TRANSFER(s), CONFLICT(s), STRUCT)
  from the SRCD config and world seed stored in the checkpoint.
- :func:`evaluate` runs a model on given (cfg, world, seeds) with the router in eval mode and
  returns per-query attend decisions, correctness and labels, plus the aggregate metrics
  (acc_r, acc_e, acc, rho_q, rho_all, phi, Pi_A, router precision/recall, ...).
- :func:`evaluate_checkpoints` is what ``cram eval`` prints: one row per checkpoint and the
  accuracy-vs-attention (Pareto) table.

Scoring follows SPEC §3: the prediction at a query slot is the argmax over value tokens; the type
labels are used for scoring only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramkit.gpu import config as C
from cramkit.gpu.checkpoint import load_model_state, read_checkpoint
from cramkit.gpu.data import CONFLICT_SEED, FRESH_SEED, TRANSFER_SEED, to_tensors
from cramkit.gpu.model import CramModel, attention_flops, build_model
from cramkit.sim.srcd import SRCDConfig, World, derive_world, generate, make_world, split_seeds
from cramkit.errors import CramError

ARCH = "cram-hybrid"
SPLIT_HELP = "iid, fresh, transfer:S, conflict:S or struct (S = overlap in [0, 1])"


@dataclass
class LoadedCheckpoint:
    path: Path
    model: CramModel
    cfg: C.RunConfig
    meta: dict[str, Any]


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint file or run folder; one clear :class:`CramError` for anything wrong."""
    tensors, meta = read_checkpoint(path)
    if meta.get("arch") not in (ARCH, "gpt-bytes"):
        raise CramError(f"{path} is a checkpoint of architecture {meta.get('arch')!r}, not a cram model")
    try:
        cfg = C.from_dict(meta["config"])
    except (KeyError, TypeError):
        raise CramError(f"checkpoint {path} has no valid config in its metadata") from None
    model = build_model(cfg)
    load_model_state(model, tensors, meta, path)
    model.to(device).eval()
    p = Path(path)
    return LoadedCheckpoint(p / "last.safetensors" if p.is_dir() else p, model, cfg, meta)


def parse_split(split: str) -> tuple[str, float]:
    """'iid' -> ('iid', 0); 'transfer:0.5' -> ('transfer', 0.5)."""
    name, _, arg = split.partition(":")
    if name in ("iid", "fresh", "struct") and not arg:
        return name, 0.0
    if name in ("transfer", "conflict") and arg:
        try:
            s = float(arg)
        except ValueError:
            s = float("nan")
        if not (0.0 <= s <= 1.0):
            raise CramError(f"split {split!r}: the overlap S must be a number in [0, 1]")
        return name, s
    raise CramError(f"unknown split {split!r}; use {SPLIT_HELP}")


def struct_config(scfg: SRCDConfig) -> SRCDConfig:
    """The STRUCT split: twice the length (so f and f_e halve) and uniform recurrence (alpha = 0),
    or alpha = 1 when training already used alpha = 0."""
    return scfg.replace(n=2 * scfg.n, alpha=0.0 if scfg.alpha != 0 else 1.0)


def split_data(cfg: C.RunConfig, split: str, count: int) -> tuple[SRCDConfig, World, np.ndarray]:
    """(SRCD config, world, probe seeds) of a split, rebuilt from the run's config and world seed."""
    name, s = parse_split(split)
    scfg = cfg.srcd_config()
    world = make_world(scfg, seed=cfg.srcd.world_seed)
    if name == "fresh":
        world = derive_world(world, scfg, "fresh", seed=FRESH_SEED)
    elif name == "transfer":
        world = derive_world(world, scfg, "transfer", s=s, seed=TRANSFER_SEED)
    elif name == "conflict":
        world = derive_world(world, scfg, "conflict", s=s, seed=CONFLICT_SEED)
    elif name == "struct":
        scfg = struct_config(scfg)
        if cfg.model.max_len and cfg.model.max_len < scfg.n:
            raise CramError(
                f"the struct split doubles n to {scfg.n}, beyond this model's position table "
                f"(model.max_len = {cfg.model.max_len})"
            )
        world = make_world(scfg, seed=cfg.srcd.world_seed)  # same pool keys and values, new probs
    return scfg, world, split_seeds(name, count, start=0)


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


def evaluate_checkpoint(path: str | Path, split: str = "iid", *, sequences: int = 1024) -> dict[str, Any]:
    """Load a checkpoint and evaluate it on a split; a flat dict of metrics with provenance."""
    ck = load_checkpoint(path)
    if ck.cfg.task != "srcd":
        raise CramError(f"{path} is a {ck.cfg.task!r} checkpoint; cram eval evaluates SRCD checkpoints")
    if sequences < 1:
        raise CramError("the number of evaluation sequences must be >= 1")
    scfg, world, seeds = split_data(ck.cfg, split, sequences)
    res = evaluate(ck.model, scfg, world, seeds)
    out = {"checkpoint": str(ck.path), "router": ck.cfg.router.name, "step": ck.meta.get("step"),
           "split": split, "s_eff": world.s_eff if world.kind != "base" else None, **res.metrics}  # fmt: skip
    return out


def pareto_front(rows: list[dict[str, Any]], x: str = "rho_q", y: str = "acc") -> list[int]:
    """Indices of rows not dominated in (lower x, higher y), sorted by x."""
    ok = [i for i, r in enumerate(rows) if r.get(x) is not None and r.get(y) is not None]
    front = []
    for i in ok:
        dominated = any(
            rows[j][x] <= rows[i][x] and rows[j][y] >= rows[i][y] and (rows[j][x] < rows[i][x] or rows[j][y] > rows[i][y])
            for j in ok
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: rows[i][x])


def evaluate_checkpoints(paths: list[str | Path], split: str = "iid", *, sequences: int = 1024) -> dict[str, Any]:
    """What ``cram eval`` reports: one row per checkpoint and the Pareto front over them."""
    if not paths:
        raise CramError("give at least one checkpoint")
    parse_split(split)
    rows = [evaluate_checkpoint(p, split, sequences=sequences) for p in paths]
    return {"split": split, "rows": rows, "pareto": pareto_front(rows) if len(rows) > 1 else []}

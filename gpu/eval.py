"""Evaluation of CRAM checkpoints on SRCD splits, as library functions.

- :func:`load_checkpoint` rebuilds a model from a checkpoint (architecture from the checkpoint).
- :func:`split_data` rebuilds the pool of a split (IID, FRESH, TRANSFER(s), CONFLICT(s), STRUCT)
  from the SRCD config and world seed stored in the checkpoint.
- :func:`evaluate` runs a model on given (cfg, world, seeds) with the router in eval mode and
  returns per-query attend decisions, correctness and labels, plus the aggregate metrics
  (acc_r, acc_e, acc, rho_q, rho_all, phi, Pi_A, router precision/recall, ...).
- :func:`evaluate_checkpoints` is what ``cram eval`` prints: one row per checkpoint and the
  accuracy-vs-attention (Pareto) table; with ``data=FILE`` every checkpoint is scored on a token
  file instead (docs/tasks.md): accuracy on its target positions, attention use and a per-label
  breakdown.
- :func:`run` is the command contract: ``run(EvalSettings(...), progress) -> EvalReport``.

Scoring follows docs/srcd.md: the prediction at a query slot is the argmax over value tokens; the
type labels are used for scoring only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramkit import runs as R
from cramkit.errors import CramError
from cramkit.gpu import config as C
from cramkit.gpu.build import BUDGET_KEY, N_Q_KEY, VOCAB_KEY, build_run_model, check_vocab_matches
from cramkit.gpu.checkpoint import load_model_state, read_checkpoint
from cramkit.gpu.model import CramModel, attention_flops
from cramkit.gpu.tasks.srcd import CONFLICT_SEED, FRESH_SEED, TRANSFER_SEED, to_tensors
from cramkit.io import save_figure
from cramkit.progress import Progress, track
from cramkit.result import Result, render_text
from cramkit.sim.srcd import SRCDConfig, World, derive_world, generate, make_world, split_seeds

ARCH = "cram-hybrid"
TEXT_ARCH = "gpt-bytes"
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
    if meta.get("arch") not in (ARCH, TEXT_ARCH):
        raise CramError(f"{path} is a checkpoint of architecture {meta.get('arch')!r}, not a cram model")
    try:
        cfg = C.from_dict(meta["config"])
    except (KeyError, TypeError):
        raise CramError(f"checkpoint {path} has no valid config in its metadata") from None
    model = checkpoint_model(cfg, tensors, meta)
    check_vocab_matches(model, tensors, meta, path)
    load_model_state(model, tensors, meta, path)
    model.to(device).eval()
    p = Path(path)
    return LoadedCheckpoint(R.last_checkpoint(p) if p.is_dir() else p, model, cfg, meta)


def _meta_int(meta: dict[str, Any], key: str) -> int | None:
    v = meta.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def checkpoint_model(cfg: C.RunConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> CramModel:
    """The (untrained) model a checkpoint's weights belong to: the run config's architecture with
    the vocabulary, target range, query count and budget the checkpoint recorded (older
    checkpoints: the ones the config implies)."""
    from cramkit.gpu.build import build_model, checkpoint_vocab

    vocab, n_q, budget = _meta_int(meta, VOCAB_KEY), _meta_int(meta, N_Q_KEY), meta.get(BUDGET_KEY)
    if vocab is None or n_q is None or not isinstance(budget, (int, float)) or isinstance(budget, bool):
        if cfg.task == "tokens" and vocab is None:
            vocab = checkpoint_vocab(tensors, meta)
        return build_run_model(cfg, vocab, n_q)
    tr = meta.get("target_range")
    if tr is not None and not (isinstance(tr, list) and len(tr) == 2 and all(isinstance(v, int) for v in tr)):
        raise CramError("checkpoint has corrupt model metadata (target_range)")
    return build_model(cfg.model, cfg.router, vocab, target_range=tuple(tr) if tr else None, n_targets=n_q,
                       default_budget=float(budget))  # fmt: skip


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
    world = make_world(scfg, seed=cfg.train.world_seed)
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
        world = make_world(scfg, seed=cfg.train.world_seed)  # same pool keys and values, new probs
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


def evaluate_checkpoint(path: str | Path, split: str = "iid", *, sequences: int = 1024) -> dict[str, Any]:
    """Load a checkpoint and evaluate it on a split; a flat dict of metrics with provenance."""
    ck = load_checkpoint(path)
    if ck.cfg.task != "srcd":
        raise CramError(f"{path} is a {ck.cfg.task!r} checkpoint; cram eval evaluates SRCD checkpoints "
                        "on a split, or any checkpoint on a token file with --data FILE")  # fmt: skip
    if sequences < 1:
        raise CramError("the number of evaluation sequences must be >= 1")
    scfg, world, seeds = split_data(ck.cfg, split, sequences)
    res = evaluate(ck.model, scfg, world, seeds)
    out = {"checkpoint": str(ck.path), "router": ck.cfg.router.name, "step": ck.meta.get("step"),
           "split": split, "s_eff": world.s_eff if world.kind != "base" else None, **res.metrics,
           **time_routed_path(ck.model, scfg, world, seeds)}  # fmt: skip
    return out


def evaluate_checkpoint_on_tokens(path: str | Path, data, *, sequences: int | None = None) -> dict[str, Any]:
    """Score a checkpoint on a token file (a :class:`cramkit.gpu.tasks.TokenData`): its validation
    sequences when the file has a ``split`` field, else every sequence (at most ``sequences``)."""
    from cramkit.gpu.tasks.tokens import check_vocab, evaluate_tokens

    ck = load_checkpoint(path)
    check_vocab(data, ck.model.vocab_size)
    if ck.model.target_range is not None:
        lo, hi = ck.model.target_range
        tg = data.targets[data.targets >= 0]
        if tg.numel() and (int(tg.min()) < lo or int(tg.max()) >= hi):
            raise CramError(f"token file {data.path}, field targets: this model predicts only token ids in [{lo}, {hi})")
    idx = data.indices(1) if data.has_split else torch.arange(len(data.tokens))
    if sequences is not None:
        idx = idx[:sequences]
    metrics = evaluate_tokens(ck.model, data, idx)
    return {"checkpoint": str(ck.path), "router": ck.cfg.router.name, "step": ck.meta.get("step"),
            "data": data.path, **metrics}  # fmt: skip


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


def evaluate_checkpoints(paths: list[str | Path], split: str = "iid", *, sequences: int = 1024,
                         data: str | Path | None = None, progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """What ``cram eval`` reports: one row per checkpoint and the Pareto front over them (on an
    SRCD split, or on the token file ``data``)."""
    if not paths:
        raise CramError("give at least one checkpoint")
    if data is not None:
        from cramkit.gpu.tasks.tokens import load_token_file

        tokens = load_token_file(data)
        rows = [evaluate_checkpoint_on_tokens(p, tokens, sequences=sequences)
                for p in track(paths, progress, "checkpoints")]  # fmt: skip
        front = pareto_front(rows, x="rho_target") if len(rows) > 1 else []
        return {"data": str(data), "rows": rows, "pareto": front}
    parse_split(split)
    rows = [evaluate_checkpoint(p, split, sequences=sequences) for p in track(paths, progress, "checkpoints")]
    return {"split": split, "rows": rows, "pareto": pareto_front(rows) if len(rows) > 1 else []}


# ----------------------------------------------------------------------------------------------
# the command contract: run(EvalSettings, progress) -> EvalReport
# ----------------------------------------------------------------------------------------------

COLUMNS = ("router", "step", "acc_r", "acc_e", "acc", "rho_q", "rho_all", "phi", "phi_model", "speedup_measured")
TOKEN_COLUMNS = ("router", "step", "acc", "rho_target", "rho_all", "val_loss", "n_targets")


#: the most probe sequences one evaluation takes: the per-query records grow with the count and
#: the time linearly (about 1 s per 1,000 quick-preset sequences on one CPU core), so a count
#: far beyond this is a typo or days of work, refused up front rather than run
MAX_EVAL_SEQUENCES = 1 << 20


def check_sequence_count(sequences: int) -> None:
    """Refuse an evaluation set larger than :data:`MAX_EVAL_SEQUENCES` (one line)."""
    if sequences > MAX_EVAL_SEQUENCES:
        raise CramError(f"at most {MAX_EVAL_SEQUENCES} evaluation sequences, got {sequences} "
                        "(evaluation time and memory grow linearly with the count)")


@dataclass(frozen=True)
class EvalSettings:
    """What ``cram eval`` evaluates: checkpoints (files or run folders) on an SRCD split, or on a
    token file (``data``)."""

    checkpoints: tuple[str, ...]
    split: str = "iid"
    sequences: int = 1024
    data: str | None = None

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise CramError("give at least one checkpoint")
        if self.sequences < 1:
            raise CramError("the number of evaluation sequences must be >= 1")
        check_sequence_count(self.sequences)
        if self.data is None:
            parse_split(self.split)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@dataclass
class EvalReport(Result):
    """The rows of ``cram eval`` (one per checkpoint) and their Pareto front."""

    result: dict[str, Any]
    sequences: int = 1024
    name = "cram eval"

    def to_json(self) -> dict[str, Any]:
        return self.result

    def report(self) -> str:
        from rich.table import Table


        res = self.result
        tokens = "data" in res
        cols = TOKEN_COLUMNS if tokens else COLUMNS
        title = f"token file {res['data']}" if tokens else f"split {res['split']} ({self.sequences} sequences)"
        table = Table(title=title)
        table.add_column("checkpoint")
        for c in cols:
            table.add_column(c, justify="right")
        for r in res["rows"]:
            table.add_row(r["checkpoint"], *(_fmt(r.get(c)) for c in cols))
        parts = [render_text(table)]
        x = "rho_target" if tokens else "rho_q"
        if res["pareto"]:
            pt = Table(title=f"accuracy vs attention: the Pareto front (lower {x}, higher acc)")
            extra = () if tokens else ("acc_r", "acc_e")
            for c in ("checkpoint", "router", x, "acc", *extra):
                pt.add_column(c, justify="right")
            for i in res["pareto"]:
                r = res["rows"][i]
                pt.add_row(r["checkpoint"], r["router"], *(_fmt(r[c]) for c in (x, "acc", *extra)))
            parts.append(render_text(pt))
        for r in res["rows"] if tokens else ():
            if r.get("by_label"):
                lt = Table(title=f"by label: {r['checkpoint']}")
                for c in ("label", "n", "acc", "rho"):
                    lt.add_column(c, justify="right")
                for row in r["by_label"]:
                    lt.add_row(*(_fmt(row[c]) for c in ("label", "n", "acc", "rho")))
                parts.append(render_text(lt))
        return "\n".join(parts)

    def plot(self, path: str | os.PathLike) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        res = self.result
        x = "rho_target" if "data" in res else "rho_q"
        keys = (("acc", "o"),) if "data" in res else (("acc", "o"), ("acc_r", "^"), ("acc_e", "v"))
        fig, ax = plt.subplots(figsize=(5.5, 4))
        rows = res["rows"]
        for key, marker in keys:
            pts = [r for r in rows if r.get(key) is not None and r.get(x) is not None]
            ax.scatter([r[x] for r in pts], [r[key] for r in pts], marker=marker, label=key)
        for r in rows:
            if r.get(x) is not None and r.get("acc") is not None:
                ax.annotate(r["router"], (r[x], r["acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = [rows[i] for i in res["pareto"]]
        if front:
            ax.plot([r[x] for r in front], [r["acc"] for r in front], "k--", lw=0.8, label="Pareto front (acc)")
        ax.set_xlabel("attention per target position rho_target" if "data" in res else "attention per query rho_q")
        ax.set_ylabel("accuracy")
        ax.set_title(f"token file {Path(res['data']).name}" if "data" in res else f"split {res['split']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, path)


def run(config: EvalSettings, progress: Progress | None = None) -> EvalReport:
    """Evaluate ``config.checkpoints``; the rows and Pareto front as an :class:`EvalReport`."""
    res = evaluate_checkpoints(list(config.checkpoints), config.split, sequences=config.sequences,
                               data=config.data, progress=progress)  # fmt: skip
    return EvalReport(res, config.sequences)

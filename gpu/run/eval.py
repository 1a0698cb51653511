"""Evaluation of checkpoints, as library functions (``cram eval``'s rows).

- :func:`split_data` rebuilds the pool of a split (IID, FRESH, TRANSFER(s), CONFLICT(s), STRUCT)
  from the SRCD config and world seed stored in the checkpoint;
- :func:`evaluate_checkpoint` scores a checkpoint on a split (:func:`cramkit.gpu.tasks.srcd_eval.evaluate`),
  :func:`evaluate_checkpoint_on_tokens` on a token file (docs/tasks.md): accuracy on its target
  positions, attention use and a per-label breakdown;
- :func:`evaluate_checkpoints` is what ``cram eval`` prints: one row per checkpoint and the
  accuracy-vs-attention (Pareto) table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramkit.errors import CramError
from cramkit.gpu.run import config as C
from cramkit.gpu.run.load import load_checkpoint
from cramkit.gpu.tasks.srcd import CONFLICT_SEED, FRESH_SEED, TRANSFER_SEED
from cramkit.gpu.tasks.srcd_eval import evaluate, time_routed_path
from cramkit.progress import Progress, track
from cramkit.sim.srcd import SRCDConfig, World, derive_world, make_world, split_seeds

SPLIT_HELP = "iid, fresh, transfer:S, conflict:S or struct (S = overlap in [0, 1])"


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


def _is_text_run(path: str | Path) -> bool:
    from cramkit.gpu.run.checkpoint import read_checkpoint

    cfg = read_checkpoint(path)[1].get("config")
    return isinstance(cfg, dict) and cfg.get("task") == "text"


def evaluate_checkpoints(paths: list[str | Path], split: str = "iid", *, sequences: int = 1024,
                         data: str | Path | None = None, progress: Progress | None = None,
                         errors: str = "strict") -> dict[str, Any]:  # fmt: skip
    """What ``cram eval`` reports: one row per checkpoint and the Pareto front over them (on an
    SRCD split, or on the token file ``data``); text checkpoints on a text file ``data`` or on
    their own validation split (:mod:`.eval_text`)."""
    from cramkit.gpu.run.eval_text import evaluate_text, is_text_file

    if not paths:
        raise CramError("give at least one checkpoint")
    if is_text_file(data) or (data is None and _is_text_run(paths[0])):
        if split != "iid":
            raise CramError(f"--split {split} is an SRCD split; a text checkpoint is scored on its validation split "
                            "or on --data FILE")  # fmt: skip
        return evaluate_text(list(paths), data, sequences=sequences, errors=errors,
                             track=lambda xs: track(xs, progress, "checkpoints"))  # fmt: skip
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

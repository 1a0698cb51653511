"""Token files (``task = "tokens"``): your own sequences, targets and labels (docs/tasks.md).

A token file is ``.npz`` (numpy, read with ``allow_pickle=False``) or ``.safetensors`` holding:

- ``tokens``: integers, shape (N, T): N sequences of T token ids in [0, vocab);
- ``targets`` (optional): integers, shape (N, T), the token to predict at each position or -1
  (no target); default: next-token prediction (``targets[:, t] = tokens[:, t + 1]``, the last
  position -1);
- ``query_mask`` (optional): booleans (or 0/1), shape (N, T): query slots, for the routers that
  know the layout (``oracle-pos``, learned-static with ``static_scope = "queries"``);
- ``labels`` (optional): integers >= -1, shape (N, T): a label per position for the per-label
  breakdown of the evaluation (-1: no label); never shown to the model;
- ``split`` (optional): 0 (train) or 1 (validation) per sequence, shape (N,); default: the last
  ``tokens.val_frac`` of the sequences (at least one) are the validation set.

Everything is checked once, on load; each problem is one line naming the file and the field.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramkit.errors import CramError
from cramkit.gpu.tasks.base import BaseTask, TaskBatch, check_token_range

FIELDS = ("tokens", "targets", "query_mask", "labels", "split")
SUFFIXES = (".npz", ".safetensors")


@dataclass
class TokenData:
    """A checked token file (tensors on the CPU)."""

    path: str
    tokens: torch.Tensor  # (N, T) int64
    targets: torch.Tensor  # (N, T) int64, -1 = no target
    query_mask: torch.Tensor | None  # (N, T) bool
    labels: torch.Tensor | None  # (N, T) int64, -1 = no label
    split: torch.Tensor  # (N,) int64: 0 train, 1 validation
    has_split: bool = False  # the file gave the split (else: the last val_frac of the sequences)

    @property
    def vocab_needed(self) -> int:
        """The smallest vocabulary that holds every token and target id."""
        return int(max(int(self.tokens.max()), int(self.targets.max()))) + 1

    def indices(self, split: int) -> torch.Tensor:
        return torch.nonzero(self.split == split).flatten()

    def select(self, idx: torch.Tensor) -> TaskBatch:
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return TaskBatch(self.tokens[idx], self.targets[idx], pick(self.query_mask), pick(self.labels))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CramError(f"token file {path} does not exist")
    if path.suffix not in SUFFIXES:
        raise CramError(f"token file {path} must be .npz or .safetensors, not {path.suffix or 'without a suffix'!r}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    except ValueError as exc:  # an object array needs pickle: refused
        msg = str(exc).splitlines()[0] if str(exc) else "unreadable"
        if "pickle" in msg:
            msg = "it holds an object array (pickled data is never loaded)"
        raise CramError(f"token file {path} cannot be read: {msg}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise CramError(f"token file {path} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise CramError(f"token file {path} cannot be read: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _integers(path: Path, name: str, a: np.ndarray, shape: tuple | None, ndim: int) -> np.ndarray:
    where = f"token file {path}, field {name}"
    if a.dtype.kind == "f":
        if np.isnan(a).any():
            raise CramError(f"{where}: contains NaN")
        if not np.isfinite(a).all() or (a != np.round(a)).any():
            raise CramError(f"{where}: must hold integers, got dtype {a.dtype} with non-integer values")
        raise CramError(f"{where}: must have an integer dtype, got {a.dtype}")
    if a.dtype.kind not in "iub":
        raise CramError(f"{where}: must have an integer dtype, got {a.dtype}")
    if a.ndim != ndim:
        raise CramError(f"{where}: must have {ndim} dimension(s), got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise CramError(f"{where}: shape {a.shape} differs from tokens' {shape}")
    return a.astype(np.int64)


def load_token_file(path: str | Path, *, val_frac: float = 0.1) -> TokenData:
    """Read and check a token file; one :class:`CramError` line for any problem."""
    path = Path(path)
    arrays = _read_arrays(path)
    unknown = sorted(set(arrays) - set(FIELDS))
    if unknown:
        raise CramError(f"token file {path}: unknown field(s) {unknown}; known: {list(FIELDS)}")
    if "tokens" not in arrays:
        raise CramError(f"token file {path}: no field 'tokens' (the (N, T) integer token ids)")
    tokens = _integers(path, "tokens", arrays["tokens"], None, 2)
    n, t = tokens.shape
    if n == 0 or t == 0:
        raise CramError(f"token file {path}, field tokens: is empty (shape {tokens.shape})")
    if tokens.min() < 0:
        raise CramError(f"token file {path}, field tokens: token id {int(tokens.min())} is negative")
    if "targets" in arrays:
        targets = _integers(path, "targets", arrays["targets"], tokens.shape, 2)
        if targets.min() < -1:
            raise CramError(f"token file {path}, field targets: value {int(targets.min())} < -1 (-1 = no target)")
    else:
        targets = np.full_like(tokens, -1)
        targets[:, :-1] = tokens[:, 1:]
    qmask = None
    if "query_mask" in arrays:
        q = _integers(path, "query_mask", arrays["query_mask"], tokens.shape, 2)
        if not np.isin(q, (0, 1)).all():
            raise CramError(f"token file {path}, field query_mask: must be booleans (0 or 1)")
        qmask = torch.from_numpy(q.astype(bool))
    labels = None
    if "labels" in arrays:
        lab = _integers(path, "labels", arrays["labels"], tokens.shape, 2)
        if lab.min() < -1:
            raise CramError(f"token file {path}, field labels: value {int(lab.min())} < -1 (-1 = no label)")
        labels = torch.from_numpy(lab)
    if "split" in arrays:
        split = _integers(path, "split", arrays["split"], (n,), 1)
        if not np.isin(split, (0, 1)).all():
            raise CramError(f"token file {path}, field split: must be 0 (train) or 1 (validation) per sequence")
    else:
        if n < 2:
            raise CramError(f"token file {path}: one sequence cannot be split into train and validation; add sequences or a 'split' field")
        split = np.zeros(n, dtype=np.int64)
        split[n - min(n - 1, max(1, math.ceil(val_frac * n))):] = 1
    data = TokenData(str(path), torch.from_numpy(tokens), torch.from_numpy(targets), qmask, labels,
                     torch.from_numpy(split), "split" in arrays)  # fmt: skip
    return data


def check_training_data(data: TokenData) -> None:
    """A file to train on needs training and validation sequences with target positions."""
    for split, what in ((0, "training"), (1, "validation")):
        idx = data.indices(split)
        if idx.numel() == 0:
            raise CramError(f"token file {data.path}, field split: no {what} sequences")
        if not bool((data.targets[idx] >= 0).any()):
            raise CramError(f"token file {data.path}, field targets: the {what} sequences have no target positions")


def check_vocab(data: TokenData, vocab_size: int) -> None:
    """Every token and target id of the file must be below the model's vocabulary."""
    check_token_range(data.tokens, vocab_size, f"token file {data.path}, field tokens")
    check_token_range(data.targets.clamp_min(0), vocab_size, f"token file {data.path}, field targets")


@torch.no_grad()
def evaluate_tokens(model, data: TokenData, idx: torch.Tensor, *, batch_size: int = 256,
                    device: torch.device | str = "cpu", router_seed: int = 12345) -> dict[str, Any]:  # fmt: skip
    """Accuracy and loss on the target positions of sequences ``idx``, attention use over target
    positions (``rho_target``), over query slots (``rho_q``, files with a query_mask) and over all
    positions (``rho_all``), and a per-label breakdown (``by_label``) when the file has labels."""
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(router_seed)
    lo = model.target_range[0] if model.target_range is not None else 0
    n_layers = max(1, len(model.cram_layers))
    tot = {"loss": 0.0, "correct": 0, "n": 0, "att_t": 0.0, "att_all": 0.0, "att_q": 0.0, "n_all": 0, "n_q": 0}
    per_label: dict[int, list[float]] = {}  # label -> [n, correct, attended]
    for i in range(0, len(idx), batch_size):
        b = data.select(idx[i : i + batch_size]).to(device)
        out = model(b.tokens, b.targets, query_mask=b.query_mask, generator=gen)
        tmask = b.targets >= 0
        tgt = b.targets[tmask]
        if tgt.numel():
            tot["loss"] += float(torch.nn.functional.cross_entropy(out.logits.float(), tgt - lo, reduction="sum"))
            correct = (out.logits.argmax(-1) + lo) == tgt
            tot["correct"] += int(correct.sum())
            tot["n"] += int(tgt.numel())
        routed = torch.zeros(tmask.shape, device=tmask.device)
        for tr in out.traces:
            routed += tr.route.float()
        routed /= n_layers
        tot["att_t"] += float(routed[tmask].sum())
        tot["att_all"] += float(routed.sum())
        tot["n_all"] += routed.numel()
        if b.query_mask is not None:
            tot["att_q"] += float(routed[b.query_mask].sum())
            tot["n_q"] += int(b.query_mask.sum())
        if b.labels is not None and tgt.numel():
            lab = b.labels[tmask]
            for lv in torch.unique(lab).tolist():
                if lv < 0:
                    continue
                sel = lab == lv
                row = per_label.setdefault(int(lv), [0.0, 0.0, 0.0])
                row[0] += int(sel.sum())
                row[1] += int(correct[sel].sum())
                row[2] += float(routed[tmask][sel].sum())
    model.train(was)
    has_att = bool(model.cram_layers)
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    m: dict[str, Any] = {
        "val_loss": ratio(tot["loss"], tot["n"]),
        "acc": ratio(tot["correct"], tot["n"]),
        "rho_target": ratio(tot["att_t"], tot["n"]) if has_att else 0.0,
        "rho_all": ratio(tot["att_all"], tot["n_all"]) if has_att else 0.0,
        "n_sequences": int(len(idx)),
        "n_targets": tot["n"],
    }
    if data.query_mask is not None:
        m["rho_q"] = ratio(tot["att_q"], tot["n_q"]) if has_att else 0.0
    if data.labels is not None:
        m["by_label"] = [{"label": k, "n": int(v[0]), "acc": v[1] / v[0], "rho": v[2] / v[0] if has_att else 0.0}
                         for k, v in sorted(per_label.items())]  # fmt: skip
    return m


class TokensTask(BaseTask):
    """Train on the file's training sequences (random draws from the step's generator); evaluate
    on its validation sequences (at most ``eval_sequences`` of them, the first ones)."""

    name = "tokens"
    recall_classes = True
    target_range = None
    default_budget = 1.0

    def __init__(self, data: TokenData | str | Path, *, vocab_size: int = 0, val_frac: float = 0.1,
                 eval_sequences: int = 512, device: torch.device | str = "cpu"):  # fmt: skip
        if not isinstance(data, TokenData):
            if not str(data):
                raise CramError("the tokens task needs a token file (give --data FILE)")
            data = load_token_file(data, val_frac=val_frac)
        check_training_data(data)
        self.data, self.device = data, device
        self.vocab_size = vocab_size or data.vocab_needed
        check_vocab(data, self.vocab_size)
        self.train_idx = data.indices(0)
        self.val_idx = data.indices(1)[:eval_sequences]
        self.seq_len = int(data.tokens.shape[1])
        per_seq = (data.targets[self.train_idx] >= 0).sum(1).float()
        self.n_targets = max(1, round(float(per_seq.mean())))

    @classmethod
    def from_config(cls, cfg, *, device: torch.device | str = "cpu") -> TokensTask:
        t = cfg.tokens
        return cls(t.data, vocab_size=t.vocab_size, val_frac=t.val_frac, eval_sequences=cfg.train.eval_sequences,
                   device=device)  # fmt: skip

    def provenance(self) -> dict[str, Any]:
        return {"tokens_data": self.data.path, "tokens_shape": list(self.data.tokens.shape)}

    def batch(self, step: int, batch_size: int, *, generator: torch.Generator, rank: int = 0,
              world_size: int = 1) -> TaskBatch:  # fmt: skip
        pick = torch.randint(0, len(self.train_idx), (batch_size // world_size,), generator=generator)
        b = self.data.select(self.train_idx[pick])
        b.labels = None  # labels are for the breakdown only
        return b.to(self.device)

    def evaluate(self, model, *, step: int = 0) -> dict[str, Any]:
        return evaluate_tokens(model, self.data, self.val_idx, device=self.device)

    def progress_info(self, m: dict[str, Any]) -> str:
        return f"acc {m['acc'] or 0:.3f}  rho_target {m['rho_target'] or 0:.3f}"

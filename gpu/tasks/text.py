"""Language modelling on a text file (``task = "text"``): every position is a target.

Tokens are bytes (the default) or subwords (``text.tokenizer``: :mod:`.tokenizer`; a corpus is
then encoded once into a memory-mapped token file, :mod:`.prepared`). Training batches are random
windows of the training split (the file's first (1 - val_frac), or by document), drawn with the
step's generator; evaluation is the mean task loss (and bits per byte) on ``eval_batches`` fixed
windows of the validation tail. With CRAM (``A``) layers the evaluation also reports the routed
fraction of positions (``rho_all``; every position is a target, so it is also ``rho_q``, the key
``cram fit-gamma`` reads), the raw counts ``attended`` / ``positions``, and ``rho_by_class``: the
routed fraction by the class of the byte at the routed position (:data:`BYTE_CLASSES`).
:func:`attention_by_class` gives the full breakdown (by byte class, by the class of the byte
being predicted, by position in the word, with bits per byte of each), docs/results/language.md.
Every evaluation also splits loss and attention use between recall tokens and the rest
(:mod:`.recall`), and scores a held-out corpus (``text.eval_data``) beside the validation split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.tasks.base import BaseTask, TaskBatch
from cramkit.progress import Progress

VOCAB = 256
#: byte classes of the attention breakdown: ASCII letters, the space, the newline, ASCII digits,
#: and everything else (punctuation, other whitespace, bytes >= 128)
BYTE_CLASSES = ("letter", "space", "newline", "digit", "punct")
#: buckets of the position in a word: 0 = the byte is not a letter, k = the k-th letter of its
#: word (the last bucket collects the k >= len(WORD_POS) - 1)
WORD_POS = ("0", "1", "2", "3", "4", "5+")


def load_text(path: str | Path, val_frac: float, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of a text file split into (train, validation) (validation = the tail), memory-mapped
    ``uint8`` arrays: nothing is read until a window is (a corpus larger than memory trains)."""
    if not str(path):
        raise CramError("the text task needs a data file: give --data FILE (or text.data)")
    path = Path(path)
    if not path.is_file():
        raise CramError(f"text data file {str(path)!r} does not exist (give --data FILE)")
    size = path.stat().st_size
    n_val = int(size * val_frac)
    if size - n_val < seq_len + 2 or n_val < seq_len + 2:
        raise CramError(
            f"text file {path} has {size} bytes: too short for seq_len {seq_len} with a "
            f"{val_frac:.0%} validation tail"
        )
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r", shape=(size,))
    except (OSError, ValueError) as exc:
        raise CramError(f"cannot read the text file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return data[: size - n_val], data[size - n_val :]


def text_batch(
    data, seq_len: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: tokens (B, T) and next-token targets (B, T), int64. ``data``: a 1-D int64
    tensor, or a NumPy array (a memory-mapped token file: only the windows are read)."""
    starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
    offs = starts[:, None] + torch.arange(seq_len + 1)
    win = data[offs] if isinstance(data, torch.Tensor) else torch.from_numpy(data[offs.numpy()].astype(np.int64))
    return win[:, :-1], win[:, 1:]


def check_length(n_tokens: int, seq_len: int, where: str) -> None:
    """One line when a token sequence is too short for one window of ``seq_len`` tokens."""
    if n_tokens < seq_len + 2:
        raise CramError(f"{where} has {n_tokens} tokens: too short for one context of text.seq_len {seq_len} "
                        f"(needs {seq_len + 2}); give more text or a smaller text.seq_len")  # fmt: skip


class TextTask(BaseTask):
    name = "text"
    recall_classes = True
    vocab_size = VOCAB
    target_range = None
    default_budget = 1.0

    def __init__(self, data: str | Path, *, seq_len: int = 128, val_frac: float = 0.05, eval_batches: int = 8,
                 eval_batch_size: int = 32, device: torch.device | str = "cpu", tokenizer: str = "bytes",
                 split: str = "tail", errors: str = "strict", eval_data: str | Path = "",
                 progress: Progress | None = None):  # fmt: skip
        from cramkit.gpu.tasks.prepared import prepare
        from cramkit.gpu.tasks.tokenizer import Tokenizer

        self.data, self.seq_len, self.eval_batches = str(data), seq_len, eval_batches
        self.eval_batch_size, self.device = eval_batch_size, device
        self.n_targets = seq_len
        self.prepared = self.heldout = None
        if tokenizer == "bytes" and split == "tail":  # the byte task as it always was: the file in memory
            self.train_data, self.val_data = load_text(data, val_frac, seq_len)
            self.tokenizer = Tokenizer.bytes()
        else:
            if not str(data):
                raise CramError("the text task needs a data file: give --data FILE (or text.data)")
            self.prepared = prepare(data, tokenizer, split=split, val_frac=val_frac, errors=errors, progress=progress)
            self.tokenizer = self.prepared.tokenizer
            self.train_data, self.val_data = self.prepared.train, self.prepared.val
            check_length(len(self.train_data), seq_len, f"the training split of {data}")
            check_length(len(self.val_data), seq_len, f"the validation split of {data}")
        self.vocab_size = self.tokenizer.vocab_size
        if str(eval_data):
            self.heldout = prepare(eval_data, self.tokenizer, heldout=True, errors=errors, what="held-out corpus",
                                   progress=progress)  # fmt: skip
            check_length(len(self.heldout.val), seq_len, f"the held-out corpus {eval_data}")

    @classmethod
    def from_config(cls, cfg, *, device: torch.device | str = "cpu", progress: Progress | None = None) -> TextTask:
        t = cfg.text
        return cls(t.data, seq_len=t.seq_len, val_frac=t.val_frac, eval_batches=t.eval_batches,
                   eval_batch_size=cfg.train.batch_size, device=device, tokenizer=t.tokenizer, split=t.split,
                   errors=t.errors, eval_data=t.eval_data, progress=progress)  # fmt: skip

    def provenance(self) -> dict[str, Any]:
        n_bytes = int(len(self.train_data) + len(self.val_data)) if self.prepared is None else \
            int(self.prepared.meta["n_bytes_train"] + self.prepared.meta["n_bytes_val"])  # fmt: skip
        out = {"text_data": self.data, "text_bytes": n_bytes}
        if self.prepared is not None:
            out |= {**self.tokenizer.describe(), "text_tokens": int(len(self.train_data) + len(self.val_data))}
        return out

    def run_files(self) -> dict[str, bytes]:
        """Files the run folder keeps beside the checkpoints: the tokenizer (not for bytes)."""
        js = self.tokenizer.to_json()
        return {} if js is None else {"tokenizer.json": js.encode("utf-8")}

    def batch(self, step: int, batch_size: int, *, generator: torch.Generator, rank: int = 0,
              world_size: int = 1) -> TaskBatch:  # fmt: skip
        x, y = text_batch(self.train_data, self.seq_len, batch_size // world_size, generator)
        return TaskBatch(x.to(self.device), y.to(self.device))

    def eval_windows(self, data=None):
        """The fixed validation windows of every evaluation: ``eval_batches`` pairs (tokens, targets)
        (of ``data`` when given, e.g. the held-out corpus)."""
        gen = torch.Generator().manual_seed(4242)
        for _ in range(self.eval_batches):
            yield text_batch(self.val_data if data is None else data, self.seq_len, self.eval_batch_size, gen)

    @torch.no_grad()
    def evaluate(self, model, *, step: int = 0) -> dict[str, Any]:
        ev = eval_positions(model, self.eval_windows(), self.device)
        m = text_metrics(ev, self.tokenizer)
        if self.heldout is not None:
            hm = text_metrics(eval_positions(model, self.eval_windows(self.heldout.val), self.device), self.tokenizer)
            m |= {f"heldout_{k}": hm.get(k) for k in HELDOUT_KEYS}
        return m

    def progress_info(self, m: dict[str, Any]) -> str:
        return f"val {m['val_loss']:.3f}  bpb {m['bpb']:.3f}"


#: the metrics of the held-out corpus logged beside the validation split's (prefix ``heldout_``)
HELDOUT_KEYS = ("val_loss", "bpb", "rho_all", "recall_share", "bpb_recall", "bpb_other", "rho_recall", "rho_other")


def text_metrics(ev: dict[str, Any], tokenizer) -> dict[str, Any]:
    """The metrics of scored positions (:func:`eval_positions`): ``val_loss`` (nats per token),
    ``bpb`` (bits per UTF-8 byte of the targets: byte and BPE models compare), with CRAM layers
    ``rho_all`` / ``rho_q`` / ``attended`` / ``positions`` / ``rho_by_class`` (the byte classes,
    byte models only), and the recall-token table of :func:`cramkit.gpu.tasks.recall.recall_metrics`."""
    from cramkit.gpu.tasks.recall import recall_hits, recall_metrics

    loss, route, x, y = ev["loss"], ev["route"], ev["tokens"], ev["targets"]
    val = float(loss.mean())
    nbytes = torch.from_numpy(tokenizer.token_bytes)[y.clamp_min(0)]
    bytes_only = tokenizer.hf is None
    bpb = val / math.log(2) if bytes_only else float(loss.double().sum()) / math.log(2) / max(float(nbytes.sum()), 1.0)
    m: dict[str, Any] = {"val_loss": val, "bpb": bpb}
    if route is not None:
        m["rho_all"] = float(route.mean())
        m["rho_q"] = m["rho_all"]  # every position is a target (query): the key fit-gamma reads
        m["attended"], m["positions"] = float(route.sum()), int(route.numel())
        if bytes_only:
            cls = byte_class(x)
            m["rho_by_class"] = {name: _mean_or_none(route[cls == i]) for i, name in enumerate(BYTE_CLASSES)}
    m.update(recall_metrics(recall_hits(x, y), loss, nbytes, route))
    return m


# ----------------------------------------------------------------------------------------------
# where attention goes
# ----------------------------------------------------------------------------------------------


def byte_class(tokens: torch.Tensor) -> torch.Tensor:
    """Index into :data:`BYTE_CLASSES` of every byte of ``tokens`` (any shape, int)."""
    t = tokens.long()
    letter = ((t >= 65) & (t <= 90)) | ((t >= 97) & (t <= 122))
    out = torch.full_like(t, BYTE_CLASSES.index("punct"))
    out[letter] = BYTE_CLASSES.index("letter")
    out[t == 32] = BYTE_CLASSES.index("space")
    out[t == 10] = BYTE_CLASSES.index("newline")
    out[(t >= 48) & (t <= 57)] = BYTE_CLASSES.index("digit")
    return out


def word_position(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) bucket index into :data:`WORD_POS`: 0 where the byte is not a letter, else the
    number of letters of its word up to and including it (capped at the last bucket). A window
    that starts inside a word counts from the window's first byte."""
    letter = byte_class(tokens) == BYTE_CLASSES.index("letter")
    run = torch.zeros_like(tokens, dtype=torch.long)
    prev = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    for t in range(tokens.shape[1]):
        prev = torch.where(letter[:, t], prev + 1, torch.zeros_like(prev))
        run[:, t] = prev
    return run.clamp_max(len(WORD_POS) - 1)


def _mean_or_none(x: torch.Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


def _position_loss(out, y: torch.Tensor) -> torch.Tensor:
    """(B, T) nats of the model output: logits rows are the target positions in row-major order
    (every position here)."""
    return F.cross_entropy(out.logits.float(), y.reshape(-1), reduction="none").view(y.shape).cpu()


def counterfactual_gain(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, T) nats: the model's loss with every CRAM layer's attention switched off minus its loss
    with attention everywhere (two forced passes). When no sequence mixer follows the last CRAM
    layer (``SA``: only its MLP and the head) position t's output reads that layer at t alone, so
    this is exactly the per-position gain of attending at t; otherwise a joint intervention."""
    on = model(x, y, route=torch.ones_like(x, dtype=torch.bool))
    off = model(x, y, route=torch.zeros_like(x, dtype=torch.bool))
    return _position_loss(off, y) - _position_loss(on, y)


@torch.no_grad()
def eval_positions(model, windows, device: Any = "cpu", *, gain: bool = False) -> dict[str, torch.Tensor | None]:
    """Run ``model`` (in eval mode, restored after) over ``windows`` (pairs of (B, T) tokens and
    targets, every position a target) and return per position: ``tokens``, ``targets``, ``loss``
    (nats) and ``route`` (the routed fraction over the CRAM layers, in [0, 1]; None without CRAM
    layers), each (N, T). Random routers draw from a fixed generator (seed 12345). ``gain``: also
    ``gain``, :func:`counterfactual_gain` at every position (None without CRAM layers)."""
    was = model.training
    model.eval()
    router_gen = torch.Generator().manual_seed(12345)
    toks, tgts, losses, routes, gains = [], [], [], [], []
    try:
        for x, y in windows:
            x, y = x.to(device), y.to(device)
            out = model(x, y, generator=router_gen)
            losses.append(_position_loss(out, y))
            toks.append(x.cpu())
            tgts.append(y.cpu())
            if out.traces:
                routes.append((sum(tr.route.float() for tr in out.traces) / len(out.traces)).cpu())
                if gain:
                    gains.append(counterfactual_gain(model, x, y))
    finally:
        model.train(was)
    return {"tokens": torch.cat(toks), "targets": torch.cat(tgts), "loss": torch.cat(losses),
            "route": torch.cat(routes) if routes else None, "gain": torch.cat(gains) if gains else None}  # fmt: skip


def breakdown(route: torch.Tensor | None, loss: torch.Tensor, groups: torch.Tensor,
              names: tuple[str, ...]) -> list[dict[str, Any]]:  # fmt: skip
    """One row per group: ``{group, n, share, rho, attn_share, bpb}`` -- the positions in the
    group, their share of all positions, the routed fraction among them (None without a route),
    the group's share of all routed positions, and their bits per byte."""
    total = groups.numel()
    routed = float(route.sum()) if route is not None else 0.0
    rows = []
    for i, name in enumerate(names):
        sel = groups == i
        n = int(sel.sum())
        r = route[sel] if route is not None else None
        rows.append({
            "group": name, "n": n, "share": n / total if total else None,
            "rho": _mean_or_none(r) if r is not None else None,
            "attn_share": float(r.sum()) / routed if (r is not None and routed > 0) else None,
            "bpb": float(loss[sel].mean()) / math.log(2) if n else None,
        })  # fmt: skip
    return rows


@torch.no_grad()
def attention_by_class(model, task: TextTask) -> dict[str, Any]:
    """Where a text model attends on ``task``'s evaluation windows (the ones ``evaluate`` scores).

    Returns ``rho_all``, ``bpb`` and three tables (see :func:`breakdown`): ``by_class`` (class of
    the byte at the routed position, i.e. the last byte the model has read), ``by_next_class``
    (class of the byte it predicts there) and ``by_word_pos`` (:func:`word_position` of the byte
    at the position)."""
    ev = eval_positions(model, task.eval_windows(), task.device)
    route, loss, x, y = ev["route"], ev["loss"], ev["tokens"], ev["targets"]
    return {
        "rho_all": float(route.mean()) if route is not None else None,
        "bpb": float(loss.mean()) / math.log(2),
        "by_class": breakdown(route, loss, byte_class(x), BYTE_CLASSES),
        "by_next_class": breakdown(route, loss, byte_class(y), BYTE_CLASSES),
        "by_word_pos": breakdown(route, loss, word_position(x), WORD_POS),
    }

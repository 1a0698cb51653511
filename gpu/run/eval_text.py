"""``cram eval`` on text: a text checkpoint scored on a text file or on its own validation split.

``cram eval RUN --data corpus.txt`` encodes the file with the run's tokenizer (checked against the
checkpoint, :mod:`.textrun`; a prepared, cached token file, :mod:`cramkit.gpu.tasks.prepared`);
``cram eval RUN`` scores the run's validation split, and the run's held-out corpus
(``text.eval_data``) when it has one. Each corpus is cut into consecutive, non-overlapping
windows of ``text.seq_len`` tokens (at most ``--sequences`` of them, from the start), every
position a target. A row per (checkpoint, corpus): ``val_loss`` (nats per token), ``bpb`` (bits per
UTF-8 byte, so byte and BPE models compare), attention use (``rho_all``) and the recall-token
table (``by_recall``; the flat ``bpb_recall``, ``rho_recall``, ... of
:func:`cramkit.gpu.tasks.recall.recall_metrics`). For a CRAM model also where attention helps:
the counterfactual gain of attention at every position (the loss with the CRAM layers' attention
off minus on, :func:`cramkit.gpu.tasks.text.counterfactual_gain`), ``need_share`` (positions where
it exceeds ``router.delta``), ``gain_precision`` (the share of the attention spent on them) and the
other fields of :func:`cramkit.gpu.tasks.recall.gain_metrics`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramkit.errors import CramError
from cramkit.gpu.run.eval_report import checkpoint_table, fmt_cell
from cramkit.gpu.run.load import LoadedCheckpoint, load_checkpoint
from cramkit.gpu.run.textrun import run_tokenizer
from cramkit.gpu.tasks.prepared import prepare
from cramkit.gpu.tasks.recall import gain_metrics, recall_hits, recall_table
from cramkit.gpu.tasks.text import check_length, eval_positions, load_text, text_metrics
from cramkit.io import save_figure
from cramkit.result import render_text

#: suffixes that make ``--data`` a token file rather than a text file
TOKEN_SUFFIXES = (".npz", ".safetensors")
TEXT_COLUMNS = ("router", "step", "corpus", "val_loss", "bpb", "rho_all", "recall_share", "bpb_recall", "bpb_other",
                "rho_recall", "rho_other", "need_share", "gain_precision")  # fmt: skip
WINDOW_BATCH = 32


def is_text_file(data: str | Path | None) -> bool:
    return data is not None and Path(data).suffix.lower() not in TOKEN_SUFFIXES


def consecutive_windows(data, seq_len: int, count: int, batch: int = WINDOW_BATCH):
    """Batches of (tokens, targets) of the first ``count`` non-overlapping windows of ``data``."""
    starts = np.arange(count, dtype=np.int64) * seq_len
    for i in range(0, count, batch):
        offs = starts[i : i + batch, None] + np.arange(seq_len + 1)
        win = torch.from_numpy(np.asarray(data[offs]).astype(np.int64))
        yield win[:, :-1], win[:, 1:]


def _corpora(ck: LoadedCheckpoint, tok, data: str | Path | None, errors: str) -> list[tuple[str, str, Any]]:
    """(name, file, token array) of each corpus to score."""
    t = ck.cfg.text
    if data is not None:
        return [("file", str(data), prepare(data, tok, heldout=True, errors=errors, what="text file").val)]
    if not t.data:
        raise CramError(f"{ck.path} names no training corpus; give --data FILE")
    if not Path(t.data).is_file():
        raise CramError(f"the validation split of {ck.path} is the tail of its corpus {t.data}, which does not exist "
                        "here; give --data FILE")  # fmt: skip
    if tok.hf is None and t.split == "tail":
        val = load_text(t.data, t.val_frac, t.seq_len)[1].numpy()
    else:
        val = prepare(t.data, tok, split=t.split, val_frac=t.val_frac, errors=t.errors).val
    out = [("validation", t.data, val)]
    if t.eval_data:
        out.append(("held-out", t.eval_data,
                    prepare(t.eval_data, tok, heldout=True, errors=t.errors, what="held-out corpus").val))  # fmt: skip
    return out


def evaluate_text_checkpoint(path: str | Path, data: str | Path | None = None, *, sequences: int = 1024,
                             errors: str = "strict") -> list[dict[str, Any]]:  # fmt: skip
    """The rows of one text checkpoint (see the module docstring)."""
    ck = load_checkpoint(path)
    if ck.cfg.task != "text" and data is None:
        raise CramError(f"{path} is a {ck.cfg.task!r} checkpoint among text checkpoints; evaluate text checkpoints "
                        "separately")  # fmt: skip
    if ck.cfg.task != "text":
        raise CramError(f"{path} is a {ck.cfg.task!r} checkpoint; a text file is scored by text checkpoints "
                        "(cram train --task text); give it a token file (.npz or .safetensors) instead")  # fmt: skip
    tok = run_tokenizer(ck.path, ck.meta, ck.model.vocab_size)
    seq_len = ck.cfg.text.seq_len
    rows = []
    for name, file, arr in _corpora(ck, tok, data, errors):
        check_length(len(arr), seq_len, f"{name} corpus {file}")
        count = min(sequences, (len(arr) - 1) // seq_len)
        ev = eval_positions(ck.model, consecutive_windows(arr, seq_len, count), "cpu", gain=True)
        m = text_metrics(ev, tok)
        nbytes = torch.from_numpy(tok.token_bytes)[ev["targets"]]
        hits = recall_hits(ev["tokens"], ev["targets"])
        table = recall_table(hits, ev["loss"], nbytes, ev["route"])
        if ev["gain"] is not None:
            m.update(gain_metrics(ev["gain"], ev["route"], hits, ck.cfg.router.delta))
        rows.append({"checkpoint": str(ck.path), "router": ck.cfg.router.name, "step": ck.meta.get("step"),
                     "corpus": name, "data": file, "tokenizer": tok.source, "windows": count,
                     "tokens": int(ev["targets"].numel()), "bytes": int(nbytes.sum()), **m, "by_recall": table})  # fmt: skip
    return rows


def text_pareto(rows: list[dict[str, Any]]) -> list[int]:
    """Rows not dominated in (lower rho_all, lower bpb) among rows of the same corpus, by rho_all."""
    ok = [i for i, r in enumerate(rows) if r.get("rho_all") is not None]
    front = [i for i in ok if not any(
        rows[j]["corpus"] == rows[i]["corpus"] and rows[j]["rho_all"] <= rows[i]["rho_all"] and rows[j]["bpb"] <= rows[i]["bpb"]
        and (rows[j]["rho_all"] < rows[i]["rho_all"] or rows[j]["bpb"] < rows[i]["bpb"]) for j in ok)]  # fmt: skip
    return sorted(front, key=lambda i: (rows[i]["corpus"], rows[i]["rho_all"]))


def evaluate_text(paths: list[str | Path], data: str | Path | None, *, sequences: int, errors: str = "strict",
                  track=lambda xs: xs) -> dict[str, Any]:  # fmt: skip
    rows = [r for p in track(paths) for r in evaluate_text_checkpoint(p, data, sequences=sequences, errors=errors)]
    return {"kind": "text", "data": str(data) if data is not None else None, "rows": rows,
            "pareto": text_pareto(rows) if len(paths) > 1 else []}  # fmt: skip


def text_report(res: dict[str, Any]) -> str:
    from rich.table import Table

    title = f"text file {res['data']}" if res.get("data") else "each run's validation split (and held-out corpus)"
    parts = [checkpoint_table(title, TEXT_COLUMNS, res["rows"])]
    for r in res["rows"]:
        lt = Table(title=f"recall tokens vs the rest: {r['checkpoint']} ({r['corpus']})")
        for c in ("class", "n", "share", "loss", "bpb", "rho", "attn_share"):
            lt.add_column(c, justify="right")
        for row in r["by_recall"]:
            lt.add_row(*(fmt_cell(row[c]) for c in ("class", "n", "share", "loss", "bpb", "rho", "attn_share")))
        parts.append(render_text(lt))
    if res["pareto"]:
        parts.append("Pareto front (lower rho_all, lower bpb): " +
                     ", ".join(f"{res['rows'][i]['router']} ({res['rows'][i]['corpus']})" for i in res["pareto"]))  # fmt: skip
    return "\n".join(parts)


def text_plot(res: dict[str, Any], path: str | os.PathLike) -> None:
    """bpb against attention use, overall and on recall tokens, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    rows = res["rows"]
    for key, marker in (("bpb", "o"), ("bpb_recall", "^"), ("bpb_other", "v")):
        pts = [r for r in rows if r.get(key) is not None]
        ax.scatter([r.get("rho_all") if r.get("rho_all") is not None else 0.0 for r in pts], [r[key] for r in pts],
                   marker=marker, label=key)  # fmt: skip
    for r in rows:
        ax.annotate(f"{r['router']} ({r['corpus']})", (r.get("rho_all") or 0.0, r["bpb"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("attention use rho_all (0 where the model has no CRAM layer)")
    ax.set_ylabel("bits per UTF-8 byte")
    ax.set_title(f"text file {Path(res['data']).name}" if res.get("data") else "validation split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)

"""Text in, FIT / VAL / TEST windows out, split by document.

A corpus is a UTF-8 text file or a folder of ``*.txt`` files. In a file, documents are separated
by a line holding only ``<|endoftext|>``; without such lines, by runs of two or more blank lines.
In a folder each file is one document. Documents are assigned to FIT, VAL and TEST by a seeded
permutation so that the three get about 4 : 1 : 2 of the tokens (docs/redundancy.md suggests 2M / 0.5M / 1M for a real measurement), and
each document is cut into windows of at most ``window`` tokens (each window starts with the
tokenizer's BOS token when it has one). A token budget per split is filled round-robin over the
split's documents, and windows are shortened to at most budget / min(8, documents) tokens, so a
small budget still spans many documents (the unit of the bootstrap).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cramkit.errors import CramError

DEFAULT_CORPUS = Path(__file__).resolve().parent / "default_corpus.txt"
SPLIT_WEIGHTS = {"fit": 4.0, "val": 1.0, "test": 2.0}
MIN_DOCS_PER_SPLIT = 8
EOT_LINE = re.compile(r"^[ \t]*<\|endoftext\|>[ \t]*$", re.MULTILINE)


@dataclass
class Window:
    doc: int  # document index in the corpus
    tokens: list[int]


@dataclass
class Split:
    name: str
    windows: list[Window]
    docs: list[int]  # documents that contribute at least one window

    @property
    def n_tokens(self) -> int:
        return sum(len(w.tokens) for w in self.windows)


def read_documents(path: str | Path | None) -> list[str]:
    """Read a corpus (file or folder, see the module doc); ``None`` means the bundled corpus."""
    path = Path(path) if path is not None else DEFAULT_CORPUS
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise CramError(f"the folder {path} holds no *.txt files")
        docs = [_read(f) for f in files]
    elif path.is_file():
        text = _read(path)
        parts = (
            EOT_LINE.split(text)
            if EOT_LINE.search(text)
            else re.split(r"\n[ \t]*\n(?:[ \t]*\n)+", text)
        )
        docs = list(parts)
    else:
        raise CramError(f"text corpus {path} does not exist")
    docs = [d.strip() for d in docs if d and d.strip()]
    if len(docs) < 3:
        raise CramError(
            f"{path} holds {len(docs)} document(s); FIT/VAL/TEST need at least 3 (separate documents "
            "with a line <|endoftext|> or two blank lines, or pass a folder of .txt files)"
        )
    return docs


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CramError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CramError(f"cannot read {path}: {exc.strerror}") from None


def split_corpus(
    docs: list[str],
    encode: Callable[[str], list[int]],
    *,
    bos_id: int | None,
    window: int,
    max_tokens: int | None,
    seed: int = 0,
    min_len: int = 2,
) -> dict[str, Split]:
    """Tokenize, assign documents to FIT/VAL/TEST and cut windows (see the module doc)."""
    if window < 2:
        raise CramError(f"window must be at least 2 tokens, got {window}")
    toks = [encode(d) for d in docs]
    out = {}
    for name, doc_ids in _assign(toks, seed).items():
        budget = None if max_tokens is None else max_tokens * SPLIT_WEIGHTS[name] / sum(SPLIT_WEIGHTS.values())
        windows = _fill(_windows(toks, doc_ids, window, bos_id, min_len, budget), budget)
        if not windows:
            raise CramError(f"the {name.upper()} split is empty after tokenization; give more text")
        out[name] = Split(name, windows, sorted({w.doc for w in windows}))
    return out


def _assign(toks: list[list[int]], seed: int) -> dict[str, list[int]]:
    """Documents to splits by a seeded permutation, about 4 : 1 : 2 of the tokens, none empty."""
    order = np.random.default_rng(seed).permutation(len(toks))
    total = float(sum(len(t) for t in toks))
    bounds = np.cumsum([SPLIT_WEIGHTS[s] for s in ("fit", "val")]) / sum(SPLIT_WEIGHTS.values())
    assign: dict[str, list[int]] = {"fit": [], "val": [], "test": []}
    seen = 0.0
    for i in order:
        # place a document by where its middle falls on the cumulative token axis
        mid = (seen + 0.5 * len(toks[i])) / total
        name = "fit" if mid < bounds[0] else ("val" if mid < bounds[1] else "test")
        assign[name].append(int(i))
        seen += len(toks[i])
    for name in ("test", "val", "fit"):  # every split needs a document: take from the largest
        if not assign[name]:
            donor = max(assign, key=lambda s: len(assign[s]))
            if len(assign[donor]) < 2:
                raise CramError("too few documents to form FIT, VAL and TEST splits")
            assign[name].append(assign[donor].pop())
    return assign


def _windows(toks, doc_ids, window: int, bos_id: int | None, min_len: int, budget: float | None):
    """Each document's windows; with a budget, shortened to at most budget / min(8, documents)
    tokens so that a small budget still spans several documents (the bootstrap unit)."""
    body = window - (1 if bos_id is not None else 0)
    bos = [bos_id] if bos_id is not None else []
    per_doc = []
    for i in doc_ids:
        t = toks[i]
        per_doc.append([Window(i, bos + c) for c in (t[j : j + body] for j in range(0, len(t), body))
                        if len(c) >= min_len])  # fmt: skip
    if budget is not None:
        k = min(MIN_DOCS_PER_SPLIT, len(per_doc))
        cap = max(min_len, int(budget // max(k, 1)))
        per_doc = [[Window(w.doc, w.tokens[:cap]) for w in p] for p in per_doc]
    return per_doc


def _fill(per_doc: list[list[Window]], budget: float | None) -> list[Window]:
    """Windows taken round-robin over the documents until the token budget is used."""
    windows: list[Window] = []
    used = 0
    rnd = 0
    while any(rnd < len(p) for p in per_doc):
        for p in per_doc:
            if rnd < len(p) and (budget is None or used < budget):
                windows.append(p[rnd])
                used += len(p[rnd].tokens)
        rnd += 1
        if budget is not None and used >= budget:
            break
    return windows


def batches(split: Split, batch_windows: int, pad_id: int = 0):
    """Yield ``(tokens (B, T) int64, valid (B, T) bool, docs (B,) int64, index of the first window)``.

    Windows are right-padded; with causal attention padding after a position never changes it.
    """
    ws = split.windows
    for s in range(0, len(ws), batch_windows):
        chunk = ws[s : s + batch_windows]
        T = max(len(w.tokens) for w in chunk)
        tok = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        valid = torch.zeros((len(chunk), T), dtype=torch.bool)
        for b, w in enumerate(chunk):
            tok[b, : len(w.tokens)] = torch.tensor(w.tokens, dtype=torch.long)
            valid[b, : len(w.tokens)] = True
        yield tok, valid, torch.tensor([w.doc for w in chunk], dtype=torch.long), s

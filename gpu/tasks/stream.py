"""A corpus read in chunks: the streaming passes of :func:`cramkit.gpu.tasks.prepared.prepare`
(docs/tasks.md, "Prepared corpora").

A text file is never held whole: it is read ``chunk`` bytes at a time (:data:`CHUNK_BYTES` by
default), hashed as it is read (:func:`scan`), decoded by an incremental UTF-8 decoder (a
character cut by a chunk boundary is completed by the next chunk; the ``text.errors`` policy as
for a whole file, :func:`pieces`), and split into the training and validation text on the fly
(:func:`plan_split`, :class:`Splitter`). The splits are exactly those of the whole-text
reference :func:`cramkit.gpu.tasks.prepared.split_text`:

- ``tail``: the cut is the first ``\\S\\n\\S`` at or after character ``int(n * (1 - val_frac)) - 1``
  (the character count n comes from a first decoding pass);
- ``documents``: a document ends where a whitespace run that holds ``\\n[ \\t]*\\n`` ends (the matches
  of the reference's separator regex, which lie each inside one whitespace run); a run split by a
  chunk boundary is carried across it as a three-state summary (:class:`DocBounds`), and the number
  of documents comes from the first pass, so the every-k-th rule and "fewer than k documents: the
  last one" hold as in the reference.

Each split's text is then re-cut at pre-token boundaries (:class:`cramkit.gpu.tasks.tokenizer.SafeChunker`)
for the tokenizer, so the token ids equal those of encoding each split whole.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cramkit.errors import CramError
from cramkit.gpu.tasks.tokenizer import CHUNK_CHARS, SafeChunker
from cramkit.progress import Progress, report_to

#: bytes read from the file at a time (peak memory is a small multiple of this, not the corpus)
CHUNK_BYTES = 1 << 20
_DOC_SEP = re.compile(r"\n[ \t]*\n\s*")  # the reference's separator (prepared.split_text)
_PAIR = re.compile(r"\n[ \t]*\n")
_OPEN = re.compile(r"\n[ \t]*\Z")
_TAIL_CUT = re.compile(r"\S\n(?=\S)")


class FileChanged(CramError):
    """The file's bytes changed between two passes."""


def _open(path: Path, what: str):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CramError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _chunks(path: Path, chunk: int, what: str, progress: Progress | None = None, stage: str = "") -> Iterator[bytes]:
    """The file's bytes, ``chunk`` at a time (``progress(stage, MiB read, MiB total)`` after each),
    up to its size when opened (a file that keeps growing is read once, not forever)."""
    tick = report_to(progress)
    done = 0
    with _open(path, what) as fh:
        size = os.fstat(fh.fileno()).st_size
        total = max(1, -(-size >> 20))
        while done < size:
            try:
                b = fh.read(min(chunk, size - done))
            except OSError as exc:
                raise CramError(f"cannot read the {what} {path}: {exc.strerror}") from None
            if not b:
                return
            done += len(b)
            yield b
            if stage:
                tick(stage, total if done >= size else min(done >> 20, total), total)


def scan(path: str | Path, *, chunk: int = CHUNK_BYTES, what: str = "text file") -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks; one line when the file is not given,
    missing, unreadable, or holds only whitespace."""
    if not str(path):
        raise CramError(f"the {what} is not given: give --data FILE (or text.data)")
    path = Path(path)
    if not path.is_file():
        raise CramError(f"{what} {str(path)!r} does not exist")
    h, blank = hashlib.sha256(), True
    for b in _chunks(path, chunk, what):
        h.update(b)
        blank = blank and not b.strip()
    if blank:
        raise CramError(f"{what} {path} is empty: it holds no text to score")
    return h.hexdigest()


def pieces(path: str | Path, errors: str, *, chunk: int = CHUNK_BYTES, what: str = "text file",
           progress: Progress | None = None, stage: str = "", sha256: str | None = None) -> Iterator[str]:  # fmt: skip
    """The decoded text of the file, one piece per chunk read. ``errors``: ``strict`` (a byte that is
    not UTF-8 is one line naming it and its offset in the file), ``replace`` or ``surrogateescape``.
    ``sha256``: the file's hash from :func:`scan`; one line when the bytes read no longer have it
    (the file changed between two passes)."""
    path = Path(path)
    dec = codecs.getincrementaldecoder("utf-8")(errors)
    off, h = 0, hashlib.sha256()
    for b in itertools.chain(_chunks(path, chunk, what, progress, stage), [b""]):  # b"": the final flush
        if sha256 is not None:
            h.update(b)
            if not b and h.hexdigest() != sha256:
                raise FileChanged(f"{what} {path} changed while it was being prepared; run the command again")
        pending = len(dec.getstate()[0])
        try:
            s = dec.decode(b, final=not b)
        except UnicodeDecodeError as exc:
            at = off - pending + exc.start
            raise CramError(f"{what} {path} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {at}); "
                            "convert it, or read bad bytes as U+FFFD with --errors replace (text.errors = "
                            "\"replace\")") from None  # fmt: skip
        off += len(b)
        if s:
            yield s


class DocBounds:
    """Where documents start in a text fed in pieces: :meth:`feed` returns the offsets in the piece
    at which a new document starts (see the module docstring)."""

    def __init__(self) -> None:
        self.carry = ""  # the open whitespace run so far: "" (no newline pending), "\n", or "\n\n" (a separator)

    def feed(self, piece: str) -> list[int]:
        buf = self.carry + piece
        off = len(self.carry)
        out = [m.end() - off for m in _DOC_SEP.finditer(buf) if m.end() < len(buf)]
        run = buf[len(buf.rstrip()) :]
        self.carry = "\n\n" if _PAIR.search(run) else "\n" if _OPEN.search(run) else ""
        return out


@dataclass(frozen=True)
class SplitPlan:
    """How the decoded text splits: ``kind`` "tail" (at character ``cut``), "documents" (``n_docs``
    documents, every ``k``-th to validation) or "heldout" (all validation)."""

    kind: str
    cut: int = 0
    n_docs: int = 0
    k: int = 2

    def is_val(self, doc: int) -> bool:
        if self.n_docs < self.k:  # no k-th document: the last one
            return doc == self.n_docs - 1
        return doc % self.k == self.k - 1


def _count(path: Path, errors: str, chunk: int, what: str, docs: bool, progress: Progress | None) -> tuple[int, int]:
    """(characters, documents) of the decoded file (documents counted only when ``docs``)."""
    n, bounds, db = 0, 0, DocBounds()
    for s in pieces(path, errors, chunk=chunk, what=what, progress=progress, stage="read corpus"):
        n += len(s)
        if docs:
            bounds += len(db.feed(s))
    return n, bounds + 1


def _tail_cut(path: Path, errors: str, chunk: int, what: str, n: int, val_frac: float) -> int:
    """The tail split's cut (a character offset), as the reference computes it on the whole text."""
    cut = int(n * (1.0 - val_frac))
    start = max(cut - 1, 0)
    pos, carry = 0, ""
    for s in pieces(path, errors, chunk=chunk, what=what):
        end = pos + len(s)
        if end + 2 >= start:  # a match lies in the last two characters before and this piece
            buf, bstart = carry + s, pos - len(carry)
            m = _TAIL_CUT.search(buf, max(start - bstart, 0))
            if m is not None:
                return bstart + m.end()
        carry, pos = (carry + s)[-2:], end
    return cut


def plan_split(path: str | Path, errors: str, split: str, val_frac: float, *, chunk: int = CHUNK_BYTES,
               what: str = "text file", progress: Progress | None = None) -> SplitPlan:  # fmt: skip
    """The split of the file (decoding it once, twice for ``tail``); ``split`` is "tail",
    "documents" or "heldout". Raises the reference's errors (one line each)."""
    path = Path(path)
    n, n_docs = _count(path, errors, chunk, what, split == "documents", progress)
    if split == "heldout":
        return SplitPlan("heldout")
    if split == "tail":
        return SplitPlan("tail", cut=_tail_cut(path, errors, chunk, what, n, val_frac))
    if split != "documents":
        raise CramError(f"text.split must be one of ('tail', 'documents'), got {split!r}")
    if n_docs < 2:
        raise CramError("text.split = \"documents\" needs at least two blank-line separated documents; "
                        f"this text has {n_docs} (use text.split = \"tail\")")  # fmt: skip
    return SplitPlan("documents", n_docs=n_docs, k=max(2, round(1.0 / val_frac)))


class Splitter:
    """Cut the decoded text, fed in pieces in file order, by ``plan``: :meth:`feed` returns the
    (``"train"`` or ``"val"``, text) parts of a piece."""

    def __init__(self, plan: SplitPlan):
        self.plan, self.pos, self.doc, self.bounds = plan, 0, 0, DocBounds()

    def feed(self, s: str) -> list[tuple[str, str]]:
        plan, out = self.plan, []
        if plan.kind == "heldout":
            out.append(("val", s))
        elif plan.kind == "tail":
            at = min(max(plan.cut - self.pos, 0), len(s))
            out += [("train", s[:at])] if at else []
            out += [("val", s[at:])] if at < len(s) else []
            self.pos += len(s)
        else:
            prev = 0
            for at in [*self.bounds.feed(s), len(s)]:
                if at > prev:
                    out.append(("val" if plan.is_val(self.doc) else "train", s[prev:at]))
                if at < len(s):
                    self.doc += 1
                prev = at
        return out


def split_chunks(path: str | Path, errors: str, plan: SplitPlan, *, chunk: int = CHUNK_BYTES,
                 what: str = "text file", only: str | None = None, progress: Progress | None = None,
                 stage: str = "", sha256: str | None = None) -> Iterator[list[tuple[str, str]]]:  # fmt: skip
    """Per chunk read: the list of (split, text) pieces cut at pre-token boundaries (each split's
    own :class:`SafeChunker`), in file order; the last list flushes both. ``only``: one split;
    ``sha256``: see :func:`pieces`."""
    size = min(CHUNK_CHARS, chunk)  # pieces for the tokenizer: never longer than a chunk read
    cutters, splitter = {"train": SafeChunker(size), "val": SafeChunker(size)}, Splitter(plan)
    for s in pieces(path, errors, chunk=chunk, what=what, progress=progress, stage=stage, sha256=sha256):
        out = [(name, c) for name, part in splitter.feed(s) if only in (None, name)
               for c in cutters[name].feed(part)]  # fmt: skip
        if out:
            yield out
    yield [(name, c) for name in ("train", "val") if only in (None, name) for c in cutters[name].flush()]

"""Prepared corpora: a text file encoded once into flat token files (docs/tasks.md, "Prepared corpora").

The nanoGPT convention: ``train.bin`` and ``val.bin`` hold the token ids of the two splits back to
back, ``uint16`` when the vocabulary fits (else ``uint32``), read with ``np.memmap`` (so training
touches only the pages its windows need). They live in a cache folder keyed by the SHA-256 of the
text file's bytes, the tokenizer (a trained BPE: its vocabulary size and the ``tokenizers``
version; a tokenizer file: its hash) and the split settings:

    $CRAM_CACHE_DIR/corpora/<key>/{train.bin, val.bin, tokenizer.json, meta.json}

(``CRAM_CACHE_DIR`` defaults to ``$XDG_CACHE_HOME/cram``, else ``~/.cache/cram``). A second run on the same corpus maps the same
files and trains no tokenizer; a folder is written under a temporary name and renamed into place
(atomic), and one whose files do not match its ``meta.json`` is rebuilt. A cache that cannot be
written (a read-only home, a full disk) costs a warning on stderr, not the command: the encoded
corpus is then used from memory.

Splits (``text.split``): ``tail`` = the last ``val_frac`` of the text (cut at a newline between two
non-space characters at or after that point, so no token spans the cut); ``documents`` = blank-line
separated documents, every k-th one (k = round(1 / val_frac)) to validation. A trained BPE learns
from the training split only. A held-out corpus (``text.eval_data``, ``cram eval --data``) is one
split, ``val.bin``, encoded with the run's tokenizer.

Text is read as UTF-8: a file that is not is one line naming the first bad byte, unless
``errors = "replace"`` (bad bytes read as U+FFFD); the byte tokenizer reads any file unchanged.

Preparing streams (:mod:`.stream`): the file is read ``chunk`` bytes at a time (1 MiB) in a few
passes (hash; decode and count; for ``tail``, find the cut; train the BPE from an iterator over the
training split; encode in batches and append to ``train.bin`` / ``val.bin``), so memory is bounded
by the chunk, not the corpus. The token files are byte-identical to those of the whole-text path,
:func:`read_text` + :func:`split_text` + ``Tokenizer.encode``, kept here as the reference the tests
compare with (a tokenizer file that is not byte-level is encoded in pieces cut at pre-token
boundaries of the byte-level kind, which it may not honour: its cache key says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cramkit.errors import CramError
from cramkit.gpu.tasks import stream as S
from cramkit.gpu.tasks.stream import CHUNK_BYTES
from cramkit.gpu.tasks.tokenizer import BYTES, Tokenizer, parse_spec
from cramkit.io import (
    CACHE_ENV,
    atomic_write_json,
    atomic_write_text,
    cache_root,
    describe_os_error,
)
from cramkit.progress import Progress

FORMAT = "cram-prepared-v1"
SPLITS = ("tail", "documents")
ERRORS = ("strict", "replace")
_DOC_SEP = re.compile(r"\n[ \t]*\n\s*")


def cache_dir() -> Path:
    """The cache root, :func:`cramkit.io.cache_root` (``$CRAM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cram``, else ``~/.cache/cram``)."""
    return cache_root()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def read_text(path: str | Path, *, errors: str = "strict", what: str = "text file") -> tuple[str, bytes]:
    """(text, raw bytes) of a file. ``errors``: ``strict`` (a file that is not UTF-8 is one line),
    ``replace`` (bad bytes become U+FFFD) or ``surrogateescape`` (lossless, for the byte tokenizer)."""
    if not str(path):
        raise CramError(f"the {what} is not given: give --data FILE (or text.data)")
    path = Path(path)
    if not path.is_file():
        raise CramError(f"{what} {str(path)!r} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CramError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if not raw.strip():
        raise CramError(f"{what} {path} is empty: it holds no text to score")
    try:
        return raw.decode("utf-8", errors=errors), raw
    except UnicodeDecodeError as exc:
        raise CramError(f"{what} {path} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "convert it, or read bad bytes as U+FFFD with --errors replace (text.errors = "
                        "\"replace\")") from None  # fmt: skip


def split_text(text: str, split: str, val_frac: float) -> tuple[str, str]:
    """(training text, validation text) of ``text`` (see the module docstring)."""
    if split == "tail":
        cut = int(len(text) * (1.0 - val_frac))
        m = re.compile(r"\S\n(?=\S)").search(text, max(cut - 1, 0))
        cut = m.end() if m is not None and m.end() < len(text) else cut
        return text[:cut], text[cut:]
    if split != "documents":
        raise CramError(f"text.split must be one of {SPLITS}, got {split!r}")
    k = max(2, round(1.0 / val_frac))
    bounds = [m.end() for m in _DOC_SEP.finditer(text)]
    starts, ends = [0, *bounds], [*bounds, len(text)]
    docs = [text[a:b] for a, b in zip(starts, ends) if b > a]
    if len(docs) < 2:
        raise CramError("text.split = \"documents\" needs at least two blank-line separated documents; "
                        f"this text has {len(docs)} (use text.split = \"tail\")")  # fmt: skip
    is_val = [i % k == k - 1 for i in range(len(docs))]
    if not any(is_val):  # fewer than k documents: the last one
        is_val[-1] = True
    return ("".join(d for d, v in zip(docs, is_val) if not v), "".join(d for d, v in zip(docs, is_val) if v))


@dataclass
class PreparedCorpus:
    """A prepared corpus: its folder, tokenizer, the memory-mapped splits and their byte counts."""

    path: Path
    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        return self.path.name


def _tokenizer_identity(spec: str, tokenizer: Tokenizer | None) -> str:
    kind, arg = parse_spec(spec)
    if tokenizer is not None:  # one that is not byte-level is encoded in pieces cut where byte-level BPE may cut
        return tokenizer.sha256 if tokenizer.byte_level else f"{tokenizer.sha256}:pieces"
    if kind == "bpe":
        import tokenizers

        return f"bpe:{arg}:tokenizers-{tokenizers.__version__}"
    return BYTES


def _key(text_sha256: str, ident: str, split: str, val_frac: float, errors: str) -> str:
    h = hashlib.sha256(FORMAT.encode() + b"\0")
    h.update(text_sha256.encode())
    h.update(json.dumps([ident, split, float(val_frac), errors]).encode())
    return h.hexdigest()[:32]


def _load(folder: Path) -> PreparedCorpus | None:
    """A cached corpus, or None when the folder is missing or does not match its meta.json."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        tok = Tokenizer.bytes() if meta["tokenizer_sha256"] == BYTES else \
            Tokenizer.from_json((folder / "tokenizer.json").read_text(encoding="utf-8"), meta["tokenizer"])  # fmt: skip
        if tok.sha256 != meta["tokenizer_sha256"]:
            return None
        arrays = []
        for name in ("train", "val"):
            n = int(meta[f"n_tokens_{name}"])
            f = folder / f"{name}.bin"
            if f.stat().st_size != n * dtype.itemsize:
                return None
            arrays.append(np.memmap(f, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype))
        tok.source = meta["tokenizer"]
        return PreparedCorpus(folder, tok, arrays[0], arrays[1], meta)
    except (OSError, ValueError, KeyError, TypeError, CramError):
        return None


def prepare(path: str | Path, tokenizer: str | Tokenizer = BYTES, *, split: str = "tail", val_frac: float = 0.05,
            errors: str = "strict", heldout: bool = False, what: str = "text file", chunk: int = CHUNK_BYTES,
            progress: Progress | None = None) -> PreparedCorpus:  # fmt: skip
    """Encode the text file ``path`` once (cached; see the module docstring), streaming it ``chunk``
    bytes at a time. ``tokenizer``: a ``text.tokenizer`` spec (``bpe:N`` is trained on the training
    split) or a :class:`Tokenizer`. ``heldout``: the whole file is one split (``val``), e.g. a
    held-out corpus. ``progress(stage, MiB, MiB total)`` hears about the long passes over the file
    (stages "read corpus", "train BPE", "encode corpus"), e.g. the CLI's progress bar on stderr."""
    if errors not in ERRORS:
        raise CramError(f"errors must be one of {ERRORS}, got {errors!r}")
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else None
    spec = tok.source if tok is not None else str(tokenizer)
    if tok is None:
        kind, arg = parse_spec(spec)
        tok = Tokenizer.bytes() if kind == BYTES else Tokenizer.from_file(arg) if kind == "file" else None
    mode = "surrogateescape" if tok is not None and tok.hf is None else errors
    digest = S.scan(path, chunk=chunk, what=what)
    split_name = "heldout" if heldout else split
    key = _key(digest, _tokenizer_identity(spec, tok), split_name, 0.0 if heldout else val_frac, errors)
    folder = cache_dir() / "corpora" / key
    cached = _load(folder)
    if cached is not None:
        return cached
    plan = S.plan_split(path, mode, split_name, val_frac, chunk=chunk, what=what, progress=progress)
    read = dict(chunk=chunk, what=what, progress=progress)
    if tok is None:  # bpe:N, trained on the training split
        texts = (c for batch in S.split_chunks(path, mode, plan, only="train", stage="train BPE", **read)
                 for _, c in batch)  # fmt: skip
        tok = Tokenizer.train_bpe(texts, parse_spec(spec)[1])
    meta: dict[str, Any] = {"format": FORMAT, "source": str(path), "text_sha256": digest, **tok.describe(),
                            "split": split_name, "val_frac": val_frac, "errors": errors,
                            "dtype": token_dtype(tok.vocab_size).name}  # fmt: skip
    encode = lambda sinks: _encode(path, mode, plan, tok, sinks, meta, read)  # noqa: E731
    try:
        _publish(folder, encode, tok, meta)
    except S.FileChanged:
        raise
    except CramError as exc:  # an unwritable cache (a read-only home, a full disk): the tokens in memory
        print(f"warning: {exc}; using the corpus from memory", file=sys.stderr)
        sinks = {"train": [], "val": []}
        encode(sinks)
        dtype = token_dtype(tok.vocab_size)
        ids = {k: np.concatenate(v) if v else np.zeros(0, dtype=dtype) for k, v in sinks.items()}
        return PreparedCorpus(folder, tok, ids["train"], ids["val"], meta)
    return _load(folder) or _failed_load(folder)


def _failed_load(folder: Path) -> PreparedCorpus:
    raise CramError(f"the prepared corpus {folder} was written but does not read back; remove it and try again")


def _encode(path: Path, mode: str, plan: S.SplitPlan, tok: Tokenizer, sinks: dict[str, Any], meta: dict[str, Any],
            read: dict[str, Any]) -> None:  # fmt: skip
    """Encode the splits of the file chunk by chunk into ``sinks`` (name -> a list, or a file open
    for writing), recording each split's token and UTF-8 byte counts in ``meta``."""
    dtype = token_dtype(tok.vocab_size)
    n_tok, n_bytes = {"train": 0, "val": 0}, {"train": 0, "val": 0}
    for batch in S.split_chunks(path, mode, plan, stage="encode corpus", sha256=meta["text_sha256"], **read):
        encoded = tok.encode_pieces([c for _, c in batch])
        for (name, c), ids in zip(batch, encoded):
            ids = ids.astype(dtype)
            sink = sinks[name]
            sink.append(ids) if isinstance(sink, list) else sink.write(ids.tobytes())
            n_tok[name] += len(ids)
            n_bytes[name] += len(c.encode("utf-8", errors="surrogateescape"))
    for name in ("train", "val"):
        meta[f"n_tokens_{name}"], meta[f"n_bytes_{name}"] = n_tok[name], n_bytes[name]


def _publish(folder: Path, encode, tok: Tokenizer, meta: dict[str, Any]) -> None:
    """Encode the corpus (``encode(sinks)``) into a temporary folder beside ``folder`` and rename it
    into place; one CramError line (naming the cache and how to choose another) when the cache
    cannot be written."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        with open(tmp / "train.bin", "wb") as ft, open(tmp / "val.bin", "wb") as fv:
            encode({"train": ft, "val": fv})
            for fh in (ft, fv):
                fh.flush()
                os.fsync(fh.fileno())
        if tok.hf is not None:
            atomic_write_text(tmp / "tokenizer.json", tok.to_json())
            keep_tokenizer(tok)
        atomic_write_json(tmp / "meta.json", meta)
        if folder.exists():
            if _load(folder) is not None:  # another process (a torchrun rank) was faster: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
                return
            aside = folder.with_name(f".{folder.name}.broken-{os.getpid()}")  # a broken earlier copy
            os.rename(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(tmp, folder)
    except (OSError, CramError) as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, S.FileChanged):  # not the cache's fault
            raise
        if _load(folder) is None:
            why = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            raise CramError(f"cannot write the prepared corpus to {folder}: {why} "
                            f"(set {CACHE_ENV} to a writable folder)") from None  # fmt: skip


def keep_tokenizer(tok: Tokenizer) -> Path | None:
    """Keep a copy of a tokenizer in the cache, under its hash (``cram eval`` finds it there when a
    run folder lost its ``tokenizer.json``)."""
    if tok.hf is None:
        return None
    path = cache_dir() / "tokenizers" / f"{tok.sha256}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, tok.to_json())
    return path


def cached_tokenizer(sha256: str) -> Tokenizer | None:
    """The tokenizer of this hash from the cache, or None."""
    path = cache_dir() / "tokenizers" / f"{sha256}.json"
    if not path.is_file():
        return None
    tok = Tokenizer.from_file(path)
    return tok if tok.sha256 == sha256 else None

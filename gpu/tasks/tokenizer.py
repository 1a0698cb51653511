"""Tokenizers of the text task (``text.tokenizer``, docs/tasks.md "Tokenizers").

``text.tokenizer`` is one of:

- ``"bytes"`` (the default): every byte of the file is a token, vocabulary 256;
- ``"bpe:<vocab>"``: a byte-level BPE of ``<vocab>`` tokens (>= 257) trained by Hugging Face
  ``tokenizers`` on the training part of the corpus, offline (nothing is downloaded); it is saved
  in the run folder as ``tokenizer.json`` and its SHA-256 goes into the checkpoint's signed
  metadata;
- a path to a Hugging Face ``tokenizer.json`` (GPT-2's, or any other ``Tokenizer.from_file`` reads).

:class:`Tokenizer` wraps all three behind one interface: ``encode(text) -> np.ndarray``,
``decode(ids) -> str``, ``vocab_size``, ``sha256`` (of its canonical JSON; ``"bytes"`` for the
byte tokenizer) and ``token_bytes`` (how many UTF-8 bytes each token id stands for, so bits per
byte are per UTF-8 byte whatever the tokenizer: exact for bytes and byte-level BPE; for a
tokenizer that is not byte-level, the length of each token decoded alone, an approximation).

Encoding a long text goes through :func:`safe_chunks`: cut only where a non-space character is
followed by a newline and another non-space character. The byte-level pre-tokenizer (GPT-2's
regex) always ends a pre-token there, and BPE never merges across pre-tokens, so encoding the
chunks gives exactly the ids of encoding the whole text (tests/gpu/test_tokenizer.py checks it),
in parallel and without the quadratic cost of one huge string. :class:`SafeChunker` does the same
for a text that arrives in pieces (a corpus read from disk in chunks, :mod:`.stream`); where a
stretch has no such newline it also cuts before a single space between two non-space characters
(``x| y``: the pre-token of ``x`` ends there, and `` y`` starts one in either encoding).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cramkit.errors import CramError

BYTES = "bytes"
BPE_PREFIX = "bpe:"
#: the smallest BPE vocabulary: the 256 byte-level symbols plus at least one merge
MIN_BPE_VOCAB = 257
#: the largest vocabulary a prepared token file holds (uint32 ids)
MAX_VOCAB = 1 << 31
#: characters per chunk handed to the tokenizer (cut at a safe boundary past this length)
CHUNK_CHARS = 1 << 16
_SAFE_CUT = re.compile(r"\S\n(?=\S)")
#: the cuts of :class:`SafeChunker`: after "\n" between two non-space characters, or before a single
#: space between two non-space characters (whichever comes first)
_STREAM_CUT = re.compile(r"\S\n(?=\S)|\S(?= \S)")
SPEC_HELP = '"bytes", "bpe:<vocab>" (a byte-level BPE trained on the corpus) or the path of a tokenizer.json'


def parse_spec(spec: str) -> tuple[str, Any]:
    """``"bytes"`` -> ("bytes", None); ``"bpe:4096"`` -> ("bpe", 4096); a path -> ("file", Path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise CramError(f"text.tokenizer must be {SPEC_HELP}; got {spec!r}")
    spec = spec.strip()
    if spec == BYTES:
        return BYTES, None
    if spec.startswith(BPE_PREFIX):
        raw = spec[len(BPE_PREFIX) :]
        try:
            vocab = int(raw)
        except ValueError:
            vocab = -1
        if not MIN_BPE_VOCAB <= vocab <= 65536 * 16:
            raise CramError(f"text.tokenizer {spec!r}: the BPE vocabulary must be an integer in "
                            f"[{MIN_BPE_VOCAB}, {65536 * 16}]")  # fmt: skip
        return "bpe", vocab
    return "file", Path(spec)


def safe_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, each cut after a newline that sits between
    two non-space characters (a pre-token boundary of the byte-level pre-tokenizer)."""
    i, n = 0, len(text)
    while i < n:
        j = i + size
        if j < n:
            m = _SAFE_CUT.search(text, j)
            j = m.end() if m else n
        else:
            j = n
        yield text[i:j]
        i = j


class SafeChunker:
    """Re-cut a text that arrives in pieces into chunks of about ``size`` characters, each ending at a
    pre-token boundary of the byte-level pre-tokenizer (see the module docstring), so encoding the
    chunks gives the ids of encoding the whole text. :meth:`feed` returns the chunks completed so
    far; :meth:`flush` the rest. Memory is the pending text: under ``size`` plus one piece, unless a
    stretch has no cut at all (no newline or single space between two non-space characters)."""

    def __init__(self, size: int = CHUNK_CHARS):
        self.size, self.buf, self.searched = size, "", 0

    def feed(self, piece: str) -> list[str]:
        buf, out, i = self.buf + piece if self.buf else piece, [], 0
        while len(buf) - i > self.size:
            start = max(i + self.size, self.searched)
            m = _STREAM_CUT.search(buf, start)
            if m is None:  # no cut yet: wait for more text (search only the new part next time)
                self.searched = max(len(buf) - 2, i)
                break
            out.append(buf[i : m.end()])
            i = m.end()
        self.buf = buf[i:]
        self.searched = max(self.searched - i, 0)
        return out

    def flush(self) -> list[str]:
        rest, self.buf, self.searched = self.buf, "", 0
        return [rest] if rest else []


def _hf():
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - a dependency
        raise CramError("the text tokenizers need the tokenizers package: pip install 'tokenizers>=0.15'") from None
    return tokenizers


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    """One tokenizer of the text task: bytes, or a Hugging Face tokenizer (trained BPE or a file)."""

    def __init__(self, kind: str, hf: Any = None, *, source: str = BYTES):
        self.kind, self.hf, self.source = kind, hf, source
        if hf is None:
            self.vocab_size = 256
            self.sha256 = BYTES
            self.byte_level = True
            self.token_bytes = np.ones(256, dtype=np.int64)
        else:
            self.vocab_size = int(hf.get_vocab_size(with_added_tokens=True))
            if not 1 <= self.vocab_size <= MAX_VOCAB:
                raise CramError(f"tokenizer {source}: vocabulary size {self.vocab_size} is out of range")
            self.sha256 = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()
            self.byte_level, self.token_bytes = self._token_bytes()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def bytes(cls) -> Tokenizer:
        return cls(BYTES)

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> Tokenizer:
        """A Hugging Face tokenizer from its JSON text; one line when it does not parse."""
        tk = _hf()
        try:
            hf = tk.Tokenizer.from_str(text)
        except Exception as exc:  # the Rust parser raises a plain Exception
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CramError(f"tokenizer file {source} does not parse as a Hugging Face tokenizer.json ({first})") from None
        return cls("file", hf, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise CramError(f"tokenizer file {path} does not exist (text.tokenizer: {SPEC_HELP})")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CramError(f"cannot read the tokenizer file {path}: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CramError(f"tokenizer file {path} does not parse: it is not UTF-8 JSON") from None
        return cls.from_json(text, str(path))

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """A byte-level BPE of ``vocab_size`` tokens trained on ``texts`` (each cut by
        :func:`safe_chunks`), deterministic for the same input."""
        tk = _hf()
        hf = tk.Tokenizer(tk.models.BPE())
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                         show_progress=False, special_tokens=[])  # fmt: skip
        hf.train_from_iterator((c for t in texts for c in safe_chunks(t)), trainer)
        return cls("bpe", hf, source=f"{BPE_PREFIX}{vocab_size}")

    # --- use ------------------------------------------------------------------------------------
    def to_json(self) -> str | None:
        """The canonical JSON of a Hugging Face tokenizer (None for bytes)."""
        return None if self.hf is None else self.hf.to_str()

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (int64)."""
        if self.hf is None:
            return np.frombuffer(text.encode("utf-8", errors="surrogateescape"), dtype=np.uint8).astype(np.int64)
        chunks = list(safe_chunks(text)) if self.byte_level else [text]
        enc = self.hf.encode_batch_fast(chunks, add_special_tokens=False) if hasattr(self.hf, "encode_batch_fast") \
            else self.hf.encode_batch(chunks, add_special_tokens=False)  # fmt: skip
        ids = [np.asarray(e.ids, dtype=np.int64) for e in enc]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def encode_pieces(self, pieces: list[str]) -> list[np.ndarray]:
        """Token ids (int64) of each of ``pieces`` (cut at pre-token boundaries, e.g. by
        :class:`SafeChunker`), in one batch call."""
        if self.hf is None:
            return [np.frombuffer(p.encode("utf-8", errors="surrogateescape"), dtype=np.uint8).astype(np.int64)
                    for p in pieces]  # fmt: skip
        enc = self.hf.encode_batch_fast(pieces, add_special_tokens=False) if hasattr(self.hf, "encode_batch_fast") \
            else self.hf.encode_batch(pieces, add_special_tokens=False)  # fmt: skip
        return [np.asarray(e.ids, dtype=np.int64) for e in enc]

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self.hf is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self.hf.decode(ids, skip_special_tokens=False)

    def _token_bytes(self) -> tuple[bool, np.ndarray]:
        """(whether every token is a string of GPT-2 byte symbols, UTF-8 bytes per token id)."""
        vocab = self.hf.get_vocab(with_added_tokens=True)
        table = np.zeros(self.vocab_size, dtype=np.int64)
        dec = _byte_decoder()
        pre = json.loads(self.to_json()).get("pre_tokenizer") or {}
        kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers", []) if isinstance(p, dict)}
        byte_level = "ByteLevel" in kinds and all(all(ch in dec for ch in s) for s in vocab)
        for s, i in vocab.items():
            if 0 <= i < self.vocab_size:
                table[i] = len(s) if byte_level else len(self.hf.decode([i]).encode("utf-8"))
        return byte_level, table

    def describe(self) -> dict[str, Any]:
        """What a checkpoint and the eval rows record about the tokenizer."""
        return {"tokenizer": self.source, "tokenizer_sha256": self.sha256, "tokenizer_vocab": self.vocab_size}

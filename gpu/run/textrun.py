"""A text run's tokenizer in its run folder and checkpoints (docs/tasks.md, "Tokenizers").

A subword run keeps ``tokenizer.json`` in its run folder (written atomically when the folder is
opened) and the tokenizer's SHA-256, name and vocabulary in every checkpoint's signed metadata
(``tokenizer_sha256``, ``tokenizer``, ``tokenizer_vocab``, from the task's provenance). Whoever
reads the checkpoint (``cram eval``, ``cram generate``, a resume) gets the tokenizer through
:func:`run_tokenizer`, which checks it against that hash and the model's vocabulary: a replaced or
foreign ``tokenizer.json`` is one line, never a silent mis-decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cramkit import runs
from cramkit.errors import CramError
from cramkit.gpu.tasks.tokenizer import BYTES, Tokenizer
from cramkit.io import atomic_write_bytes, os_errors


def write_run_files(folder: Path, task: Any) -> None:
    """Write the files a task keeps in its run folder (``task.run_files()``: the tokenizer)."""
    files = task.run_files() if hasattr(task, "run_files") else {}
    for name, data in files.items():
        path = Path(folder) / name
        if path.is_file() and path.read_bytes() == data:
            continue
        with os_errors(f"writing {path}"):
            atomic_write_bytes(path, data)


def check_resumed_tokenizer(task: Any, meta: dict[str, Any] | None, where: Any) -> None:
    """On resume: the task's tokenizer must be the one the checkpoint was trained with."""
    if not meta or not hasattr(task, "tokenizer"):
        return
    want = meta.get("tokenizer_sha256", BYTES)
    have = task.tokenizer.sha256
    if want != have:
        raise CramError(f"checkpoint {where} was trained with tokenizer {meta.get('tokenizer', 'bytes')!r} "
                        f"(sha256 {want[:12]}), but text.tokenizer now gives {task.tokenizer.source!r} "
                        f"(sha256 {have[:12]}); the vocabulary does not match the checkpoint")  # fmt: skip


def run_tokenizer(checkpoint: Path, meta: dict[str, Any], model_vocab: int) -> Tokenizer:
    """The tokenizer a text checkpoint was trained with: bytes, or the run folder's
    ``tokenizer.json`` (else the cache's copy of the same hash), checked against the hash in the
    checkpoint's metadata and against the model's vocabulary."""
    from cramkit.gpu.tasks.prepared import cached_tokenizer

    sha = meta.get("tokenizer_sha256", BYTES)
    if sha == BYTES:
        tok = Tokenizer.bytes()
    else:
        path = runs.run_dir_of(checkpoint) / runs.TOKENIZER
        if path.is_file():
            tok = Tokenizer.from_file(path)
            if tok.sha256 != sha:
                raise CramError(f"{path} is not the tokenizer checkpoint {checkpoint} was trained with "
                                f"(sha256 {tok.sha256[:12]} != {sha[:12]} in the checkpoint's metadata); "
                                "its vocabulary does not match the checkpoint")  # fmt: skip
        else:
            tok = cached_tokenizer(sha)
            if tok is None:
                raise CramError(f"checkpoint {checkpoint} needs its tokenizer ({meta.get('tokenizer')!r}, sha256 "
                                f"{sha[:12]}), and {path} does not exist; copy the run's tokenizer.json there")  # fmt: skip
        tok.source = str(meta.get("tokenizer", tok.source))
    if tok.vocab_size != model_vocab:
        raise CramError(f"tokenizer vocabulary {tok.vocab_size} does not match checkpoint {checkpoint}'s "
                        f"vocabulary {model_vocab}")  # fmt: skip
    return tok

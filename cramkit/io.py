"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace``.

A reader never sees a half-written file, and a run killed mid-write leaves the previous
version in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically. NaN/inf are refused (not valid JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line and fsync it (a line is either fully there or not at all after a
    crash is *not* guaranteed by POSIX; readers must skip a truncated last line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Render a matplotlib figure and write it to ``path`` atomically, then close it.

    The format comes from the suffix (PNG when there is none). An unknown format or an
    unwritable path raises :class:`CramError` with one line.
    """
    import io

    import matplotlib.pyplot as plt

    from cramkit.errors import CramError

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi)
    except ValueError as exc:
        raise CramError(f"cannot write a plot to {path}: {exc}") from None
    finally:
        plt.close(fig)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise CramError(f"cannot write the plot to {path}: {exc.strerror}") from None


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_plot_path(path: str | os.PathLike) -> Path:
    """The one rule for ``--plot PATH`` in every command: PATH names a file ending in .png, .pdf
    or .svg; an existing folder (or a path ending in a separator) is refused, a missing parent
    folder is created when the plot is written. Raises :class:`CramError` with one line."""
    from cramkit.errors import CramError

    text = os.fspath(path)
    if text.endswith((os.sep, "/")) or os.path.isdir(text):
        raise CramError(f"--plot needs a file path ending in .png, .pdf or .svg, not the folder {text!r}")
    if Path(text).suffix.lower() not in PLOT_SUFFIXES:
        raise CramError(f"--plot must end in .png, .pdf or .svg, got {text!r}")
    return Path(text)

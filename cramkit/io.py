"""Atomic file writes and one-line OS errors.

Every writer here writes a temp file in the same folder (``.<name>.<random>.tmp``), flushes and
fsyncs it, renames it over the target with ``os.replace`` and fsyncs the folder, so a reader never
sees a half-written file and a process killed mid-write leaves the previous version in place (and
at worst a stale temp file, which :func:`remove_stale_temps` deletes; a run folder does that when
it is opened, see ``cramkit.gpu.run.runfolder``).

OS faults (no space, read-only file system, permission, missing parent, quota) become one
:class:`cramkit.errors.CramError` line through :func:`os_errors`, e.g.
``no space left on device while writing runs/a/last.safetensors``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cramkit.errors import CramError, OSFault

TEMP_SUFFIX = ".tmp"

#: errno -> the words used in the one-line message
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "the path is a folder",
    errno.EEXIST: "the path already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
    errno.ENOMEM: "out of memory",
}


CACHE_ENV = "CRAM_CACHE_DIR"


def cache_root() -> Path:
    """cram's cache folder (prepared corpora, tokenizers, compiled decode steps): ``$CRAM_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/cram``, else ``~/.cache/cram``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cram"


def describe_os_error(exc: OSError) -> str:
    """The reason of an OSError in words, without a traceback (``"no space left on device"``)."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


class os_errors(contextlib.ContextDecorator):
    """Turn an ``OSError`` raised inside into one :class:`CramError` line ``"<reason> while <what>"``
    (an :class:`cramkit.errors.OSFault`, which keeps the errno).

    Use as ``with os_errors(f"writing {path}"):`` or as a decorator ``@os_errors("reading the data")``.
    A :class:`CramError` raised inside passes through unchanged.
    """

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> os_errors:
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is not None and isinstance(exc, OSError):
            raise OSFault(f"{describe_os_error(exc)} while {self.what}", exc.errno) from None
        return False


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of the temp files the atomic writers create for ``path``."""
    return f".{Path(path).name}."


def _discard(tmp: str | os.PathLike) -> None:
    """Remove an unfinished temp file (already gone is fine)."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _publish(tmp: Path, path: Path) -> None:
    """Rename the finished temp file ``tmp`` over ``path`` (removing ``tmp`` if the rename fails),
    then fsync the folder so the rename survives a power cut."""
    try:
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` atomically when the block ends.

    If the block raises, the temp file is removed and ``path`` is untouched. OS errors are one
    :class:`CramError` line (``"no space left on device while writing PATH"``).
    """
    path = Path(path)
    with os_errors(f"writing {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            _discard(tmp)
            raise
        _publish(Path(tmp), path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + fsync + rename)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` an atomic replica of the finished file ``src``: a hard link renamed into place
    (no second copy on disk), or a full atomic copy where hard links are not supported."""
    src, dst = Path(src), Path(dst)
    with os_errors(f"writing {dst}"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f"{temp_prefix(dst)}link{os.getpid()}{TEMP_SUFFIX}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.ENOENT):
                raise
            atomic_write_bytes(dst, src.read_bytes())  # file system without hard links
            return
        _publish(tmp, dst)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files left in ``folder`` by atomic writes that were killed (``.*.tmp``).

    Only call this while owning the folder (a run folder's lock), or a live writer's temp file
    could be removed. Returns the files removed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


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
    """Append one JSON line and fsync it. A crash mid-append can leave a truncated last line
    (POSIX does not make appends atomic); readers skip a truncated last line."""
    path = Path(path)
    line = json.dumps(obj, allow_nan=False) + "\n"
    with os_errors(f"writing {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Render a matplotlib figure and write it to ``path`` atomically, then close it.

    The format comes from the suffix (PNG when there is none). An unknown format or an
    unwritable path raises :class:`CramError` with one line.
    """
    import io

    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi)
    except ValueError as exc:
        raise CramError(f"cannot write a plot to {path}: {exc}") from None
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_plot_path(path: str | os.PathLike) -> Path:
    """The one rule for ``--plot PATH`` in every command: PATH names a file ending in .png, .pdf
    or .svg; an existing folder (or a path ending in a separator) is refused, a missing parent
    folder is created when the plot is written. Raises :class:`CramError` with one line."""
    text = os.fspath(path)
    if text.endswith((os.sep, "/")) or os.path.isdir(text):
        raise CramError(f"--plot needs a file path ending in .png, .pdf or .svg, not the folder {text!r}")
    if Path(text).suffix.lower() not in PLOT_SUFFIXES:
        raise CramError(f"--plot must end in .png, .pdf or .svg, got {text!r}")
    return Path(text)

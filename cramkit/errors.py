"""Domain errors shared by every layer of cram.

Library code raises :class:`CramError` (a ``ValueError``) with one sentence that says what is
wrong and, where it helps, how to fix it. The CLI turns it into one clear line and exit status 2,
never a traceback.
"""

from __future__ import annotations


class CramError(ValueError):
    """Bad input: an out-of-range value, a missing or corrupt file, NaN in data, and the like."""


class OSFault(CramError):
    """An operating-system fault (no space left, a read-only file system, a permission, ...) as
    one line: ``"<reason> while <what>"`` (``cramkit.io.os_errors``). ``errno`` is the OS error
    number. Callers can tell it from bad input or a diverged run and give its own hint (free
    space, then resume)."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class NonFiniteValues(CramError):
    """An op's input holds NaN (or another value that only a blown-up model produces) inside a
    model's forward pass. The trainer reports it as divergence once an optimizer step has been
    taken; any other :class:`CramError` keeps its own message."""

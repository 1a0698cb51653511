"""Domain errors shared by every layer of cram.

Library code raises :class:`CramError` (a ``ValueError``) with one sentence that says what is
wrong and, where it helps, how to fix it. The CLI turns it into one clear line and exit status 2,
never a traceback.
"""

from __future__ import annotations


class CramError(ValueError):
    """Bad input: an out-of-range value, a missing or corrupt file, NaN in data, and the like."""

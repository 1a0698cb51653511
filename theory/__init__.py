"""cram.theory: closed forms (sympy), curve models, fitting and shared statistics.

The ground floor of the toolkit: it imports nothing from ``sim``, ``gpu`` or ``cram_cli``.
"""

from cramkit.errors import CramError

__all__ = ["CramError"]

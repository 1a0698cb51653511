"""The result contract shared by every command's library call.

Each command's library entry point is ``run(config, progress=None) -> Result`` (see
:mod:`cramkit.progress` for ``progress``). A Result owns its views, as lmfit's ``ModelResult``
does: :meth:`Result.to_json` (a JSON-able summary, strict: no NaN), :meth:`Result.report` (the
text the command prints) and :meth:`Result.plot` (a figure written atomically to a path). The CLI
only chooses which view to show; nothing is formatted or plotted in ``cramkit.cli``.

``Result.ok`` is False when the run measured something that makes the command fail (a criterion
that does not hold, a model that produced NaN); the CLI then exits with status 1 after showing
the result in the chosen view.
"""

from __future__ import annotations

import abc
import os
from typing import Any

from cramkit.errors import CramError


class Result(abc.ABC):
    """Base class: subclasses implement :meth:`to_json` and :meth:`report`, and :meth:`plot`
    where the result has a figure."""

    #: a short name for error messages and default plot titles
    name: str = "result"

    @property
    def ok(self) -> bool:
        return True

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (strict JSON: no NaN)."""

    @abc.abstractmethod
    def report(self) -> str:
        """The text the command prints."""

    def plot(self, path: str | os.PathLike) -> None:
        raise CramError(f"{self.name} has no plot")


def render_text(renderable: Any, width: int | None = None) -> str:
    """The plain text of a rich renderable (a table) for :meth:`Result.report`: at the terminal's
    width when stdout is one, else 160 columns, so piped reports keep every column readable."""
    import io
    import shutil
    import sys

    from rich.console import Console

    if width is None:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 160
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue().rstrip("\n")

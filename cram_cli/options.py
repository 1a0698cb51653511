"""Shared Click pieces: one factory per common option, one ParamType per value shape, and
:func:`emit`, which shows a :class:`cramkit.result.Result` in the view the user chose.

A command module is its options plus a few lines: build the library config, call
``run(config, progress)`` inside :func:`cramkit.progress.progress_bar`, hand the Result to
:func:`emit`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import click

from cramkit.errors import CramError
from cramkit.io import check_plot_path
from cramkit.jsonable import dumps
from cramkit.result import Result


class CommaList(click.ParamType):
    """A comma-separated list whose items are parsed by ``item`` (a callable or a Click type).

    Empty items (``1,,2``) and an empty list are errors; ``lo``/``hi`` bound numeric items
    (inclusive); ``finite`` refuses nan and inf.
    """

    name = "list"

    def __init__(self, item: Callable[[str], Any] | click.ParamType = float, *, lo: float | None = None,
                 hi: float | None = None, finite: bool = True, what: str | None = None, min_items: int = 1):  # fmt: skip
        self.item = item
        self.lo, self.hi, self.finite, self.min_items = lo, hi, finite, min_items
        self.what = what or {float: "numbers", int: "integers", str: "names"}.get(item, "values")  # type: ignore[call-overload]

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        parts = [p.strip() for p in str(value).split(",")]
        if any(p == "" for p in parts):
            self.fail(f"expected comma-separated {self.what} with no empty item, got {value!r}", param, ctx)
        out = []
        for p in parts:
            try:
                v = self.item.convert(p, param, ctx) if isinstance(self.item, click.ParamType) else self.item(p)
            except (ValueError, click.BadParameter):
                self.fail(f"expected comma-separated {self.what}, got {p!r} in {value!r}", param, ctx)
            if isinstance(v, (int, float)):
                if self.finite and not math.isfinite(v):
                    self.fail(f"{p!r} is not a finite number", param, ctx)
                if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
                    self.fail(f"{p!r} is outside [{self.lo}, {self.hi}]", param, ctx)
            out.append(v)
        if len(out) < self.min_items:
            self.fail(f"give at least {self.min_items} item(s)", param, ctx)
        return tuple(out)


class PlotPath(click.ParamType):
    """An image path under the one ``--plot`` rule of :func:`cramkit.io.check_plot_path`."""

    name = "PATH"

    def convert(self, value, param, ctx):
        if value is None:
            return None
        try:
            return str(check_plot_path(value))
        except CramError as exc:
            self.fail(str(exc).removeprefix("--plot "), param, ctx)


def json_option(help: str = "Print one JSON object instead of the text report."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def plot_option(help: str = "Write the figure to this image (.png, .pdf or .svg; not a folder)."):
    return click.option("--plot", "plot", type=PlotPath(), default=None, help=help)


def quiet_option(help: str = "No progress bar."):
    return click.option("--quiet", is_flag=True, help=help)


def output_options(*, plot: bool = True, plot_help: str | None = None, json_help: str | None = None):
    """``--json``, ``--plot`` (when ``plot``) and ``--quiet`` in one decorator."""

    def deco(f):
        f = quiet_option()(f)
        if plot:
            f = plot_option(*( (plot_help,) if plot_help else ()))(f)
        return json_option(*((json_help,) if json_help else ()))(f)

    return deco


def emit(result, *, as_json: bool = False, plot: str | None = None) -> None:
    """Show ``result``: its JSON or its text report, then its plot (when asked); exit 1 when the
    result says the run failed (``result.ok`` is False). The result is printed before the plot is
    written, so a plot that cannot be written (a full disk, a read-only folder: one error line,
    exit 2) does not lose what was computed."""
    if plot and type(result).plot is Result.plot:
        result.plot(plot)  # the base class: one line saying this result has no plot, before any output
    if as_json:
        click.echo(dumps(result.to_json()))
    else:
        click.echo(result.report())
    if plot:
        result.plot(plot)
        if not as_json:
            click.echo(f"plot written to {plot}", file=sys.stderr)
    if not result.ok:
        sys.exit(1)

"""One progress type for every long-running library call, and one bar that draws it.

Library code takes ``progress: Progress | None`` and calls ``progress(stage, done, total)``:
``stage`` names the current phase ("fit M1", "train", "split iid"), ``done`` and ``total`` count
its units (steps, sequences, resamples). The library never draws anything itself; the CLI hands
it :func:`progress_bar`, tests hand it a list's ``append`` or nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    """``progress(stage, done, total)``: ``done`` of ``total`` units of ``stage`` are finished."""

    def __call__(self, stage: str, done: float, total: float) -> None: ...


def no_progress(stage: str, done: float, total: float) -> None:
    """The progress callback that reports nothing."""


def report_to(progress: Progress | None) -> Progress:
    """``progress`` itself, or :func:`no_progress` when it is None."""
    return no_progress if progress is None else progress


def track(items: Iterable[T], progress: Progress | None, stage: str, total: int | None = None) -> Iterator[T]:
    """Yield from ``items``, reporting ``stage`` after each one (``total`` defaults to ``len``)."""
    tick = report_to(progress)
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    tick(stage, 0, total)
    for i, x in enumerate(items, 1):
        yield x
        tick(stage, i, total)


@contextmanager
def progress_bar(enabled: bool = True, *, status: Iterable[str] = ()) -> Iterator[Progress]:
    """A rich progress bar on stderr, one row per stage; silent when stderr is not a terminal.

    Yields the :class:`Progress` callback to pass to the library. A stage's row appears at its
    first report and stays until the bar closes (the bar is transient: nothing is left on screen).
    """
    if not enabled or not sys.stderr.isatty():
        yield no_progress
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    rows: dict[str, int] = {}
    with Bar(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             console=Console(stderr=True), transient=True) as bar:  # fmt: skip

        def tick(stage: str, done: float, total: float) -> None:
            if stage not in rows:
                rows[stage] = bar.add_task(stage, total=total)
            bar.update(rows[stage], completed=done, total=total)

        yield tick

"""Progress bars for long fits: rich on stderr, only when stderr is a terminal and not quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator


def progress_iter(it: Iterable, *, total: int, label: str, quiet: bool = False) -> Iterator:
    """Yield from ``it``, drawing a rich progress bar on stderr when that is a TTY."""
    if quiet or not sys.stderr.isatty():
        yield from it
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        for x in it:
            yield x
            bar.advance(task)

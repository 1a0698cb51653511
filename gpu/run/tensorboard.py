"""Optional TensorBoard logging (``cram train --tensorboard``; the ``tensorboard`` extra).

metrics.jsonl stays the record; this mirrors each evaluation record into TensorBoard event files
in ``RUN/tensorboard/``: one scalar per numeric field at the record's step (nested tables such as
``rho_by_class`` as ``rho_by_class/letter``), so the utilization curve (``rho_all``, ``rho_q``)
and the losses are there to read. Without the extra installed the run is refused before it
starts, with one line saying what to install.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cramkit import runs
from cramkit.errors import CramError

INSTALL = "pip install 'cram-toolkit[tensorboard]' (or: pip install tensorboard)"


def check_available() -> None:
    """One line when the ``tensorboard`` package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise CramError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}") from None


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a metrics record, flattened (``{"a": {"b": 1}}`` -> ``{"a/b": 1.0}``);
    ``step`` and non-numbers are left out."""
    out: dict[str, float] = {}
    for k, v in record.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(scalars(v, prefix=f"{name}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(float(v)):
            out[name] = float(v)
    return out


class TensorBoardLogger:
    """An ``on_eval`` callback that writes every evaluation record's scalars (opened lazily)."""

    def __init__(self, run_dir: str | Path):
        check_available()
        self.path = Path(run_dir) / runs.TENSORBOARD
        self.writer = None

    def __call__(self, record: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.path))
        step = int(record.get("step", 0))
        for k, v in scalars(record).items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

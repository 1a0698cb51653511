"""``cram eval``'s command contract: ``run(EvalSettings(...), progress) -> EvalReport`` (the table,
JSON and the accuracy-vs-attention plot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cramkit.errors import CramError
from cramkit.gpu.run.eval import evaluate_checkpoints, parse_split
from cramkit.io import save_figure
from cramkit.progress import Progress
from cramkit.result import Result, render_text

COLUMNS = ("router", "step", "acc_r", "acc_e", "acc", "rho_q", "rho_all", "phi", "phi_model", "speedup_measured")


TOKEN_COLUMNS = ("router", "step", "acc", "rho_target", "rho_all", "val_loss", "n_targets")


#: the most probe sequences one evaluation takes: the per-query records grow with the count and
#: the time linearly (about 1 s per 1,000 quick-preset sequences on one CPU core), so a count
#: far beyond this is a typo or days of work, refused up front rather than run
MAX_EVAL_SEQUENCES = 1 << 20


def check_sequence_count(sequences: int) -> None:
    """Refuse an evaluation set larger than :data:`MAX_EVAL_SEQUENCES` (one line)."""
    if sequences > MAX_EVAL_SEQUENCES:
        raise CramError(f"at most {MAX_EVAL_SEQUENCES} evaluation sequences, got {sequences} "
                        "(evaluation time and memory grow linearly with the count)")


@dataclass(frozen=True)
class EvalSettings:
    """What ``cram eval`` evaluates: checkpoints (files or run folders) on an SRCD split, or on a
    token file (``data``)."""

    checkpoints: tuple[str, ...]
    split: str = "iid"
    sequences: int = 1024
    data: str | None = None
    errors: str = "strict"  # a text file that is not UTF-8: refuse, or read bad bytes as U+FFFD ("replace")

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise CramError("give at least one checkpoint")
        if self.sequences < 1:
            raise CramError("the number of evaluation sequences must be >= 1")
        check_sequence_count(self.sequences)
        if self.data is None:
            parse_split(self.split)


def fmt_cell(v) -> str:
    """A table cell: '-' for None, 4 decimals for a float."""
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def checkpoint_table(title: str, columns, rows: list[dict[str, Any]]) -> str:
    """One rendered table, a row per checkpoint: its path, then ``columns`` of each row."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("checkpoint")
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["checkpoint"], *(fmt_cell(r.get(c)) for c in columns))
    return render_text(table)


@dataclass
class EvalReport(Result):
    """The rows of ``cram eval`` (one per checkpoint) and their Pareto front."""

    result: dict[str, Any]
    sequences: int = 1024
    name = "cram eval"

    def to_json(self) -> dict[str, Any]:
        return self.result

    def report(self) -> str:
        from rich.table import Table


        res = self.result
        if res.get("kind") == "text":
            from cramkit.gpu.run.eval_text import text_report

            return text_report(res)
        tokens = "data" in res
        cols = TOKEN_COLUMNS if tokens else COLUMNS
        title = f"token file {res['data']}" if tokens else f"split {res['split']} ({self.sequences} sequences)"
        parts = [checkpoint_table(title, cols, res["rows"])]
        x = "rho_target" if tokens else "rho_q"
        if res["pareto"]:
            pt = Table(title=f"accuracy vs attention: the Pareto front (lower {x}, higher acc)")
            extra = () if tokens else ("acc_r", "acc_e")
            for c in ("checkpoint", "router", x, "acc", *extra):
                pt.add_column(c, justify="right")
            for i in res["pareto"]:
                r = res["rows"][i]
                pt.add_row(r["checkpoint"], r["router"], *(fmt_cell(r[c]) for c in (x, "acc", *extra)))
            parts.append(render_text(pt))
        for r in res["rows"] if tokens else ():
            if r.get("by_label"):
                lt = Table(title=f"by label: {r['checkpoint']}")
                for c in ("label", "n", "acc", "rho"):
                    lt.add_column(c, justify="right")
                for row in r["by_label"]:
                    lt.add_row(*(fmt_cell(row[c]) for c in ("label", "n", "acc", "rho")))
                parts.append(render_text(lt))
        return "\n".join(parts)

    def plot(self, path: str | os.PathLike) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        res = self.result
        if res.get("kind") == "text":
            from cramkit.gpu.run.eval_text import text_plot

            return text_plot(res, path)
        x = "rho_target" if "data" in res else "rho_q"
        keys = (("acc", "o"),) if "data" in res else (("acc", "o"), ("acc_r", "^"), ("acc_e", "v"))
        fig, ax = plt.subplots(figsize=(5.5, 4))
        rows = res["rows"]
        for key, marker in keys:
            pts = [r for r in rows if r.get(key) is not None and r.get(x) is not None]
            ax.scatter([r[x] for r in pts], [r[key] for r in pts], marker=marker, label=key)
        for r in rows:
            if r.get(x) is not None and r.get("acc") is not None:
                ax.annotate(r["router"], (r[x], r["acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = [rows[i] for i in res["pareto"]]
        if front:
            ax.plot([r[x] for r in front], [r["acc"] for r in front], "k--", lw=0.8, label="Pareto front (acc)")
        ax.set_xlabel("attention per target position rho_target" if "data" in res else "attention per query rho_q")
        ax.set_ylabel("accuracy")
        ax.set_title(f"token file {Path(res['data']).name}" if "data" in res else f"split {res['split']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, path)


def run(config: EvalSettings, progress: Progress | None = None) -> EvalReport:
    """Evaluate ``config.checkpoints``; the rows and Pareto front as an :class:`EvalReport`."""
    res = evaluate_checkpoints(list(config.checkpoints), config.split, sequences=config.sequences,
                               data=config.data, progress=progress, errors=config.errors)  # fmt: skip
    return EvalReport(res, config.sequences)

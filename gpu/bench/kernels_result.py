"""The result of ``cram bench kernels``: one row per (op, T, rho, baseline) case, as JSON, a
table and a speedup-versus-rho plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cramkit.result import Result, render_text

from .common import rho_text

COLUMNS = ("op", "T", "rho", "algorithm", "ms", "baseline", "baseline ms", "speedup", "FLOP limit")
TEXT_COLUMNS = ("op", "algorithm", "baseline")  # left-aligned; the numbers are right-aligned
#: the baselines that do all the dense work (the plot's speedups are against these)
DENSE_BASELINES = ("sdpa_dense", "model_rho_1")


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


@dataclass
class KernelBenchResult(Result):
    """The machine and the cases (keys in :data:`cramkit.gpu.bench.kernels.CASE_KEYS`)."""

    machine: dict
    cases: list[dict] = field(default_factory=list)
    name: str = "bench kernels"

    def to_json(self) -> dict:
        return {"machine": self.machine, "cases": self.cases}

    def title(self) -> str:
        m = self.machine
        return (f"kernels on {m['device']} ({m.get('gpu') or m['processor']}, {m['torch_threads']} threads, "
                f"torch {m['torch']}), {m['date']}")  # fmt: skip

    def report(self, width: int | None = None) -> str:
        """The table, as rich draws it (``width``: the terminal's when stdout is one, else 160)."""
        from rich.table import Table

        table = Table(title=self.title())
        for col in COLUMNS:
            table.add_column(col, justify="left" if col in TEXT_COLUMNS else "right")
        for c in self.cases:
            table.add_row(
                c["op"], str(c["T"]), rho_text(c["rho"]), c["algorithm"], _fmt(c["ms"], ".2f"), c["baseline"],
                _fmt(c["baseline_ms"], ".2f"), _fmt(c["speedup"], ".2f") + "x", _fmt(c["flop_limit"], ".1f"),
            )
        return render_text(table, width)

    def plot(self, path: str | os.PathLike) -> None:
        """Speedup over the dense baseline against rho, one line per (op, T), with 1/rho dotted."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cramkit.io import save_figure

        fig, ax = plt.subplots(figsize=(6, 4))
        groups: dict[tuple, list] = {}
        for c in self.cases:
            if c["rho"] is not None and c["baseline"] in DENSE_BASELINES:
                groups.setdefault((c["op"], c["T"]), []).append((c["rho"], c["speedup"]))
        for (op, t_len), pts in sorted(groups.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=f"{op} T={t_len}")
        rhos = sorted({c["rho"] for c in self.cases if c["rho"] is not None})
        if rhos:
            ax.plot(rhos, [1 / r for r in rhos], "k:", label="1/rho (work ratio)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("routed fraction rho")
        ax.set_ylabel("speedup over the dense baseline")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, path)

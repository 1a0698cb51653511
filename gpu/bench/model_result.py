"""The result of ``cram bench model``: tables per mode, speed-ups against the dense hybrid, the
crossover context length and the issue #9 targets, as JSON, text and a plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cramkit.result import Result

from .common import rho_text

ATTENTION_MODELS = ("cram", "dense", "transformer")

# Issue #9 targets (CPU, 1 thread, same run): (name, mode, T, numerator, denominator, bound, kind).
# The ratio is us_per_token(numerator) / us_per_token(denominator); "min" means ratio >= bound,
# "max" means ratio <= bound. cram entries are at rho = 1/64.
TARGETS = (
    ("train step T=4096: rho=1/64 >= 3x faster than dense", "train", 4096, "dense", "cram", 3.0, "min"),
    ("train step T=4096: rho=1/64 within 1.15x of the no-attention floor", "train", 4096, "cram", "none", 1.15, "max"),
    ("decode at context 16384: rho=1/64 >= 8x dense tokens/s", "decode", 16384, "dense", "cram", 8.0, "min"),
    ("prefill T=4096: rho=1/64 >= 3x faster than dense", "prefill", 4096, "dense", "cram", 3.0, "min"),
    ("train T=4096: no-attention floor >= 4x faster per token than the transformer", "train", 4096, "transformer", "none", 4.0, "min"),
)
TARGET_RHO = 1 / 64


def label(model: str, rho: float | None) -> str:
    return model if rho is None else f"{model} rho={rho_text(rho)}"


@dataclass
class ModelBenchResult(Result):
    """Rows (one per case, see :data:`cramkit.gpu.bench.model.CASE_KEYS`), the machine and the config."""

    machine: dict
    config: dict
    cases: list[dict] = field(default_factory=list)
    name: str = "bench model"

    # -- lookups ---------------------------------------------------------------------------------
    def _us(self, mode: str, model: str, t_len: int, rho: float | None = None) -> float | None:
        for c in self.cases:
            if c["mode"] == mode and c["model"] == model and c["T"] == t_len and c["us_per_token"] is not None:
                if rho is None or (c["rho"] is not None and abs(c["rho"] - rho) < 1e-12):
                    return c["us_per_token"]
        return None

    def _best_cram(self, mode: str, t_len: int) -> tuple[float, float] | None:
        """(us_per_token, rho) of the fastest routed cram case (rho < 1 when there is one)."""
        rows = [c for c in self.cases if c["mode"] == mode and c["model"] == "cram" and c["T"] == t_len
                and c["us_per_token"] is not None]  # fmt: skip
        routed = [c for c in rows if c["rho"] < 1] or rows
        if not routed:
            return None
        best = min(routed, key=lambda c: c["us_per_token"])
        return best["us_per_token"], best["rho"]

    def crossover(self, mode: str) -> dict:
        """The smallest measured T from which on routed cram (best rho) is the fastest model that
        has attention (cram, dense, transformer) at every larger measured T."""
        ts = sorted({c["T"] for c in self.cases if c["mode"] == mode})
        wins = {}
        for t_len in ts:
            best = self._best_cram(mode, t_len)
            others = [self._us(mode, m, t_len) for m in ("dense", "transformer")]
            others = [o for o in others if o is not None]
            if best is None or not others:
                continue
            wins[t_len] = best[0] < min(others)
        if not wins:
            return {"mode": mode, "T": None, "measured": False, "wins": {}}
        cross = None
        for t_len in sorted(wins, reverse=True):
            if not wins[t_len]:
                break
            cross = t_len
        return {"mode": mode, "T": cross, "measured": True, "wins": {str(k): v for k, v in wins.items()}}

    def targets(self) -> list[dict]:
        out = []
        for name, mode, t_len, num, den, bound, kind in TARGETS:
            a = self._us(mode, num, t_len, TARGET_RHO if num == "cram" else None)
            b = self._us(mode, den, t_len, TARGET_RHO if den == "cram" else None)
            ratio = None if a is None or b is None else a / b
            met = None if ratio is None else (ratio >= bound if kind == "min" else ratio <= bound)
            out.append({"target": name, "mode": mode, "T": t_len, "ratio": ratio, "bound": bound,
                        "kind": kind, "met": met})  # fmt: skip
        return out

    # -- views -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        modes = [m for m in ("train", "prefill", "decode") if any(c["mode"] == m for c in self.cases)]
        return {
            "machine": self.machine,
            "config": self.config,
            "cases": self.cases,
            "crossover": [self.crossover(m) for m in modes],
            "targets": self.targets(),
        }

    def _table(self, mode: str) -> list[str]:
        rows = [c for c in self.cases if c["mode"] == mode]
        ts = sorted({c["T"] for c in rows})
        order = ("cram", "dense", "none", "ssm", "transformer")
        keyed = sorted({(order.index(c["model"]), -(c["rho"] or 0), label(c["model"], c["rho"])) for c in rows})
        labels = [k[2] for k in keyed]
        width = max(len(x) for x in labels) + 2
        head = "model".ljust(width) + "".join(f"{t:>10}" for t in ts)
        lines = [f"{mode}: microseconds per token (batch {self.config.get('batch')})", head]
        speed = [f"{mode}: speed-up over the dense hybrid (dense us / model us)", head]
        notes: dict[str, list[str]] = {}
        for lab in labels:
            cells, ups = [], []
            for t_len in ts:
                c = next((r for r in rows if r["T"] == t_len and label(r["model"], r["rho"]) == lab), None)
                us = None if c is None else c["us_per_token"]
                if c is not None and c["note"] and lab not in notes.setdefault(c["note"], []):
                    notes[c["note"]].append(lab)
                dense = self._us(mode, "dense", t_len)
                cells.append("-" if us is None else f"{us:.1f}")
                ups.append("-" if us is None or dense is None else f"{dense / us:.2f}x")
            lines.append(lab.ljust(width) + "".join(f"{x:>10}" for x in cells))
            speed.append(lab.ljust(width) + "".join(f"{x:>10}" for x in ups))
        peak = [f"{mode}: peak memory above the pre-case resident set, MB", head]
        for lab in labels:
            cells = []
            for t_len in ts:
                c = next((r for r in rows if r["T"] == t_len and label(r["model"], r["rho"]) == lab), None)
                cells.append("-" if c is None or c["peak_mb"] is None else f"{c['peak_mb']:.1f}")
            peak.append(lab.ljust(width) + "".join(f"{x:>10}" for x in cells))
        out = lines + [""] + speed + [""] + peak + [f"{note}: {', '.join(labs)}" for note, labs in notes.items()]
        cross = self.crossover(mode)
        if not cross["measured"]:
            out.append(f"crossover ({mode}): not measured (needs cram and dense or transformer rows)")
        elif cross["T"] is None:
            out.append(f"crossover ({mode}): routed cram is not the fastest model with attention at the largest T measured")
        else:
            out.append(f"crossover ({mode}): from T={cross['T']} on, routed cram (best rho) is the fastest model with attention")
        return out

    def report(self) -> str:
        m = self.machine
        head = (f"bench model on {m['device']} ({m.get('gpu') or m['processor']}, {m['torch_threads']} threads, "
                f"torch {m['torch']}), {m['date']}, load {m.get('load_average_1min')}")  # fmt: skip
        lines = [head, f"peak memory: {m.get('memory_method') or 'not measured'}", ""]
        for mode in ("train", "prefill", "decode"):
            if any(c["mode"] == mode for c in self.cases):
                lines += self._table(mode) + [""]
        lines.append("issue #9 targets (ratios of us/token in this run):")
        for t in self.targets():
            if t["ratio"] is None:
                lines.append(f"  not measured  {t['target']}")
            else:
                lines.append(f"  {'met   ' if t['met'] else 'MISSED'}  {t['target']}: {t['ratio']:.2f}x")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cramkit.io import save_figure

        modes = [m for m in ("train", "prefill", "decode") if any(c["mode"] == m and c["us_per_token"] for c in self.cases)]
        fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(4.5 * max(1, len(modes)), 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            series: dict[str, list[tuple[int, float]]] = {}
            for c in self.cases:
                if c["mode"] == mode and c["us_per_token"] is not None:
                    series.setdefault(label(c["model"], c["rho"]), []).append((c["T"], c["us_per_token"]))
            for lab, pts in series.items():
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, label=lab)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context length T")
            ax.set_ylabel("microseconds per token")
            ax.set_title(mode)
            ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, path)

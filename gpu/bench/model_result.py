"""The result of ``cram bench model``: tables per size and mode, every ratio against the plain
hybrid first (then against CRAM rho=1) beside its FLOP-predicted ratio and measured/predicted,
CRAM's FLOPs by part, the crossover context length (measured and FLOP-predicted) and the issue #9
targets, as JSON, text and a plot."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cramkit.result import Result

from .common import rho_text

#: the baselines every ratio is reported against, in this order
BASELINES = ("hybrid", "cram-rho1")
ORDER = ("cram", "hybrid", "cram-rho1", "none", "ssm", "transformer")
ALIASES = {"dense": "cram-rho1"}
NAMES = {"hybrid": "plain hybrid", "cram-rho1": "CRAM ρ=1"}
#: models a user could pick instead of routed CRAM, for the crossover
RIVALS = ("hybrid", "transformer")
DEFAULT_SIZE = (64, 256)

# Issue #9 targets (CPU, 1 thread, same run, width 64, vocabulary 256): (name, mode, T, numerator,
# denominator, bound, kind). The ratio is us_per_token(numerator) / us_per_token(denominator); "min"
# means ratio >= bound, "max" means ratio <= bound. cram entries are at rho = 1/64.
TARGETS = (
    ("train step T=4096: rho=1/64 >= 3x faster than CRAM rho=1 (dense)", "train", 4096, "cram-rho1", "cram", 3.0, "min"),
    ("train step T=4096: rho=1/64 within 1.15x of the no-attention floor", "train", 4096, "cram", "none", 1.15, "max"),
    ("decode at context 16384: rho=1/64 >= 8x CRAM rho=1 (dense) tokens/s", "decode", 16384, "cram-rho1", "cram", 8.0, "min"),
    ("prefill T=4096: rho=1/64 >= 3x faster than CRAM rho=1 (dense)", "prefill", 4096, "cram-rho1", "cram", 3.0, "min"),
    ("train T=4096: no-attention floor >= 4x faster per token than the transformer", "train", 4096, "transformer", "none", 4.0, "min"),
)
TARGET_RHO = 1 / 64


def label(model: str, rho: float | None) -> str:
    return model if rho is None else f"{model} rho={rho_text(rho)}"


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 1e-12


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


@dataclass
class ModelBenchResult(Result):
    """Rows (one per case, see :data:`cramkit.gpu.bench.model.CASE_KEYS`), the machine and the config."""

    machine: dict
    config: dict
    cases: list[dict] = field(default_factory=list)
    name: str = "bench model"

    def __post_init__(self) -> None:
        width = self.config.get("d_model") or DEFAULT_SIZE[0]
        for c in self.cases:  # rows of older runs: "dense" and no size fields
            c["model"] = ALIASES.get(c["model"], c["model"])
            c.setdefault("width", width)
            c.setdefault("vocab", DEFAULT_SIZE[1])
            c.setdefault("flops_per_token", None)
            c.setdefault("flop_parts", None)

    # -- lookups ---------------------------------------------------------------------------------
    def sizes(self) -> list[tuple[int, int]]:
        return sorted({(c["width"], c["vocab"]) for c in self.cases})

    def _row(self, size, mode, model, t_len, rho=None) -> dict | None:
        for c in self.cases:
            if ((c["width"], c["vocab"]) == tuple(size) and c["mode"] == mode and c["model"] == model and c["T"] == t_len
                    and (rho is None or _same(c["rho"], rho))):  # fmt: skip
                return c
        return None

    def _val(self, key, size, mode, model, t_len, rho=None) -> float | None:
        c = self._row(size, mode, model, t_len, rho)
        return None if c is None else c.get(key)

    def _us(self, mode: str, model: str, t_len: int, rho: float | None = None, size=DEFAULT_SIZE) -> float | None:
        return self._val("us_per_token", size, mode, model, t_len, rho)

    def ratio(self, c: dict, baseline: str) -> dict:
        """Speed-up of row ``c`` over ``baseline`` at the same size, mode and T: measured (baseline
        µs / row µs), FLOP-predicted (baseline FLOPs / row FLOPs per token) and measured/predicted."""
        size = (c["width"], c["vocab"])
        b_us = self._val("us_per_token", size, c["mode"], baseline, c["T"])
        b_fl = self._val("flops_per_token", size, c["mode"], baseline, c["T"])
        meas = b_us / c["us_per_token"] if b_us and c.get("us_per_token") else None
        pred = b_fl / c["flops_per_token"] if b_fl and c.get("flops_per_token") else None
        return {"baseline": baseline, "measured": meas, "predicted": pred,
                "quotient": meas / pred if meas is not None and pred else None}  # fmt: skip

    def ratios(self) -> list[dict]:
        out = []
        for c in self.cases:
            if c.get("us_per_token") is None and c.get("flops_per_token") is None:
                continue
            for base in BASELINES:
                r = self.ratio(c, base)
                if r["measured"] is None and r["predicted"] is None:
                    continue
                out.append({k: c[k] for k in ("width", "vocab", "mode", "model", "rho", "T")} | r)
        return out

    def _best_cram(self, size, mode: str, t_len: int, key: str = "us_per_token") -> tuple[float, float] | None:
        """(value, rho) of the cheapest routed cram case by ``key`` (rho < 1 when there is one)."""
        rows = [c for c in self.cases if (c["width"], c["vocab"]) == tuple(size) and c["mode"] == mode
                and c["model"] == "cram" and c["T"] == t_len and c.get(key) is not None]  # fmt: skip
        rows = [c for c in rows if c["rho"] > 0]  # rho 0 (decode's never-attending step) is no routing
        routed = [c for c in rows if c["rho"] < 1] or rows
        if not routed:
            return None
        best = min(routed, key=lambda c: c[key])
        return best[key], best["rho"]

    def crossover(self, mode: str, size=None, key: str = "us_per_token", rivals=RIVALS) -> dict:
        """The smallest measured T from which routed cram (best rho) is cheaper (by ``key``:
        measured µs or FLOPs per token) than every rival (the plain hybrid and the transformer)
        at every larger measured T."""
        size = tuple(size) if size is not None else (self.sizes() or [DEFAULT_SIZE])[0]
        ts = sorted({c["T"] for c in self.cases if c["mode"] == mode and (c["width"], c["vocab"]) == size})
        wins = {}
        for t_len in ts:
            best = self._best_cram(size, mode, t_len, key)
            others = [self._val(key, size, mode, m, t_len) for m in rivals]
            others = [o for o in others if o is not None]
            if best is None or not others:
                continue
            wins[t_len] = best[0] < min(others)
        base = {"mode": mode, "width": size[0], "vocab": size[1], "by": "time" if key == "us_per_token" else "flops"}
        if not wins:
            return base | {"T": None, "measured": False, "wins": {}}
        cross = None
        for t_len in sorted(wins, reverse=True):
            if not wins[t_len]:
                break
            cross = t_len
        return base | {"T": cross, "measured": True, "wins": {str(k): v for k, v in wins.items()}}

    def crossovers(self) -> list[dict]:
        out = []
        for size in self.sizes():
            for mode in self._modes():
                out.append(self.crossover(mode, size))
                out.append(self.crossover(mode, size, key="flops_per_token"))
        return out

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

    def _modes(self) -> list[str]:
        return [m for m in ("train", "prefill", "decode") if any(c["mode"] == m for c in self.cases)]

    # -- views -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "machine": self.machine,
            "config": self.config,
            "cases": self.cases,
            "ratios": self.ratios(),
            "crossover": [self.crossover(m) for m in self._modes()],
            "crossovers": self.crossovers(),
            "targets": self.targets(),
        }

    def _labels(self, rows: list[dict]) -> list[tuple[str, str, float | None]]:
        keyed = sorted({(ORDER.index(c["model"]), -(c["rho"] or 0), c["model"], c["rho"]) for c in rows},
                       key=lambda k: (k[0], k[1]))  # fmt: skip
        return [(label(m, r), m, r) for _, _, m, r in keyed]

    def _table(self, size, mode: str) -> list[str]:
        rows = [c for c in self.cases if c["mode"] == mode and (c["width"], c["vocab"]) == tuple(size)]
        ts = sorted({c["T"] for c in rows})
        labels = self._labels(rows)
        width = max(len(x[0]) for x in labels) + 2
        cw = 22
        head = "model".ljust(width) + "".join(f"{'T=' + str(t):>{cw}}" for t in ts)

        def cell(lab, t_len):
            return next((r for r in rows if r["T"] == t_len and label(r["model"], r["rho"]) == lab), None)

        def grid(title, fmt):
            out = [title, head]
            for lab, _, _ in labels:
                out.append(lab.ljust(width) + "".join(f"{fmt(cell(lab, t)):>{cw}}" for t in ts))
            return out + [""]

        out = grid(f"{mode}: microseconds per token, MFLOP per token",
                   lambda c: "-" if c is None else
                   (("-" if c["us_per_token"] is None else f"{c['us_per_token']:.1f}") + " us, "
                    + ("-" if c.get("flops_per_token") is None else f"{c['flops_per_token'] / 1e6:.3g}") + " MF"))  # fmt: skip
        for base in BASELINES:
            if not any(r["model"] == base for r in rows):
                continue

            def fmt(c, base=base):
                if c is None:
                    return "-"
                r = self.ratio(c, base)
                q = "-" if r["quotient"] is None else f"{r['quotient']:.2f}"
                return f"{_x(r['measured'])} / {_x(r['predicted'])} ({q})"

            out += grid(f"{mode}: speed-up over the {NAMES[base]}: measured / FLOP-predicted (measured/predicted)", fmt)
        parts = [c for c in rows if c.get("flop_parts")]
        if parts:
            out.append(f"{mode}: CRAM FLOPs by part, MFLOP per token")
            for c in sorted(parts, key=lambda c: (ORDER.index(c["model"]), -(c["rho"] or 0), c["T"])):
                p = c["flop_parts"]
                out.append(f"  {label(c['model'], c['rho'])} T={c['T']}: "
                           + ", ".join(f"{k} {v / 1e6:.3g}" for k, v in p.items()))  # fmt: skip
            out.append("")
        if any(r["peak_mb"] is not None for r in rows):
            out += grid(f"{mode}: peak memory above the pre-case resident set, MB",
                        lambda c: "-" if c is None or c["peak_mb"] is None else f"{c['peak_mb']:.1f}")  # fmt: skip
        notes: dict[str, list[str]] = {}
        for r in rows:
            if r["note"]:
                notes.setdefault(r["note"], []).append(label(r["model"], r["rho"]))
        out += [f"{note}: {', '.join(sorted(set(labs)))}" for note, labs in notes.items()]
        for key, what in (("us_per_token", "measured"), ("flops_per_token", "FLOP-predicted")):
            cross = self.crossover(mode, size, key=key)
            if not cross["measured"]:
                out.append(f"crossover ({mode}, {what}): not available (needs cram and the plain hybrid or the transformer)")
            elif cross["T"] is None:
                out.append(f"crossover ({mode}, {what}): routed cram is not cheaper than the plain hybrid and the "
                           "transformer at the largest T")  # fmt: skip
            else:
                out.append(f"crossover ({mode}, {what}): from T={cross['T']} on, routed cram (best rho) is cheaper "
                           "than the plain hybrid and the transformer")  # fmt: skip
        return out

    def report(self) -> str:
        m = self.machine
        head = (f"bench model on {m['device']} ({m.get('gpu') or m['processor']}, {m['torch_threads']} threads, "
                f"torch {m['torch']}), {m['date']}, load {m.get('load_average_1min')}")  # fmt: skip
        if m.get("elapsed_s") is not None:
            head += f", {m['elapsed_s']:.0f} s"
        lines = [head, f"peak memory: {m.get('memory_method') or 'not measured'}",
                 "ratios: speed-ups (baseline us / model us), each beside its FLOP-predicted ratio "
                 "(baseline FLOPs / model FLOPs per token) and measured/predicted", ""]  # fmt: skip
        for size in self.sizes():
            blocks = self.config.get("blocks") or self.config.get("pattern")
            lines.append(f"== width {size[0]}, vocabulary {size[1]}, blocks {blocks}, batch {self.config.get('batch')} ==")
            for mode in self._modes():
                if any(c["mode"] == mode and (c["width"], c["vocab"]) == size for c in self.cases):
                    lines += self._table(size, mode) + [""]
        lines.append("issue #9 targets (width 64, vocabulary 256; ratios of us/token in this run):")
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

        panels = [(s, m) for s in self.sizes() for m in self._modes()
                  if any(c["mode"] == m and (c["width"], c["vocab"]) == s and c["us_per_token"] for c in self.cases)]  # fmt: skip
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 4), squeeze=False)
        for ax, (size, mode) in zip(axes[0], panels):
            series: dict[str, list[tuple[int, float]]] = {}
            for c in self.cases:
                if c["mode"] == mode and (c["width"], c["vocab"]) == size and c["us_per_token"] is not None:
                    series.setdefault(label(c["model"], c["rho"]), []).append((c["T"], c["us_per_token"]))
            for lab, pts in series.items():
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, label=lab)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context length T")
            ax.set_ylabel("microseconds per token")
            ax.set_title(f"{mode}, width {size[0]}, vocab {size[1]}")
            ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, path)

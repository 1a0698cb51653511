"""Curve data for the fitters, and the readers that make it.

A :class:`CurveData` is either *binomial* (``k`` attended of ``n`` probe queries at each time,
fitted by maximum likelihood) or *Gaussian* (values ``y`` only, optionally with standard
deviations, fitted by least squares). Readers accept

* a ``cram train`` run directory or its ``metrics.jsonl`` (the schema of
  :data:`cramkit.runs.METRICS_FIELDS`: a time field of :data:`cramkit.runs.TIME_FIELDS`, and
  ``rec_attended``/``rec_total`` or ``rho_q``),
* a CSV with a header ``t,k,N`` or ``t,E`` (an optional ``sigma`` column gives standard
  deviations for ``t,E``; lines starting with ``#`` are comments).

Text is read as UTF-8 with or without a byte-order mark, with LF or CRLF line ends. Every
problem with the input raises :class:`~cramkit.errors.CramError` with one sentence.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cramkit import runs
from cramkit.errors import CramError

#: the time axes of a metrics.jsonl record, with the unit the report prints
TIME_UNITS = dict(zip(runs.TIME_FIELDS, ("optimizer steps", "exposures per pattern",
                                         "cumulative learning rate")))
ATTENDED, TOTAL, RHO_Q = "rec_attended", "rec_total", "rho_q"  # keys of runs.METRICS_FIELDS
assert {ATTENDED, TOTAL, RHO_Q} <= set(runs.METRICS_FIELDS)


#: the times the fitter handles: its time-scale parameters range over [1e-3 t_min, 1e4 t_max]
#: and are optimised as logs clipped to [-700, 700] (e^700 ~ 1e304)
T_RANGE = (1e-300, 1e300)
#: the largest probe count: beyond 2^53 a float no longer holds every whole number
MAX_COUNT = 2.0**53


@dataclass
class CurveData:
    """One consolidation curve. ``kind`` is ``"binomial"`` (k of n) or ``"gaussian"`` (y)."""

    t: np.ndarray
    y: np.ndarray  # E(t) = k/n for binomial data
    k: np.ndarray | None = None
    n: np.ndarray | None = None
    sigma: np.ndarray | None = None
    name: str = "data"
    time_unit: str = "t"
    warnings: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "binomial" if self.k is not None else "gaussian"

    def __len__(self) -> int:
        return int(self.t.size)

    def subset(self, mask: np.ndarray) -> CurveData:
        def pick(a):
            return (None if a is None else a[mask])
        return CurveData(self.t[mask], self.y[mask], pick(self.k), pick(self.n), pick(self.sigma),
                         self.name, self.time_unit, list(self.warnings))


def make_binomial(t, k, n, *, name: str = "data", time_unit: str = "t",
                  require_increasing: bool = True) -> CurveData:
    """Validated binomial curve data: 0 <= k <= n, n > 0, t > 0 and increasing, no NaN."""
    t, k, n = (np.asarray(a, dtype=np.float64).ravel() for a in (t, k, n))
    if not (t.size == k.size == n.size):
        raise CramError(f"{name}: t, k and N have different lengths ({t.size}, {k.size}, {n.size})")
    _check_t(t, name, require_increasing)
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(n))):
        raise CramError(f"{name}: the counts contain NaN or inf")
    if np.any(n <= 0):
        raise CramError(f"{name}: every probe count N must be positive")
    if np.any(n > MAX_COUNT):
        raise CramError(f"{name}: a probe count N = {n.max():g} exceeds 2^53 (about 9.0e15), above "
                        "which counts are not exact in floating point; scale k and N down")
    if np.any(k < 0):
        raise CramError(f"{name}: attended counts k must be non-negative")
    if np.any(k > n):
        i = int(np.argmax(k > n))
        raise CramError(f"{name}: attended count k={k[i]:g} exceeds N={n[i]:g} at t={t[i]:g}")
    return CurveData(t, k / n, k, n, None, name, time_unit)


def make_gaussian(t, y, sigma=None, *, name: str = "data", time_unit: str = "t",
                  require_increasing: bool = True) -> CurveData:
    """Validated value-only curve data (least squares), with optional standard deviations."""
    t, y = np.asarray(t, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if t.size != y.size:
        raise CramError(f"{name}: t and E have different lengths ({t.size}, {y.size})")
    _check_t(t, name, require_increasing)
    if not np.all(np.isfinite(y)):
        raise CramError(f"{name}: E contains NaN or inf")
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64).ravel()
        if sigma.size != t.size or not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
            raise CramError(f"{name}: sigma must be finite and positive at every point")
    return CurveData(t, y, None, None, sigma, name, time_unit)


def _check_t(t: np.ndarray, name: str, require_increasing: bool) -> None:
    if t.size == 0:
        raise CramError(f"{name}: no data points")
    if not np.all(np.isfinite(t)):
        raise CramError(f"{name}: t contains NaN or inf")
    if np.any(t <= 0):
        raise CramError(f"{name}: every time must be positive (log-time models), got t={t.min():g}")
    if t.min() < T_RANGE[0] or t.max() > T_RANGE[1]:
        bad = t.min() if t.min() < T_RANGE[0] else t.max()
        raise CramError(f"{name}: t = {bad:g} is outside [{T_RANGE[0]:g}, {T_RANGE[1]:g}], the range "
                        "in which the fitter's time scales stay finite; rescale t")
    if require_increasing and np.any(np.diff(t) <= 0):
        i = int(np.argmax(np.diff(t) <= 0))
        raise CramError(f"{name}: t is not strictly increasing (t={t[i]:g} then t={t[i + 1]:g})")


def pool(runs: list[CurveData], name: str | None = None) -> CurveData:
    """Concatenate several runs (seeds) into one data set sorted by time (repeated t allowed)."""
    if not runs:
        raise CramError("no runs to pool")
    kinds = {r.kind for r in runs}
    if len(kinds) != 1:
        raise CramError("cannot pool runs with counts and runs without counts; give one kind")
    t = np.concatenate([r.t for r in runs])
    order = np.argsort(t, kind="stable")
    def cat(attr):
        return (None if getattr(runs[0], attr) is None
               else np.concatenate([getattr(r, attr) for r in runs])[order])
    sig = cat("sigma") if all(r.sigma is not None for r in runs) else None
    return CurveData(t[order], cat("y"), cat("k"), cat("n"), sig,
                     name or f"{len(runs)} runs pooled", runs[0].time_unit,
                     [w for r in runs for w in r.warnings])


# --- readers ---------------------------------------------------------------------------

def read_curve(path: str | Path, *, time: str = "step") -> CurveData:
    """Read a run directory, a ``metrics.jsonl`` or a CSV into :class:`CurveData`."""
    path = Path(path)
    if path.is_dir():
        path = runs.metrics_path(path)
    if not path.exists():
        raise CramError(f"{path}: no such file")
    if not path.is_file():
        raise CramError(f"{path}: not a regular file")
    text = read_text(path)
    if not text.strip():
        raise CramError(f"{path}: the file is empty")
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_metrics(text, str(path), time)
    return _read_csv(text, str(path))


def read_text(path: Path) -> str:
    """A text file as str: UTF-8 with or without a byte-order mark (undecodable bytes replaced);
    an OS error is one line."""
    try:
        return path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise CramError(f"{path}: cannot read: {exc.strerror}") from None


def _read_metrics(text: str, name: str, time: str) -> CurveData:
    if time not in TIME_UNITS:
        raise CramError(f"unknown time unit {time!r}; choose from {', '.join(TIME_UNITS)}")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    records, warnings = [], []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.append(f"{name}: skipped a truncated last line (line {i + 1})")
                continue
            raise CramError(f"{name}: line {i + 1} is not valid JSON") from None
        if not isinstance(rec, dict):
            raise CramError(f"{name}: line {i + 1} is not a JSON object")
        records.append(rec)
    evals = [r for r in records if ATTENDED in r or RHO_Q in r]
    if not evals:
        raise CramError(f"{name}: no evaluation records (need rec_attended/rec_total or rho_q)")
    if any(time not in r for r in evals):
        raise CramError(f"{name}: an evaluation record has no {time!r} field (choose --time)")
    t = np.array([_num(r[time], name, time) for r in evals])
    has_counts = all(ATTENDED in r and TOTAL in r for r in evals)
    if has_counts:
        k = np.array([_num(r[ATTENDED], name, ATTENDED) for r in evals])
        n = np.array([_num(r[TOTAL], name, TOTAL) for r in evals])
        usable = n > 0
        what = "no recurring probe queries (rec_total = 0)"
    else:
        warnings.append(f"{name}: no rec_attended/rec_total counts; fitting rho_q (attention per "
                        "query, recurring and episodic together) by Gaussian least squares")
        usable = np.array([r.get(RHO_Q) is not None for r in evals])
        y = np.array([_num(r[RHO_Q], name, RHO_Q) if ok else np.nan
                      for r, ok in zip(evals, usable)])
        what = "rho_q = null"
    if not np.all(usable):
        warnings.append(f"{name}: dropped {int((~usable).sum())} evaluation(s) with {what}")
    keep = (t > 0) & usable
    if np.any((t <= 0) & usable):
        warnings.append(f"{name}: dropped {int(((t <= 0) & usable).sum())} evaluation(s) at "
                        f"{time} <= 0 (log-time models need t > 0)")
    if has_counts:
        data = make_binomial(t[keep], k[keep], n[keep], name=name, time_unit=TIME_UNITS[time])
    else:
        data = make_gaussian(t[keep], y[keep], name=name, time_unit=TIME_UNITS[time])
    data.warnings.extend(warnings)
    return data


def _num(v, name: str, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CramError(f"{name}: field {key!r} is missing or not a number ({v!r})")
    if not math.isfinite(v):
        raise CramError(f"{name}: field {key!r} is NaN or inf")
    return float(v)


def _read_csv(text: str, name: str) -> CurveData:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise CramError(f"{name}: no header line")
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    low = [h.lower() for h in header]
    if len(lines) == 1:
        raise CramError(f"{name}: the header is there but there are no data rows")
    table = _numeric_table(lines[1:], len(header))

    def col(key: str) -> np.ndarray:
        j = low.index(key)
        if table is not None:
            return table[:, j]
        return _column_slowly(lines[1:], j, key, name)

    if "t" not in low:
        raise CramError(f"{name}: the CSV needs a column 't' and either 'k,N' or 'E' (got {header})")
    if "k" in low and "n" in low:
        k, n = col("k"), col("n")
        if np.any(k != np.round(k)) or np.any(n != np.round(n)):
            raise CramError(f"{name}: the counts k and N must be whole numbers")
        return make_binomial(col("t"), k, n, name=name)
    if "e" in low:
        e = col("e")
        if np.any((e < 0) | (e > 1)):
            raise CramError(f"{name}: E is a utilization and must lie in [0, 1]")
        sigma = col("sigma") if "sigma" in low else None
        return make_gaussian(col("t"), e, sigma, name=name)
    raise CramError(f"{name}: the CSV needs columns 't,k,N' or 't,E' (got {header})")


def _numeric_table(body: list[str], width: int) -> np.ndarray | None:
    """The data rows as a (rows, width) float array, parsed at C speed; None when a row does not
    parse (then :func:`_column_slowly` finds the row to name in the error)."""
    try:
        table = np.loadtxt(body, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        return None
    return table if table.shape[1] == width else None


def _column_slowly(body: list[str], j: int, key: str, name: str) -> np.ndarray:
    out = []
    for i, r in enumerate(csv.reader(body)):
        try:
            out.append(float(r[j]))
        except (IndexError, ValueError):
            raise CramError(f"{name}: row {i + 2}, column {key!r} is not a number") from None
    return np.array(out)


# --- large inputs ------------------------------------------------------------------------

#: inputs with more points than this are binned in log t before fitting (:func:`bin_log_t`)
MAX_FIT_POINTS = 2000
#: the number of log-t bins a large input is reduced to
FIT_BINS = 1000


def bin_log_t(data: CurveData, n_bins: int = FIT_BINS) -> CurveData:
    """``data`` reduced to at most ``n_bins`` points, one per non-empty bin of equal width in
    log t. Binomial data: k and N summed (exact when E is constant within a bin); values: the
    (1/sigma^2-)weighted mean with sigma = 1/sqrt(sum of weights), i.e. least squares on the
    bin means reproduces least squares on the points up to the variation of E within a bin.
    t of a bin is the weighted geometric mean of its times. The result carries a warning."""
    lt = np.log(data.t)
    edges = np.linspace(lt[0], lt[-1], n_bins + 1)
    idx = np.clip(np.searchsorted(edges, lt, side="right") - 1, 0, n_bins - 1)
    keep = np.unique(idx)

    def total(v: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=v, minlength=n_bins)[keep]

    if data.kind == "binomial":
        n = total(data.n)
        t = np.exp(total(data.n * lt) / n)
        out = make_binomial(t, total(data.k), n, name=data.name, time_unit=data.time_unit)
    else:
        w = np.ones_like(data.y) if data.sigma is None else 1.0 / data.sigma**2
        sw = total(w)
        out = make_gaussian(np.exp(total(w * lt) / sw), total(w * data.y) / sw, 1.0 / np.sqrt(sw),
                            name=data.name, time_unit=data.time_unit)  # fmt: skip
    width = (lt[-1] - lt[0]) / np.log(10) / n_bins
    out.warnings = [*data.warnings, f"{data.name}: {len(data)} points binned into {len(out)} bins of "
                    f"{width:.3g} decades in t for fitting (more than {MAX_FIT_POINTS} points)"]  # fmt: skip
    return out

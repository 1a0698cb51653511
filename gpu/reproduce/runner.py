"""``cram reproduce`` as a library: run each claim's step once, cache it, write the report.

A finished step's measured dict is written atomically to ``DIR/steps/<claim>.json`` with the hash
of the settings it read (:func:`step_key`); a later run with the same settings reuses it, a changed
setting reruns it. Training runs sit in ``DIR/runs`` and resume from their last checkpoint, so a
reproduction killed at any point continues where it stopped. The report (``report.md``,
``report.json``, ``report.png``) is rewritten at the end of every run from every cached step.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cramkit.errors import CramError
from cramkit.gpu.reproduce.claims import CLAIM_IDS, claim
from cramkit.gpu.reproduce.report import ReproduceResult, assess
from cramkit.gpu.reproduce.scales import SCALES, Scale, get_scale
from cramkit.gpu.reproduce.steps import GPT2_ENV, STEPS, Context, Step
from cramkit.io import atomic_write_json, atomic_write_text
from cramkit.jsonable import dumps, to_jsonable
from cramkit.progress import Progress, report_to

#: bump when the measured dicts change shape, so old caches rerun
CACHE_VERSION = 1
STEPS_DIR = "steps"
REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"
LOCK = ".lock"


@dataclass(frozen=True)
class ReproduceConfig:
    """``scale``: quick, full (or tiny, for tests); ``out``: the folder; ``only``: claim ids to run
    (empty: all); ``gpt2``: a local GPT-2 folder (default: the CRAM_GPT2_DIR environment variable)."""

    scale: str = "quick"
    out: str = "reproduce"
    only: tuple[str, ...] = ()
    gpt2: str | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            get_scale(self.scale)  # raises the one-line error
        bad = [c for c in self.only if c not in CLAIM_IDS]
        if bad:
            raise CramError(f"unknown claim(s) {', '.join(bad)}; choose from {', '.join(CLAIM_IDS)}")
        if len(set(self.only)) != len(self.only):
            raise CramError(f"claims repeat in --only: {', '.join(self.only)}")

    @property
    def claims(self) -> tuple[str, ...]:
        return tuple(c for c in CLAIM_IDS if not self.only or c in self.only)


def step_key(step: Step, scale: Scale, gpt2: str | None) -> str:
    """The hash of everything a step's result depends on that a user can change."""
    text = dumps({"claim": step.claim, "settings": step.settings(scale, gpt2), "version": CACHE_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_cached(path: Path, key: str) -> dict | None:
    """A cached step when its key matches; None when absent, stale or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key and "measured" in data else None


def machine_info() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": gpu, "load_start": round(os.getloadavg()[0], 2)}  # fmt: skip


def _command(scale: str, cid: str) -> str:
    return f"cram reproduce --scale {scale} --only {cid}"


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` for the run: two reproductions writing one folder would train the same
    runs at once."""
    import fcntl

    with open(out / LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CramError(f"another cram reproduce is writing to {out}; wait for it or choose another --out") from None
        yield


def run(config: ReproduceConfig, progress: Progress | None = None, *,
        steps: Mapping[str, Step] | None = None) -> ReproduceResult:
    """Run (or reuse) the steps of ``config.claims`` and write the report; see the module doc.
    ``steps`` replaces the step table (tests)."""
    out = Path(config.out)
    try:
        (out / STEPS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CramError(f"cannot create the output folder {out}: {exc.strerror}") from None
    with _locked(out):
        return _run(config, out, progress, STEPS if steps is None else steps)


def _run(config: ReproduceConfig, out: Path, progress: Progress | None, table: Mapping[str, Step]) -> ReproduceResult:
    scale = SCALES[config.scale]
    gpt2 = config.gpt2 or os.environ.get(GPT2_ENV) or None
    tick = report_to(progress)
    machine = machine_info()
    t0 = time.perf_counter()
    outcomes = []
    for cid in CLAIM_IDS:
        step = table[cid]
        key = step_key(step, scale, gpt2)
        path = out / STEPS_DIR / f"{cid}.json"
        cached = read_cached(path, key)
        if cached is None and cid in config.claims:
            ctx = Context(out, scale, gpt2, lambda d, t, cid=cid: tick(cid, d, t))
            start = time.perf_counter()
            measured = to_jsonable(step.run(ctx))
            cached = {"claim": cid, "key": key, "settings": to_jsonable(step.settings(scale, gpt2)),
                      "seconds": time.perf_counter() - start, "load_end": round(os.getloadavg()[0], 2),
                      "finished": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "measured": measured, "fresh": True}  # fmt: skip
            atomic_write_json(path, {k: v for k, v in cached.items() if k != "fresh"})
            tick(cid, 1, 1)
        elif cached is not None and cid in config.claims:
            tick(cid, 1, 1)
        measured = cached["measured"] if cached else None
        outcomes.append(assess(claim(cid), measured, _command(config.scale, cid),
                               cached=bool(cached) and not cached.get("fresh"),
                               seconds=cached.get("seconds") if cached else None,
                               finished=cached.get("finished") if cached else None,
                               load_end=cached.get("load_end") if cached else None))  # fmt: skip
    machine["load_end"] = round(os.getloadavg()[0], 2)
    result = ReproduceResult(config.scale, str(out), outcomes, machine, time.perf_counter() - t0)
    write_report(result, out)
    return result


def write_report(result: ReproduceResult, out: Path) -> None:
    """report.json, report.md and report.png, each written atomically."""
    atomic_write_json(out / REPORT_JSON, result.to_json())
    atomic_write_text(out / REPORT_MD, result.markdown())
    result.plot(out / REPORT_PNG)

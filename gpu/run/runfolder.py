"""A run folder owned by one process: ``cram train --out DIR`` (see docs/reliability.md).

:meth:`RunFolder.open` takes an OS lock on ``DIR/.lock`` (``fcntl.flock``, non-blocking) that is
held for the life of the run and released when the folder is closed or the process ends (a lock
file left by a killed process is not a lock: the kernel drops flock locks with their process).
Rules:

- a second process on the same folder is refused with one line naming the holder's PID;
- a folder that already holds a run (config.toml, metrics.jsonl, summary.json, last.safetensors,
  checkpoints/ or run_id) is refused unless ``resume`` (continue that run; a run stopped before its
  first checkpoint starts again from its config.toml) or ``overwrite`` (the earlier run's files
  are moved, never deleted, into ``DIR/replaced-<UTC time>/``);
- a new run writes its identity, a run id, once into ``DIR/run_id``; every checkpoint it saves
  carries it, and a resume refuses a checkpoint of another run (``cramkit.gpu.run.resume``);
- ``resume`` with a different config is refused, naming the differing keys, except the keys in
  :data:`RESUMABLE_KEYS`, which are applied, written to config.toml and recorded as an event line
  in metrics.jsonl;
- stale temp files of killed atomic writes are removed when the folder is opened and before
  each checkpoint is saved.

Use (the train loop; rank 0 only under torchrun)::

    with RunFolder.open(out, cfg.to_toml(), resume=resume, overwrite=overwrite) as folder:
        ck = folder.last_good_checkpoint()          # on resume: newest checkpoint that verifies
        folder.begin_resume(ck_meta["metrics"], ck_meta["step"])   # log = the checkpoint's evaluations
        ...
        folder.append_metrics(record)               # each evaluation
        folder.save_checkpoint(step, model, opt, meta, keep=cfg.train.keep_checkpoints)
        ...
        raise CramError(f"... {folder.resume_hint({'train.lr': lr / 2})}")
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cramkit import runs
from cramkit.errors import CramError
from cramkit.io import (
    append_jsonl,
    atomic_link_or_copy,
    atomic_write_text,
    os_errors,
    remove_stale_temps,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: config keys that may change when a run is resumed, and why that is sound. Any other difference
#: between the folder's config and the resumed one is refused by name.
RESUMABLE_KEYS: dict[str, str] = {
    "train.lr": "peak learning rate: the schedule continues from the resume step with the new value "
                "(the way out of a divergence)",
    "train.min_lr_frac": "floor of the cosine schedule, from the resume step on",
    "train.grad_clip": "gradient clipping from the resume step on (also a way out of a divergence)",
    "train.weight_decay": "re-applied to the optimizer's parameter groups after they are loaded",
    "train.steps": "length of the schedule: extends (or ends) the run; the cosine is recomputed",
    "train.eval_every": "how often to evaluate (logging only)",
    "train.eval_log_points": "extra log-spaced evaluations (logging only)",
    "train.ckpt_every": "how often to save a checkpoint",
    "train.keep_checkpoints": "whether to keep every checkpoint",
    "train.threads": "CPU threads (the results stay equal up to floating-point summation order)",
    "train.device": "where to compute (the results stay equal up to floating-point differences)",
}


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run; its message says where the run stopped and how to continue.
    The CLI prints it as one line and exits 130 (``cramkit.cli.main``)."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config trees: ``{key: (old, new)}``
    (a key missing on one side reads as None)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_changes(old: dict[str, Any], new: dict[str, Any], where: str) -> dict[str, tuple[Any, Any]]:
    """The changes from ``old`` to ``new`` config, all in :data:`RESUMABLE_KEYS`; else one
    CramError naming every other differing key. ``where`` names the run (its folder)."""
    changes = diff_configs(old, new)
    refused = [k for k in changes if k not in RESUMABLE_KEYS]
    if refused:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise CramError(
            f"--resume: the config differs from the run in {where} in {shown}{more}; only "
            f"{', '.join(RESUMABLE_KEYS)} may change on resume (start a new run in another folder instead)"
        )
    return changes


def _parse_toml(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise CramError(f"{what} is not valid TOML ({exc})") from None


class RunFolder:
    """One run's folder, locked by this process until :meth:`close`. Make it with :meth:`open`."""

    def __init__(self, path: Path, lock_fd: int):
        self.path = path
        self._lock_fd: int | None = lock_fd
        #: config keys changed by this resume: {key: (old, new)}
        self.changes: dict[str, tuple[Any, Any]] = {}
        #: where ``overwrite`` moved the earlier run's files (None when nothing was moved)
        self.replaced: Path | None = None
        #: the run's identity (DIR/run_id); None for a folder made before run ids, until
        #: :meth:`ensure_run_id`
        self.run_id: str | None = None
        self._pending_config: str | None = None

    # --- opening and closing --------------------------------------------------------------------

    @classmethod
    def open(cls, out: str | os.PathLike, config_toml: str, *, resume: bool = False,
             overwrite: bool = False, complete: Callable[[dict], dict] | None = None) -> RunFolder:
        """Create or take over ``out`` for a run with config ``config_toml`` (the full TOML text).

        A new run (neither flag) needs a folder without run files; ``resume`` needs one with a
        checkpoint and a config that differs at most in :data:`RESUMABLE_KEYS`; ``overwrite`` moves
        an earlier run aside. ``complete`` fills a saved config's missing keys with their defaults
        before the comparison (a run saved before a setting existed ran at its default). Raises
        one CramError line for every refusal.
        """
        if resume and overwrite:
            raise CramError("--resume continues the run in the folder and --overwrite replaces it; give one")
        out = Path(out)
        if resume and not out.is_dir():
            raise CramError(f"nothing to resume: {out} does not exist")
        new_cfg = _parse_toml(config_toml, "the run config")
        with os_errors(f"creating the run folder {out}"):
            out.mkdir(parents=True, exist_ok=True)
        folder = cls(out, _acquire_lock(out))
        try:
            folder._clean_temps()
            if resume:
                folder._open_resume(new_cfg, config_toml, complete)
            else:
                folder._open_new(config_toml, overwrite)
        except BaseException:
            folder.close()
            raise
        return folder

    @staticmethod
    def saved_config(out: str | os.PathLike) -> str | None:
        """The config.toml text of the run in ``out`` (None when there is none): what
        ``cram train --resume DIR --set ...`` applies its overrides to."""
        path = Path(out) / runs.CONFIG
        if not path.is_file():
            return None
        with os_errors(f"reading {path}"):
            return path.read_text(encoding="utf-8")

    def _open_new(self, config_toml: str, overwrite: bool) -> None:
        existing = self.run_files()
        if existing and not overwrite:
            names = ", ".join(p.name for p in existing)
            raise CramError(
                f"{self.path} already holds a run ({names}); continue it with `cram train --resume {self.path}` "
                f"or start afresh with --overwrite (the old run's files are moved to "
                f"{self.path / (runs.REPLACED_PREFIX + '<time>')})"
            )
        if existing:
            self.replaced = self._move_aside(existing)
        self.write_config(config_toml)
        self.ensure_run_id(None)
        if self.replaced is not None:
            self.append_event({"event": "overwrite", "moved_to": self.replaced.name})

    def _open_resume(self, new_cfg: dict[str, Any], config_toml: str,
                     complete: Callable[[dict], dict] | None = None) -> None:
        cfg_file = self.path / runs.CONFIG
        self.check_resumable()
        self.run_id = runs.read_run_id(self.path)
        if cfg_file.is_file():
            with os_errors(f"reading {cfg_file}"):
                old_text = cfg_file.read_text(encoding="utf-8", errors="replace")
            old_cfg = _parse_toml(old_text, str(cfg_file))
            if complete is not None:
                old_cfg, new_cfg = complete(old_cfg), complete(new_cfg)
            self.changes = check_resume_changes(old_cfg, new_cfg, str(self.path))
        if self.changes or not cfg_file.is_file():
            self._pending_config = config_toml  # written by begin_resume, once the checkpoint is accepted

    def close(self) -> None:
        """Release the lock (the lock file stays; it is not a lock without its holder)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the last descriptor drops the flock lock
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # --- what the folder holds ------------------------------------------------------------------

    def check_resumable(self) -> None:
        """Refuse (one line, with the command that starts a run there) a folder that holds neither
        a checkpoint nor a config.toml: there is no run to continue."""
        if not (self.has_checkpoint() or (self.path / runs.CONFIG).is_file()):
            start = f"cram train --out {self.path}" + (" --overwrite" if self.run_files() else "")
            raise CramError(f"nothing to resume in {self.path}: it holds no checkpoint and no config.toml; "
                            f"start a new run there with `{start}` and the run's options")  # fmt: skip

    def has_checkpoint(self) -> bool:
        """Whether the folder holds a checkpoint file (verified or not)."""
        return runs.last_checkpoint(self.path).is_file() or bool(runs.kept_checkpoints(self.path))

    def ensure_run_id(self, run_id: str | None) -> str:
        """The run's identity: the folder's, else ``run_id`` (a checkpoint's, for a folder made
        before run ids) or a new one, written once into ``DIR/run_id``."""
        if self.run_id is None:
            self.run_id = run_id or secrets.token_hex(8)
            atomic_write_text(self.path / runs.RUN_ID, self.run_id + "\n")
        return self.run_id

    def run_files(self) -> list[Path]:
        """The files of a run present in the folder (an empty checkpoints/ folder does not count)."""
        found = []
        for name in runs.RUN_FILES:
            p = self.path / name
            if p.is_dir() and not any(p.iterdir()):
                continue
            if p.exists():
                found.append(p)
        return found

    def checkpoint_paths(self, step: int) -> tuple[Path, Path]:
        """(the run's last checkpoint, the kept checkpoint of ``step``)."""
        return runs.last_checkpoint(self.path), self.path / runs.CHECKPOINTS / runs.step_checkpoint_name(step)

    def last_good_checkpoint(self) -> Path | None:
        """The newest checkpoint that passes verification (last.safetensors, else the kept ones
        from the newest step down); None when there is none. A corrupt one is skipped with a
        warning on stderr naming it."""
        from cramkit.gpu.run.checkpoint import read_checkpoint

        best: tuple[int, Path] | None = None
        candidates = [runs.last_checkpoint(self.path), *reversed(runs.kept_checkpoints(self.path))]
        for p in candidates:
            if not p.is_file():
                continue
            try:
                _, meta = read_checkpoint(p)
                step = int(meta.get("step", -1))
            except (CramError, TypeError, ValueError) as exc:
                print(f"warning: skipping {p}: {exc}", file=sys.stderr)
                continue
            if best is None or step > best[0]:
                best = (step, p)
            if p != candidates[0] and best is not None:
                break  # kept checkpoints go newest first: the first good one is the newest
        return best[1] if best is not None else None

    # --- writing ----------------------------------------------------------------------------------

    def write_config(self, config_toml: str) -> None:
        atomic_write_text(self.path / runs.CONFIG, config_toml)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one evaluation record to metrics.jsonl (fsynced)."""
        append_jsonl(runs.metrics_path(self.path), record)

    def append_event(self, event: dict[str, Any]) -> None:
        """Append an event line (``{"event": ...}``) to metrics.jsonl; readers skip these."""
        if runs.EVENT not in event:
            raise ValueError("an event line needs an 'event' key")
        append_jsonl(runs.metrics_path(self.path), event)

    def begin_resume(self, evaluations: list[dict[str, Any]], step: int, adopted: dict[str, Any] | None = None) -> None:
        """Rewrite metrics.jsonl to hold exactly the checkpoint's ``evaluations`` (the log then
        continues from ``step``) plus earlier event lines.

        When this resume changed settings, the run's future differs from what the folder holds
        beyond ``step``: kept checkpoints of later steps and summary.json are moved into
        ``replaced-<time>/`` (never deleted), and an event line records the changes, how many
        later evaluations the new ones replace and where the files went. The same holds when the
        resume ``adopted`` a checkpoint of another run (``--from``; the event line to record)."""
        path = runs.metrics_path(self.path)
        old: list[dict[str, Any]] = []
        if path.is_file():
            with os_errors(f"reading {path}"):
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for line in lines:
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        old.append(rec)
        events = [r for r in old if runs.is_event(r) and _num(r.get("step"), 0) <= step]
        dropped = [r for r in old if not runs.is_event(r) and _num(r.get("step"), 0) > step]
        records = _merge_by_step(evaluations, events)
        moved = None
        if self.changes or adopted is not None:
            from cramkit.gpu.run.checkpoint import peek_step

            later = [p for p in runs.kept_checkpoints(self.path) if _checkpoint_step(p) > step]
            last, summary = runs.last_checkpoint(self.path), self.path / runs.SUMMARY
            if last.is_file() and (peek_step(last) or 0) > step:
                later.append(last)  # else a kill before the next save would resume the old future
            stale = later + ([summary] if summary.is_file() else [])
            moved = self._move_aside(stale) if stale else None
            if dropped:
                moved = moved or self._move_aside([])
                append_jsonl(moved / runs.METRICS, {"event": "replaced", "records": len(dropped)})
                for rec in dropped:
                    append_jsonl(moved / runs.METRICS, rec)
        if self._pending_config is not None:  # the changed config, once the old future is aside
            self.write_config(self._pending_config)
            self._pending_config = None
        atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
        if adopted is not None:
            self.append_event(adopted | {"moved_to": moved.name if moved is not None else None})
        if self.changes:
            self.append_event({"event": "resume", "step": step,
                               "changed": {k: list(v) for k, v in self.changes.items()},
                               "replaced_evaluations": len(dropped),
                               "moved_to": moved.name if moved is not None else None})  # fmt: skip

    def save_checkpoint(self, step: int, model, optimizer, meta: dict[str, Any], *, keep: bool) -> Path:
        """Save the checkpoint of ``step``: the kept copy first (when ``keep``), then last.safetensors
        as a hard link to it (or a copy), so a kill at any moment leaves last.safetensors valid and
        never at a step whose kept copy is missing. Returns the last checkpoint's path."""
        from cramkit.gpu.run.checkpoint import save_checkpoint

        last, kept = self.checkpoint_paths(step)
        self._clean_temps()
        if keep:
            save_checkpoint(kept, model, optimizer, meta)
            atomic_link_or_copy(kept, last)
        else:
            save_checkpoint(last, model, optimizer, meta)
        return last

    # --- hints ----------------------------------------------------------------------------------

    def resume_hint(self, sets: dict[str, Any] | None = None) -> str:
        """A command that continues this run, with ``--set key=value`` for ``sets`` (only
        :data:`RESUMABLE_KEYS` can be set on resume). A run without a checkpoint yet resumes from
        step 0 with its config.toml."""
        sets = dict(sets or {})
        bad = [k for k in sets if k not in RESUMABLE_KEYS]
        if bad:
            raise ValueError(f"not changeable on resume: {bad}")
        extra = "".join(f" --set {k}={_toml_value(v)}" for k, v in sets.items())
        return f"cram train --resume {self.path}{extra}"

    def fault_hint(self, errno_: int | None, where: str | None = None) -> str:
        """What to do after an OS fault stopped the run (``errno_``: its error number): where the
        run stands (``where``, else its last good checkpoint) and the command that continues it
        once the cause is fixed."""
        if errno_ in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some space"
        elif errno_ in (errno.EROFS, errno.EACCES, errno.EPERM):
            fix = f"make {self.path} writable"
        else:
            fix = "fix that"
        good = self.last_good_checkpoint() if where is None else None
        where = where or (f"the last good checkpoint is step {_checkpoint_step_of(good)} ({good.name})" if good is not None
                 else "no checkpoint was saved yet (the run starts again from step 0)")  # fmt: skip
        return f"{where}; {fix}, then continue with: {self.resume_hint()}"

    def interrupted(self, step: int) -> RunInterrupted:
        """The exception to raise when Ctrl-C stops the run at ``step``: names the last good
        checkpoint's step and the command that resumes."""
        from cramkit.gpu.run.checkpoint import read_checkpoint

        good = self.last_good_checkpoint()
        if good is None:
            return RunInterrupted(f"stopped at step {step} before any checkpoint was saved; start it again "
                                  f"with: {self.resume_hint()}")  # fmt: skip
        saved = read_checkpoint(good)[1].get("step")
        return RunInterrupted(f"stopped at step {step}; the last checkpoint is step {saved} ({good.name}); "
                              f"continue with: {self.resume_hint()}")  # fmt: skip

    # --- internals ------------------------------------------------------------------------------

    def _clean_temps(self) -> None:
        remove_stale_temps(self.path)
        remove_stale_temps(self.path / runs.CHECKPOINTS)

    def _move_aside(self, existing: list[Path]) -> Path:
        """Move ``existing`` (files or folders of this run folder) into a new ``replaced-<time>/``,
        keeping their paths relative to the run folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        dest = self.path / f"{runs.REPLACED_PREFIX}{stamp}"
        n = 1
        while dest.exists():
            n += 1
            dest = self.path / f"{runs.REPLACED_PREFIX}{stamp}-{n}"
        with os_errors(f"moving the earlier run in {self.path} aside"):
            dest.mkdir()
            for p in existing:
                target = dest / p.relative_to(self.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, target)
        return dest


def _checkpoint_step_of(path: Path) -> int | str:
    """The step a checkpoint's header claims (read without verifying; "?" when unreadable)."""
    from cramkit.gpu.run.checkpoint import peek_step

    step = peek_step(path)
    return "?" if step is None else step


def _checkpoint_step(path: Path) -> int:
    """The step in a kept checkpoint's name (``step_0000040.safetensors`` -> 40; -1 if none)."""
    digits = path.name[len("step_") :].split(".")[0]
    return int(digits) if digits.isdigit() else -1


def _acquire_lock(out: Path) -> int:
    import fcntl

    lock = out / runs.LOCK
    with os_errors(f"opening the lock file {lock}"):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CramError(f"{out} is in use by another cram process ({holder}); wait for it to end or "
                            "choose another --out") from None  # fmt: skip
        raise CramError(f"cannot lock {lock}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    except OSError:
        pass  # the lock holds without the note
    return fd


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text if text.startswith("pid ") else "PID unknown"


def _num(v: Any, default: float) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _merge_by_step(evals: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluations and event lines in step order (an event before the evaluation of its step)."""
    keyed = [(_num(e.get("step"), 0), 0, i, e) for i, e in enumerate(events)]
    keyed += [(_num(m.get("step"), 0), 1, i, m) for i, m in enumerate(evals)]
    return [r for *_, r in sorted(keyed, key=lambda x: x[:3])]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)

"""Checkpoints that prove their integrity: one safetensors file per checkpoint. Never pickle.

A checkpoint holds the model's weights (``model/<name>``), the optimizer state (``optim/<i>/<key>``)
and the RNG states (``rng/...``). Its safetensors header carries, in ``__metadata__``:

- ``cram``: the JSON metadata (format, config, step, metrics so far, code version, task
  provenance, optimizer param groups, tied weights);
- ``cram_sha256``: a SHA-256 content hash over the metadata and, tensor by tensor in name order,
  each tensor's name, dtype, shape, offsets and bytes (:func:`content_hash`).

Every load (:func:`read_checkpoint`, used by ``cram train --resume``, ``cram eval``,
``cram transfer`` and ``cram redundancy``) checks, before any tensor is used: the file's length
against its header (truncation), the header's form (the writer's canonical JSON, so a changed
header byte is seen too), that the tensors tile the data section, the content hash, and that no
weight or optimizer tensor holds NaN or inf. Any failure is one :class:`CramError` line naming the
file, e.g. ``runs/a/last.safetensors: checksum mismatch: the file is corrupt (...)``. Loading parses
JSON and raw tensor bytes only; it never executes code.

Writes are atomic (``cramkit.io.atomic_writer``: temp file, fsync, rename, fsync of the folder),
so a process killed at any moment leaves the previous checkpoint intact and complete.

Checkpoints of format 1 (before integrity checks: no hash, a ``.json`` copy beside them) are
refused with one line; ``CRAM_ALLOW_UNVERIFIED=1`` loads one unverified, with a warning (the next
save of a resumed run writes format 2). See docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from cramkit.errors import CramError
from cramkit.io import atomic_writer, os_errors

FORMAT = "cram-checkpoint"
ARCH = "cram-hybrid"  # the architecture tag of a training checkpoint
TEXT_ARCH = "gpt-bytes"  # the tag of text runs, kept for older readers
ARCHES = (ARCH, TEXT_ARCH)
FORMAT_VERSION = 2
LAST = "last.safetensors"
META_KEY = "cram"
HASH_KEY = "cram_sha256"
ALLOW_UNVERIFIED_ENV = "CRAM_ALLOW_UNVERIFIED"
_HASH_MAGIC = b"cram-checkpoint-sha256-v1\0"


def code_version() -> str:
    """Package version plus the git commit of the source tree (``+dirty`` when modified)."""
    try:
        from importlib.metadata import version

        pkg = version("cram-toolkit")
    except Exception:  # pragma: no cover - not installed
        pkg = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        return f"{pkg}+g{rev}"
    except (OSError, subprocess.SubprocessError):
        return pkg


# --- the file format ---------------------------------------------------------------------------


def content_hash(header: dict[str, Any], data: memoryview | bytes) -> str:
    """SHA-256 over a checkpoint's metadata (all ``__metadata__`` entries but the hash itself,
    in key order) and its tensors in name order: name, dtype, shape, data offsets and bytes.
    ``header`` is the parsed safetensors header, ``data`` the data section after it."""
    h = hashlib.sha256(_HASH_MAGIC)
    meta = header.get("__metadata__") or {}
    for key in sorted(meta):
        if key != HASH_KEY:
            h.update(json.dumps([key, meta[key]]).encode() + b"\n")
    view = memoryview(data)
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        start, end = entry["data_offsets"]
        h.update(json.dumps([name, entry["dtype"], entry["shape"], [start, end]]).encode() + b"\n")
        h.update(view[start:end])
    return h.hexdigest()


def _header_bytes(header: dict[str, Any]) -> bytes:
    """The canonical header encoding: compact JSON, padded with spaces to a multiple of 8."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def write_checkpoint_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Low-level writer: ``tensors`` and the JSON-able ``meta`` as one signed safetensors file,
    atomically. :func:`save_checkpoint` builds both from a model; tests use this to write a
    checkpoint with chosen (even inconsistent) metadata that still passes the integrity check."""
    from safetensors.torch import save

    path = Path(path)
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except ValueError:
        raise CramError(f"refusing to write {path}: its metadata holds NaN or inf") from None
    blob = save(tensors, metadata={META_KEY: meta_json})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    data = memoryview(blob)[8 + n :]
    header["__metadata__"][HASH_KEY] = content_hash(header, data)
    head = _header_bytes(header)
    with atomic_writer(path) as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        fh.write(data)


def _corrupt(path: Path, why: str) -> CramError:
    return CramError(f"{path}: the file is corrupt ({why})")


def _parse_header(path: Path, blob: bytes) -> tuple[dict[str, Any], memoryview]:
    """Check a file's length, header form and tensor layout; return (header, data section)."""
    if len(blob) < 8:
        raise _corrupt(path, f"truncated: {len(blob)} bytes, not even a header length")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise _corrupt(path, f"truncated: the header alone should be {n} bytes, the file has {len(blob) - 8} after the length")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        raise _corrupt(path, "bad header: not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "bad header: not a JSON object")
    data = memoryview(blob)[8 + n :]
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _corrupt(path, "bad header: __metadata__ is not a string map")
            continue
        try:
            start, end = (int(x) for x in entry["data_offsets"])
            shape = [int(x) for x in entry["shape"]]
            str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad header: entry {name!r} is malformed") from None
        if not 0 <= start <= end or min(shape, default=0) < 0:
            raise _corrupt(path, f"bad header: entry {name!r} has impossible offsets or shape")
        spans.append((start, end, name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise _corrupt(path, f"bad header: tensor {name!r} does not start where the previous one ends")
        pos = end
    if pos > len(data):
        raise _corrupt(path, f"truncated: the tensors need {pos} bytes, the file holds {len(data)}")
    if pos < len(data):
        raise _corrupt(path, f"{len(data) - pos} unexpected bytes after the tensors")
    return header, data


def _unverified(path: Path, why: str) -> None:
    """An old or unsigned checkpoint: refuse, unless the user asked to load it unverified."""
    if os.environ.get(ALLOW_UNVERIFIED_ENV) == "1":
        print(f"warning: {path}: loading without an integrity check ({why})", file=sys.stderr)
        return
    raise CramError(
        f"{path}: this checkpoint predates integrity checks ({why}); it is not loaded. "
        f"Set {ALLOW_UNVERIFIED_ENV}=1 to load it once unverified"
    )


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if name.startswith(("model/", "optim/")) and (t.is_floating_point() or t.is_complex()):
            if not bool(torch.isfinite(t).all()):
                raise CramError(f"{path}: tensor {name} holds NaN or inf; the checkpoint cannot be used")


def peek_step(path: str | os.PathLike) -> int | None:
    """The ``step`` a checkpoint's header claims, read without verifying the file (None when the
    header cannot be read). For bookkeeping only; load with :func:`read_checkpoint`."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n > 100_000_000:
                return None
            header = json.loads(fh.read(n))
        step = json.loads(header["__metadata__"][META_KEY]).get("step")
        return int(step) if isinstance(step, int) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return None


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise one :class:`CramError` line if the checkpoint at ``path`` fails any integrity check."""
    read_checkpoint(path)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint file (or a run folder's ``last.safetensors``): (tensors, metadata).

    Raises one clear :class:`CramError` naming the file for a missing, unreadable, truncated,
    corrupt (hash mismatch, bad header), foreign or non-finite checkpoint.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CramError(f"checkpoint {path} does not exist")
    with os_errors(f"reading {path}"):
        blob = path.read_bytes()
    header, data = _parse_header(path, blob)
    smeta = header.get("__metadata__") or {}
    raw = smeta.get(META_KEY)
    if raw is None:
        raise CramError(f"{path} is a safetensors file but not a cram checkpoint (no cram metadata)")
    stored = smeta.get(HASH_KEY)
    if stored is None:
        _unverified(path, "no content hash in its header")
    else:
        if _header_bytes(header) != bytes(blob[8 : 8 + int.from_bytes(blob[:8], "little")]):
            raise CramError(f"{path}: checksum mismatch: the file is corrupt (its header was altered)")
        computed = content_hash(header, data)
        if computed != stored:
            raise CramError(
                f"{path}: checksum mismatch: the file is corrupt (stored sha256 {str(stored)[:16]}..., "
                f"content {computed[:16]}...)"
            )
    try:
        meta = json.loads(raw)
    except ValueError:
        raise _corrupt(path, "its cram metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise _corrupt(path, "its cram metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CramError(f"{path} is not a cram checkpoint (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version == 1 and stored is None:
        pass  # allowed through _unverified above
    elif version != FORMAT_VERSION:
        raise CramError(f"{path}: checkpoint format version {version!r}; this cram reads {FORMAT_VERSION}")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError, OverflowError, MemoryError, RuntimeError):
        raise _corrupt(path, "safetensors cannot decode its tensors") from None
    _check_finite(path, tensors)
    return tensors, meta


# --- model, optimizer and RNG state --------------------------------------------------------------


def _model_tensors(model: torch.nn.Module, meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, t in model.state_dict().items():
        key = id(t.untyped_storage()) if t.numel() else None
        if key is not None and key in seen:  # tied weights are stored once
            meta = meta | {"tied": {**meta.get("tied", {}), name: seen[key]}}
            continue
        if key is not None:
            seen[key] = name
        tensors[f"model/{name}"] = t.detach().to("cpu").clone().contiguous()
    return tensors, meta


def _optimizer_tensors(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> tuple[dict, dict]:
    index = {id(p): i for i, p in enumerate(params)}
    tensors: dict[str, torch.Tensor] = {}
    for p, state in opt.state.items():
        i = index[id(p)]
        for key, val in state.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"optim/{i}/{key}"] = t.detach().to("cpu").clone().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [index[id(p)] for p in g["params"]]}
              for g in opt.param_groups]  # fmt: skip
    return tensors, {"param_groups": groups}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
) -> None:
    """Write model + optimizer + RNG states and ``meta`` to ``path`` as one signed safetensors
    file, atomically. Weights or optimizer state holding NaN/inf are refused (CramError), so the
    previous checkpoint stays the last good one."""
    path = Path(path)
    tensors, meta = _model_tensors(model, meta)
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    if optimizer is not None:
        otensors, ometa = _optimizer_tensors(optimizer, list(model.parameters()))
        tensors.update(otensors)
        full_meta["optimizer"] = ometa
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CramError(f"refusing to write {path}: {name} holds NaN or inf; the previous checkpoint is kept")
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = st
    write_checkpoint_file(path, tensors, full_meta)


def model_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    tied = meta.get("tied", {})
    if not isinstance(tied, dict) or not all(isinstance(src, str) and src in state for src in tied.values()):
        raise CramError("checkpoint has corrupt metadata (its 'tied' entry names no saved tensor)")
    for name, src in tied.items():
        state[name] = state[src]
    return state


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                     path: str | os.PathLike) -> None:
    """Load a checkpoint's weights into ``model``; a shape or name mismatch is one CramError."""
    try:
        model.load_state_dict(model_state(tensors, meta))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CramError(f"checkpoint {path} does not match its own config ({first})") from None


def load_optimizer(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], tensors: dict, meta: dict) -> None:
    """Restore optimizer state saved by :func:`save_checkpoint` (same parameter order)."""
    ometa = meta.get("optimizer")
    if ometa is None:
        raise CramError("checkpoint has no optimizer state; it cannot be resumed")
    groups = ometa["param_groups"]
    if len(groups) != len(opt.param_groups):
        raise CramError("checkpoint optimizer has a different number of parameter groups")
    for g, saved in zip(opt.param_groups, groups, strict=True):
        for k, v in saved.items():
            if k != "params":
                g[k] = tuple(v) if isinstance(v, list) else v
    opt.state.clear()
    for key, t in tensors.items():
        if not key.startswith("optim/"):
            continue
        _, i, name = key.split("/", 2)
        p = params[int(i)]
        opt.state[p][name] = t.to(p.device) if name != "step" else t.clone()


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng/torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng/torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)

"""Checkpoints: one safetensors file (model, optimizer state, RNG states) whose header carries the
JSON metadata (config, step, metrics so far, code version, SRCD config and world seed), plus a
human-readable JSON copy of that metadata next to it. Never pickle.

The safetensors file is the single source of truth and is written atomically (temp file + rename),
so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from cramkit.errors import CramError
from cramkit.io import atomic_write_bytes, atomic_write_json

FORMAT = "cram-checkpoint"
FORMAT_VERSION = 1
LAST = "last.safetensors"


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
    """Write model + optimizer + RNG states to ``path`` (safetensors) and ``path.json``, atomically."""
    from safetensors.torch import save

    path = Path(path)
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
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    if optimizer is not None:
        params = list(model.parameters())
        otensors, ometa = _optimizer_tensors(optimizer, params)
        tensors.update(otensors)
        full_meta["optimizer"] = ometa
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = st
    header = json.dumps(full_meta, allow_nan=False)
    atomic_write_bytes(path, save(tensors, metadata={"cram": header}))
    atomic_write_json(path.with_suffix(".json"), full_meta)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file (or a run folder's ``last.safetensors``): (tensors, metadata).

    Raises one clear :class:`CramError` for a missing, unreadable, corrupt or foreign file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CramError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CramError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        tensors = load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except (SafetensorError, ValueError, OverflowError, UnicodeDecodeError, MemoryError):
        raise CramError(f"checkpoint {path} is corrupt or not a safetensors file") from None
    raw = (header.get("__metadata__") or {}).get("cram") if isinstance(header, dict) else None
    if raw is None:
        raise CramError(f"{path} is a safetensors file but not a cram checkpoint (no cram metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CramError(f"checkpoint {path} has corrupt metadata") from None
    if not isinstance(meta, dict):
        raise CramError(f"checkpoint {path} has corrupt metadata (not a JSON object)")
    if meta.get("format") != FORMAT:
        raise CramError(f"{path} is not a cram checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CramError(f"checkpoint {path} has format version {meta.get('format_version')}; this cram reads {FORMAT_VERSION}")
    return tensors, meta


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

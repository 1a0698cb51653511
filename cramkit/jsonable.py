"""Strict JSON for every result: one converter instead of one per command.

:func:`to_jsonable` turns numpy scalars and arrays, tuples, paths and dataclasses into plain
JSON types and every non-finite float into ``None`` (strict JSON has no NaN); :func:`dumps`
serialises with ``allow_nan=False`` so that a missed NaN is an error, never invalid output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: dict keys as strings, NaN/inf as None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if hasattr(obj, "to_json") and callable(obj.to_json):
        return to_jsonable(obj.to_json())
    try:  # numpy / torch scalars and arrays, without importing either here
        import numpy as np

        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return to_jsonable(float(obj))
        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (after :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, indent=indent)

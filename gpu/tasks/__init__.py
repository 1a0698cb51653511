"""Tasks: what a model is trained and evaluated on (the protocol in :mod:`.base`, docs/tasks.md).

``srcd`` (:class:`SRCDTask`), ``text`` (:class:`TextTask`) and ``tokens`` (:class:`TokensTask`)
implement :class:`Task`; ``cramkit.gpu.run.train.train`` takes any object that does. A run config
builds its own task: ``cfg.build_task()``. A new built-in task is a module here plus one entry in
:data:`BUILDERS` and a config section in ``gpu/run/config.py``.
"""

from __future__ import annotations

from typing import Any

from cramkit.gpu.tasks.base import (
    IGNORE,
    BaseTask,
    Task,
    TaskBatch,
    attention_use,
    check_task,
    check_token_range,
)
from cramkit.gpu.tasks.srcd import SRCDTask
from cramkit.gpu.tasks.text import TextTask
from cramkit.gpu.tasks.tokens import TokenData, TokensTask, evaluate_tokens, load_token_file

#: task name -> class with ``from_config(run_config, device=...)``
BUILDERS: dict[str, Any] = {"srcd": SRCDTask, "text": TextTask, "tokens": TokensTask}


def build_task(cfg, *, device: Any = "cpu", rank: int = 0, world_size: int = 1, progress: Any = None) -> Task:
    """The task of a :class:`cramkit.gpu.run.config.RunConfig` (``progress``: the text task's
    corpus preparation reports to it)."""
    if cfg.task == "text":
        return TextTask.from_config(cfg, device=device, progress=progress)
    return BUILDERS[cfg.task].from_config(cfg, device=device)


__all__ = ["IGNORE", "BUILDERS", "BaseTask", "SRCDTask", "Task", "TaskBatch", "TextTask", "TokenData", "TokensTask",
           "attention_use", "build_task", "check_task", "check_token_range", "evaluate_tokens", "load_token_file"]  # fmt: skip

"""The prefill case of ``cram bench model`` for a model with the sync-free step: the prompt through
the routed prefill of :mod:`cramkit.gpu.model.prefill_step` (docs/inference.md, "Prefill through
the routed step"), compiled with ``torch.compile`` here, before any timing (``compiled``), or run
uncompiled (also whenever ``$CRAM_DECODE_BACKEND`` is ``uncompiled``, as in the test suite). The state is preallocated and zeroed untimed (as ``model.init_state`` is for the eager
prefill); the FLOP counter runs the same prefill uncompiled (a compiled graph's work is invisible
to it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from cramkit.gpu.model.compiled import BACKEND_ENV, _one_line, _quiet
from cramkit.gpu.model.decode_step import empty_step_state
from cramkit.gpu.model.gathered import routed_capacity
from cramkit.gpu.model.prefill_step import PrefillStep, prefill_into


def has_fast_prefill(model) -> bool:
    from cramkit.gpu.model.network import CramModel

    return isinstance(model, CramModel)


def _capacity(model, tokens, route) -> int:
    """The routed-row buffer of the case: from the forced route, else from the routers' own
    decisions on these tokens (one untimed prefill)."""
    if route is not None:
        return routed_capacity(route)
    if not model.cram_layers:
        return 0
    _, state = prefill_into(model, tokens, tokens.shape[1])
    return max(routed_capacity(r) for r in state.routes())


def prefill_case(model, tokens, route, compiled: bool) -> tuple[Callable, Callable, str, tuple]:
    """(setup, timed, method, (setup, uncompiled timed)) of the sync-free prefill of ``tokens``."""
    bsz, t_len = tokens.shape
    cap = _capacity(model, tokens, route)
    state = empty_step_state(model, bsz, t_len)
    flat = state.flat()[1:]
    step = PrefillStep(model, cap, [tuple(layer) for layer in state.layers])
    method = f"sync-free prefill, routed capacity {cap}"

    def setup():
        for t in flat:
            t.zero_()
        return flat

    def plain(args):
        with torch.no_grad():
            step(tokens, route, *args)

    if not compiled or os.environ.get(BACKEND_ENV) == "uncompiled":  # the test suite: never compile
        return setup, plain, method + ", uncompiled", (setup, plain)
    start = time.perf_counter()
    try:
        with _quiet():
            fn = torch.compile(step, fullgraph=True, dynamic=False)
            with torch.no_grad():
                fn(tokens, route, *setup())
    except Exception as exc:  # noqa: BLE001 -- a compile failure falls back, said in the row's method
        return setup, plain, f"{method}, uncompiled (torch.compile failed: {_one_line(exc)})", (setup, plain)

    def run(args):
        with torch.no_grad():
            fn(tokens, route, *args)

    return setup, run, f"{method}, torch.compile (compiled in {time.perf_counter() - start:.1f} s, untimed)", (setup, plain)

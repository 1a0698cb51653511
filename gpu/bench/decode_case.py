"""The decode case of ``cram bench model``: ``k`` steps after an untimed prefill, through the
eager ``model.step`` or the compiled sync-free step (:class:`cramkit.gpu.model.compiled.FastDecoder`,
compiled here, before any timing; docs/inference.md, "The compiled decode step")."""

from __future__ import annotations

from collections.abc import Callable

import torch


def decode_case(model, tokens, route, t_len, steps, compiled=False) -> tuple[Callable, Callable, str, tuple]:
    """(setup, timed, method, (eager setup, eager timed)) of the decode case at context ``t_len``:
    prefill ``t_len - 1`` tokens (untimed), then ``steps`` steps. The eager pair is what the FLOP
    counter runs (a compiled graph's work is invisible to it)."""
    bsz = tokens.shape[0]
    method = f"{steps} steps after a {t_len - 1}-token prefill"
    if route is not None:
        method += f"; {int(route[:, t_len - 1 : t_len - 1 + steps].sum())} of {bsz * steps} steps attend"

    def setup():
        state = model.init_state(bsz, t_len + steps)
        kw = {} if route is None else {"route": route[:, : t_len - 1]}
        with torch.no_grad():
            model.prefill(tokens[:, : t_len - 1], state, **kw)
        return state

    def decode(state):
        with torch.no_grad():
            for i in range(t_len - 1, t_len - 1 + steps):
                kw = {} if route is None else {"route": route[:, i]}
                model.step(tokens[:, i], state, **kw)

    if compiled and _fast_step(model):
        fast_setup, fast_decode, backend = _compiled(model, tokens, route, t_len, steps)
        return fast_setup, fast_decode, f"{method}; {backend}", (setup, decode)
    if compiled and _is_transformer(model):
        fast_setup, fast_decode, backend = _transformer_compiled(model, tokens, setup, t_len, steps)
        return fast_setup, fast_decode, f"{method}; {backend}", (setup, decode)
    return setup, decode, method + "; eager step", (setup, decode)


def _fast_step(model) -> bool:
    from cramkit.gpu.model.network import CramModel

    return isinstance(model, CramModel)


def _compiled(model, tokens, route, t_len, steps) -> tuple[Callable, Callable, str]:
    from cramkit.gpu.model.compiled import FastDecoder

    bsz, total = tokens.shape[0], t_len + steps
    dec = FastDecoder(model)
    dec.prepare(bsz, total, total)  # one bucket holds every step: one graph, no move while timed
    window = range(t_len - 1, t_len - 1 + steps)
    toks = [tokens[:, i].contiguous() for i in window]
    routes = [None] * steps if route is None else [route[:, i].contiguous() for i in window]

    def setup():
        kw = {} if route is None else {"route": route[:, : t_len - 1]}
        dec.prefill(tokens[:, : t_len - 1], total, reserve=total, **kw)
        return dec

    def decode(dec):
        for tok, r in zip(toks, routes):
            dec.step(tok, route=r, check=False)

    return setup, decode, f"{dec.backend_used} step (compiled in {dec.compile_seconds:.1f} s, untimed)"


def _is_transformer(model) -> bool:
    from cramkit.gpu.model.baselines import TransformerLM

    return isinstance(model, TransformerLM)


def _transformer_compiled(model, tokens, eager_setup, t_len, steps) -> tuple[Callable, Callable, str]:
    """The transformer's static-KV step (:class:`cramkit.gpu.model.baselines.TransformerStep`) over
    a cache of ``t_len + steps`` positions (the eager prefill fills it), compiled the way the
    CRAM models' steps are (:func:`cramkit.gpu.model.compiled.backend_chain`, without CUDA graphs:
    AOTInductor where a C++ compiler is found, else ``torch.compile``, else uncompiled, or what
    ``$CRAM_DECODE_BACKEND`` names; one warning line per failure), cached on disk like theirs."""
    import hashlib
    import inspect
    import time

    from cramkit.gpu.model import baselines
    from cramkit.gpu.model import compiled as cc

    step = baselines.TransformerStep(model)
    state = eager_setup()
    example = [tokens[:, 0].clone(), torch.zeros((), dtype=torch.int64, device=tokens.device)]
    example += [t.detach().clone() for t in state.keys + state.values]
    key = hashlib.sha256(repr([cc.weights_hash(model), [tuple(t.shape) for t in example], str(example[2].dtype),
                               str(example[2].device), torch.__version__, inspect.getsource(baselines),
                               repr(cc.INDUCTOR_OPTIONS)]).encode()).hexdigest()[:32]  # fmt: skip
    chain = [b for b in cc.backend_chain() if b != "cudagraph"]  # its arguments are not DecodeStep's
    start = time.perf_counter()
    name, run, _ = cc.compile_step(chain, step, example, key, cc.cache_dir(), cc._warn, "transformer step")
    seconds = time.perf_counter() - start
    toks = [tokens[:, i].contiguous() for i in range(t_len - 1, t_len - 1 + steps)]

    def setup():
        st = eager_setup()
        return [None, torch.tensor(t_len - 1, dtype=torch.int64, device=tokens.device), *st.keys, *st.values]

    def decode(args):
        for tok in toks:
            args[0] = tok
            run(args)

    return setup, decode, f"{name} static-KV step (compiled in {seconds:.1f} s, untimed)"

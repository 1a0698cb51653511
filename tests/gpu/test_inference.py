"""Recurrent inference (docs/inference.md): prefill + step give the whole-sequence forward's logits
for every block kind, several routers and forced random routes; overflow is a clear error."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cramkit.errors import CramError
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.network import CramModel

VOCAB = 40


def _model(pattern: str, router: str, *, max_len: int = 0, seed: int = 0) -> CramModel:
    cfg = ModelConfig(pattern=pattern, d_model=16, n_heads=2, ssm_heads=2, ssm_head_dim=8, d_state=4,
                      conv_width=3, memory_hidden=16, router_hidden=8, max_len=max_len, chunk_size=4)  # fmt: skip
    torch.manual_seed(seed)
    # init_bias 0: the cram router's decisions are mixed, not "attend everywhere"
    model = CramModel(cfg, RouterConfig(name=router, init_bias=0.0), VOCAB, budget=0.3)
    return model.eval()


def _stepwise(model, tokens, t0, route=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = model.init_state(tokens.shape[0], tokens.shape[1])
    parts = [model.prefill(tokens[:, :t0], state, route=None if route is None else route[:, :t0], generator=gen)]
    for t in range(t0, tokens.shape[1]):
        r = None if route is None else route[:, t]
        parts.append(model.step(tokens[:, t], state, route=r, generator=gen)[:, None])
    return torch.cat(parts, dim=1), state


PATTERNS = ["S", "A", "G", "SA", "AS", "SAG", "GSA", "AA"]


@settings(max_examples=15)
@given(
    pattern=st.sampled_from(PATTERNS),
    router=st.sampled_from(["cram", "dense", "skip-all", "stride", "none"]),
    t_len=st.integers(2, 14),
    bsz=st.integers(1, 3),
    data=st.data(),
)
def test_prefill_then_steps_equal_the_forward(pattern, router, t_len, bsz, data):
    t0 = data.draw(st.integers(1, t_len), label="prefix")
    seed = data.draw(st.integers(0, 3), label="seed")
    model = _model(pattern, router, max_len=16 if seed % 2 else 0, seed=seed)
    tokens = torch.randint(0, VOCAB, (bsz, t_len), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = model(tokens, generator=torch.Generator().manual_seed(seed))
    got, state = _stepwise(model, tokens, t0, seed=seed)
    torch.testing.assert_close(got, full.logits, rtol=1e-4, atol=1e-4)
    for trace, route in zip(full.traces, state.routes()):
        assert torch.equal(trace.route, route)


@settings(max_examples=15)
@given(
    pattern=st.sampled_from(["A", "SA", "AS", "SAGA"]),
    router=st.sampled_from(["cram", "learned-static", "random", "oracle-pos", "dense", "stride"]),
    t_len=st.integers(2, 14),
    rho=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_forced_random_routes_equal_the_forward(pattern, router, t_len, rho, data):
    t0 = data.draw(st.integers(1, t_len), label="prefix")
    seed = data.draw(st.integers(0, 100), label="seed")
    model = _model(pattern, router, seed=seed % 3)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (2, t_len), generator=gen)
    route = torch.rand(2, t_len, generator=gen) < rho
    with torch.no_grad():
        full = model(tokens, route=route)
    got, state = _stepwise(model, tokens, t0, route=route)
    torch.testing.assert_close(got, full.logits, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(r, route) for r in state.routes())


def test_routed_off_step_reads_no_cache():
    model = _model("SA", "cram")
    state = model.init_state(2, 8)
    model.prefill(torch.randint(0, VOCAB, (2, 4)), state, route=torch.ones(2, 4, dtype=torch.bool))
    layer_state = state.layers[1]
    layer_state.k[:, :, :4] = float("nan")  # a read of the cache would poison the output
    layer_state.v[:, :, :4] = float("nan")
    out = model.step(torch.tensor([1, 2]), state, route=torch.tensor([False, True]))
    assert torch.isfinite(out[0]).all() and not torch.isfinite(out[1]).all()


def test_overflow_and_misuse_are_clear_errors():
    model = _model("SA", "dense")
    state = model.init_state(1, 5)
    with pytest.raises(CramError, match="max_len=5"):
        model.prefill(torch.zeros(1, 6, dtype=torch.long), state)
    model.prefill(torch.zeros(1, 5, dtype=torch.long), state)
    with pytest.raises(CramError, match="max_len=5"):
        model.step(torch.zeros(1, dtype=torch.long), state)
    with pytest.raises(CramError, match="fresh state"):
        model.prefill(torch.zeros(1, 2, dtype=torch.long), state)
    with pytest.raises(CramError, match="model.max_len"):
        _model("SA", "dense", max_len=8).init_state(1, 9)
    with pytest.raises(CramError, match="route must be"):
        model.prefill(torch.zeros(1, 2, dtype=torch.long), model.init_state(1, 4), route=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(CramError, match="token ids"):
        model.prefill(torch.full((1, 2), VOCAB), model.init_state(1, 4))
    static = _model("SA", "learned-static")
    st_ = static.init_state(1, 6)
    static.prefill(torch.zeros(1, 3, dtype=torch.long), st_)
    with pytest.raises(CramError, match="learned-static"):
        static.step(torch.zeros(1, dtype=torch.long), st_)


def test_state_memory_is_what_the_docs_say():
    # K/V at every position: 2 * max_len * d_model floats per attention layer and sequence
    model = _model("SA", "cram")
    state = model.init_state(1, 64)
    kv = 2 * 64 * 16 * 4
    assert state.layers[1].k.numel() * 4 * 2 == kv
    assert state.nbytes() >= kv

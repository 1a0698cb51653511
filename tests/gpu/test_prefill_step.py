"""The sync-free prefill (gpu/model/prefill_step.py; each mixer's ``fast_prefill``): logits equal to
the whole-sequence forward and to the eager ``model.prefill``, and the decode continuing from its
state equal to the forward, for every mixer letter (S, A, G, W), every router and forced routes;
the routed-row buffer (capacity, gather slots, gathered attention) on its own; its FLOP count."""

from __future__ import annotations

import pytest
import torch

from cramkit.errors import CramError
from cramkit.gpu.model.compiled import FastDecoder
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.decode_step import empty_step_state
from cramkit.gpu.model.gathered import gather_slots, gathered_attention, key_spans, routed_capacity
from cramkit.gpu.model.network import CramModel
from cramkit.gpu.model.prefill_step import PrefillStep, prefill_into
from cramkit.gpu.ops.routed_attention.reference import routed_attention_reference

VOCAB = 48
T0, STEPS = 40, 30  # a 40-position prompt (window 5, chunk 4), then 30 steps: buckets 64 -> 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(pattern: str, router: str, *, max_len: int = 0, budget: float = 0.3) -> CramModel:
    cfg = ModelConfig(pattern=pattern, d_model=16, n_heads=2, ssm_heads=2, ssm_head_dim=8, d_state=4,
                      conv_width=3, memory_hidden=16, router_hidden=8, max_len=max_len, chunk_size=4,
                      window=5)  # fmt: skip
    torch.manual_seed(0)
    return CramModel(cfg, RouterConfig(name=router, init_bias=0.0), VOCAB, budget=budget).eval()


def _tokens(bsz=2, n=T0 + STEPS, seed=0):
    return torch.randint(0, VOCAB, (bsz, n), generator=torch.Generator().manual_seed(seed))


def _check(model, tokens, route=None, *, forward=True):
    """The sync-free prefill and the steps after it against the eager prefill and steps (same
    draws), and against the whole-sequence forward at the decisions they made."""
    gen_e, gen_f = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    state = model.init_state(tokens.shape[0], tokens.shape[1])
    want_p = model.prefill(tokens[:, :T0], state, route=None if route is None else route[:, :T0], generator=gen_e)
    dec = FastDecoder(model, backend="uncompiled")
    got_p = dec.prefill(tokens[:, :T0], tokens.shape[1], route=None if route is None else route[:, :T0], generator=gen_f)
    torch.testing.assert_close(got_p, want_p, rtol=1e-5, atol=1e-5)
    want, got = [], []
    for t in range(T0, tokens.shape[1]):
        r = None if route is None else route[:, t]
        want.append(model.step(tokens[:, t], state, route=r, generator=gen_e))
        got.append(dec.step(tokens[:, t], route=r, generator=gen_f))
    got, want = torch.stack(got, 1), torch.stack(want, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(dec.routes(), state.routes()):
        assert torch.equal(a, b)
    if forward:
        route = route if route is not None else (dec.routes()[0] if dec.routes() else None)
        with torch.no_grad():
            full = model(tokens, route=route).logits.view(tokens.shape[0], tokens.shape[1], -1)
        torch.testing.assert_close(got_p, full[:, :T0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, full[:, T0:], rtol=1e-5, atol=1e-5)
    return dec


OWN = ["cram", "dense", "none", "skip-all", "stride", "random"]


@pytest.mark.parametrize("router", OWN)
@pytest.mark.parametrize("pattern", ["SAGW", "WASA"])
def test_own_routes_equal_the_eager_prefill_the_steps_and_the_forward(pattern, router):
    model = _model(pattern, router, max_len=T0 + STEPS if pattern == "WASA" else 0)
    # two CRAM layers decide apart (cram, random, stride): the forward takes one route
    _check(model, _tokens(), forward=pattern.count("A") == 1 or router in ("dense", "none", "skip-all"))


@pytest.mark.parametrize("router", ["cram", "learned-static", "oracle-pos", "random", "dense", "stride", "none"])
def test_forced_routes_equal_the_eager_prefill_the_steps_and_the_forward(router):
    route = torch.rand(2, T0 + STEPS, generator=torch.Generator().manual_seed(5)) < 0.3
    route[1, :T0] = False  # one sequence routes nothing in the prompt: padding slots only
    _check(_model("SAGW", router), _tokens(), route)


def test_learned_static_decides_over_the_whole_prompt():
    model = _model("SA", "learned-static")
    tokens = _tokens()[:, :T0]
    state = model.init_state(2, T0)
    want = model.prefill(tokens, state)
    got, st = prefill_into(model, tokens, 64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(st.routes()[0], state.routes()[0]) and st.routes()[0].any()


def test_routed_rows_go_through_a_fixed_capacity_buffer():
    route = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 0, 0, 1], [0] * 10], dtype=torch.bool)
    assert routed_capacity(route) == 10 and routed_capacity(route, least=2) == 4 and routed_capacity(route[1:]) == 0
    slot, idx = gather_slots(route, 4)
    assert idx.tolist() == [[1, 3, 4, 9], [0, 0, 0, 0]]
    assert slot[0].tolist() == [4, 0, 4, 1, 2, 4, 4, 4, 4, 3] and (slot[1] == 4).all()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 10, 3, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    want = routed_attention_reference(q, k, v, route, scale=8**-0.5)  # (B, T, H, D), zeros at non-routed rows
    qg = q.gather(1, idx[..., None, None].expand(2, 4, 3, 8)).transpose(1, 2)
    got = gathered_attention(qg, k.transpose(1, 2), v.transpose(1, 2), idx).transpose(1, 2)  # (B, C, H, D)
    torch.testing.assert_close(got[0], want[0, idx[0]])


def test_gathered_attention_in_groups_equals_the_reference_and_computes_less_than_every_pair():
    gen = torch.Generator().manual_seed(1)
    route = torch.zeros(2, 200, dtype=torch.bool)
    route[0, torch.randperm(200, generator=gen)[:40]] = True  # 40 rows: two groups of 32, padding after
    route[1, torch.randperm(200, generator=gen)[:10]] = True
    cap = routed_capacity(route)
    slot, idx = gather_slots(route, cap)
    assert cap == 64 and [a for a, _, _ in key_spans(idx)] == [0, 32]
    spans = key_spans(idx)
    assert spans[0][2] < 200 and sum((b - a) * n for a, b, n in spans) < cap * 200
    q, k, v = (torch.randn(2, 200, 3, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    want = routed_attention_reference(q, k, v, route, scale=8**-0.5)
    qg = q.gather(1, idx[..., None, None].expand(2, cap, 3, 8)).transpose(1, 2)
    got = gathered_attention(qg, k.transpose(1, 2), v.transpose(1, 2), idx).transpose(1, 2)
    for b in range(2):
        n = int(route[b].sum())
        torch.testing.assert_close(got[b, :n], want[b, idx[b, :n]])


def test_the_compilable_prefill_equals_prefill_into():
    model = _model("SAGW", "random")
    tokens = _tokens()[:, :T0]
    route = torch.rand(2, T0, generator=torch.Generator().manual_seed(2)) < 0.2
    want, st = prefill_into(model, tokens, 64, route=route)
    fresh_flat = empty_step_state(model, 2, 64).flat()[1:]
    step = PrefillStep(model, routed_capacity(route), [tuple(layer) for layer in st.layers])
    with torch.no_grad():
        got = step(tokens, route, *fresh_flat)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(fresh_flat, st.flat()[1:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_clear_errors():
    model = _model("SA", "cram")
    with pytest.raises(CramError, match=r"shape \(B, T\)"):
        prefill_into(model, torch.zeros(3, dtype=torch.int64), 64)
    with pytest.raises(CramError, match="does not fit"):
        prefill_into(model, _tokens(1, 70), 64)
    with pytest.raises(CramError, match="route must be a bool tensor"):
        prefill_into(model, _tokens(1, 8), 64, route=torch.ones(1, 8))


def test_cuda_graphs_are_never_chosen_on_the_cpu_and_fall_back_with_one_line(monkeypatch):
    monkeypatch.delenv("CRAM_DECODE_BACKEND", raising=False)
    model = _model("SA", "cram")
    assert "cudagraph" not in FastDecoder(model, backend="auto").chain and "compile" in FastDecoder(model).chain
    lines = []
    dec = FastDecoder(model, backend="cudagraph", warn=lines.append)
    dec.prefill(_tokens(1)[:, :8], 12)
    dec.step(_tokens(1)[:, 8])
    assert lines == ["cudagraph decode step unavailable (CramError: CUDA graphs need a CUDA device); using uncompiled"]
    assert dec.backend_used == "uncompiled"


@pytest.mark.slow
def test_the_compiled_prefill_equals_prefill_into():
    """torch.compile of PrefillStep (fullgraph: no host read left inside; the gathered attention
    an opaque op) gives the uncompiled prefill's logits and state."""
    model = _model("SAGW", "random")
    tokens = _tokens()[:, :T0]
    route = torch.rand(2, T0, generator=torch.Generator().manual_seed(2)) < 0.2
    want, st = prefill_into(model, tokens, 64, route=route)
    flat = empty_step_state(model, 2, 64).flat()[1:]
    step = torch.compile(PrefillStep(model, routed_capacity(route), [tuple(layer) for layer in st.layers]),
                         fullgraph=True, dynamic=False)  # fmt: skip
    with torch.no_grad():
        got = step(tokens, route, *flat)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(flat, st.flat()[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

"""The sync-free decode step (gpu/model/decode_step.py) and its compiled runner
(gpu/model/compiled.py): logits equal to the eager step and the whole-sequence forward over 64+
steps with a bucket change mid-generation, for every mixer letter, router and forced route; clear
errors; one warning line when a compiler fails; the disk cache.

The default set runs the step uncompiled (the same function the compilers see; compiling takes
~30-60 s per graph on a small CPU); the ``slow`` tests compile it with AOTInductor and
torch.compile, once per module, into a temporary cache folder."""

from __future__ import annotations

import pytest
import torch

from cramkit.errors import CramError
from cramkit.gpu.model import compiled as cc
from cramkit.gpu.model.compiled import FastDecoder, cache_dir, graph_key
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.decode_step import STEP_RULES, bucket_for, own_route_reason
from cramkit.gpu.model.inference import generate
from cramkit.gpu.model.network import CramModel

VOCAB = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")

T0, STEPS = 12, 64  # prefill 12 positions, then 64 steps: buckets 64 -> 76 (capped at max_len)


def _model(pattern: str, router: str, *, max_len: int = 0, seed: int = 0, budget: float = 0.3) -> CramModel:
    cfg = ModelConfig(pattern=pattern, d_model=16, n_heads=2, ssm_heads=2, ssm_head_dim=8, d_state=4,
                      conv_width=3, memory_hidden=16, router_hidden=8, max_len=max_len, chunk_size=4,
                      window=5)  # fmt: skip
    torch.manual_seed(seed)
    return CramModel(cfg, RouterConfig(name=router, init_bias=0.0), VOCAB, budget=budget).eval()


def _tokens(bsz=2, n=T0 + STEPS, seed=0):
    return torch.randint(0, VOCAB, (bsz, n), generator=torch.Generator().manual_seed(seed))


def _eager(model, tokens, route=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    state = model.init_state(tokens.shape[0], tokens.shape[1])
    model.prefill(tokens[:, :T0], state, route=None if route is None else route[:, :T0], generator=gen)
    out = [model.step(tokens[:, t], state, route=None if route is None else route[:, t], generator=gen)
           for t in range(T0, tokens.shape[1])]  # fmt: skip
    return torch.stack(out, 1), state.routes()


def _fast(dec: FastDecoder, tokens, route=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    dec.prefill(tokens[:, :T0], tokens.shape[1], route=None if route is None else route[:, :T0], generator=gen)
    out = [dec.step(tokens[:, t], route=None if route is None else route[:, t], generator=gen)
           for t in range(T0, tokens.shape[1])]  # fmt: skip
    return torch.stack(out, 1), dec.routes()


def _check(model, dec, tokens, route=None, forward=True):
    want, want_routes = _eager(model, tokens, route)
    got, routes = _fast(dec, tokens, route)
    assert got.shape[1] >= 64 and len(dec.graphs) >= 2  # a bucket change mid-generation
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(routes, want_routes):
        assert torch.equal(a, b)
    if forward:  # the whole-sequence forward at the decisions the steps made
        route = route if route is not None else (routes[0] if routes else None)
        with torch.no_grad():
            full = model(tokens, route=route).logits[:, T0:]
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


# -- the sync-free step, uncompiled (default set) -----------------------------------------------

OWN = ["cram", "dense", "none", "skip-all", "stride", "random"]


@pytest.mark.parametrize("router", OWN)
@pytest.mark.parametrize("pattern", ["SAGW", "WASA"])
def test_own_routes_equal_the_eager_step_and_the_forward(pattern, router):
    model = _model(pattern, router, max_len=T0 + STEPS if pattern == "WASA" else 0)
    dec = FastDecoder(model, backend="uncompiled")
    # two CRAM layers decide apart (cram, random): the forward takes one route, so only the eager step
    _check(model, dec, _tokens(), forward=pattern.count("A") == 1 or router in ("dense", "none", "skip-all"))


@pytest.mark.parametrize("router", ["cram", "learned-static", "oracle-pos", "random", "dense", "stride"])
def test_forced_routes_equal_the_eager_step_and_the_forward(router):
    model = _model("SAGW", router)
    route = torch.rand(2, T0 + STEPS, generator=torch.Generator().manual_seed(5)) < 0.3
    _check(model, FastDecoder(model, backend="uncompiled"), _tokens(), route)


def test_a_stride_phase_is_drawn_at_the_first_own_step_after_a_forced_prefill():
    model = _model("SA", "stride", budget=0.25)
    tokens = _tokens()
    route = torch.zeros(2, T0, dtype=torch.bool)
    gens = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    state = model.init_state(2, tokens.shape[1])
    model.prefill(tokens[:, :T0], state, route=route, generator=gens[0])
    dec = FastDecoder(model, backend="uncompiled")
    dec.prefill(tokens[:, :T0], tokens.shape[1], route=route, generator=gens[1])
    for t in range(T0, T0 + 8):
        torch.testing.assert_close(dec.step(tokens[:, t], generator=gens[1]), model.step(tokens[:, t], state, generator=gens[0]))
    assert torch.equal(dec.routes()[0], state.routes()[0])


def test_routers_that_cannot_decide_stepwise_say_why():
    assert set(STEP_RULES) == {"cram", "dense", "none", "skip-all", "stride", "random"}
    model = _model("SA", "learned-static")
    assert "learned-static" in own_route_reason(model)
    dec = FastDecoder(model, backend="uncompiled")
    dec.prefill(_tokens()[:, :T0], 40)
    with pytest.raises(CramError, match="cannot decide token by token"):
        dec.step(_tokens()[:, T0])
    lines = []
    with pytest.raises(CramError, match="whole sequence"):  # generate: the eager step's own error
        generate(model, _tokens(1)[:, :T0], max_new_tokens=4, warn=lines.append)
    assert not lines


def test_generate_with_the_step_equals_the_eager_generate():
    model = _model("SAG", "cram")
    prompt = _tokens(1)[:, :T0]
    fast = generate(model, prompt, max_new_tokens=70, backend="uncompiled")
    slow = generate(model, prompt, max_new_tokens=70, backend="eager")
    assert fast.backend == "uncompiled" and slow.backend == "eager"
    assert torch.equal(fast.tokens, slow.tokens)
    assert all(torch.equal(a, b) for a, b in zip(fast.routes, slow.routes))


def test_clear_errors(monkeypatch):
    model = _model("SA", "cram")
    with pytest.raises(CramError, match="backend"):
        FastDecoder(model, backend="fast")
    monkeypatch.setenv("CRAM_DECODE_BACKEND", "gpu")
    with pytest.raises(CramError, match="CRAM_DECODE_BACKEND"):
        FastDecoder(model)
    dec = FastDecoder(model, backend="uncompiled")
    with pytest.raises(CramError, match="prefill first"):
        dec.step(torch.tensor([1]))
    dec.prefill(_tokens(1)[:, :4], 5)
    with pytest.raises(CramError, match=r"shape \(1,\)"):
        dec.step(torch.tensor([1, 2]))
    with pytest.raises(CramError, match=r"token ids must lie in \[0, 48\)"):
        dec.step(torch.tensor([VOCAB]))
    with pytest.raises(CramError, match="route must be a bool tensor"):
        dec.step(torch.tensor([1]), route=torch.tensor([1]))
    dec.step(torch.tensor([1]))
    with pytest.raises(CramError, match="max_len=5"):
        dec.step(torch.tensor([1]))


def test_a_failing_compiler_is_one_warning_line_and_the_next_backend_serves(monkeypatch):
    def boom(*args):
        raise RuntimeError("no compiler here\nsecond line of a long traceback")

    monkeypatch.setitem(cc._COMPILERS, "aoti", boom)
    lines = []
    model = _model("SA", "cram")
    dec = FastDecoder(model, backend="aoti", warn=lines.append)
    want, _ = _eager(model, _tokens())
    got, _ = _fast(dec, _tokens())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert lines == ["aoti decode step unavailable (RuntimeError: no compiler here); using uncompiled"]
    assert dec.backend_used == "uncompiled"


def test_buckets_cache_folder_and_keys(monkeypatch, tmp_path):
    assert [bucket_for(n) for n in (1, 64, 65, 128, 129, 16384, 16385)] == [64, 64, 128, 128, 256, 16384, 32768]
    monkeypatch.setenv("CRAM_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "decode"
    monkeypatch.delenv("CRAM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "cram" / "decode"
    a, b = _model("SA", "cram", seed=0), _model("SA", "cram", seed=1)
    assert graph_key(a, 1, 64) == graph_key(_model("SA", "cram", seed=0), 1, 64)
    assert len({graph_key(a, 1, 64), graph_key(b, 1, 64), graph_key(a, 2, 64), graph_key(a, 1, 128)}) == 4


# -- compiled (slow: each graph takes ~30-60 s to compile on 2 cores) -----------------------------


@pytest.fixture(scope="module")
def compiled_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("decode-cache")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aoti", "compile"])
def test_compiled_step_equals_the_eager_step_and_the_forward(backend, compiled_cache):
    """Every mixer letter (S, A, G, W), the cram router's own decisions and forced routes (one
    graph serves both), two buckets; then the disk cache serves a second decoder without compiling."""
    model = _model("SAGW", "cram", max_len=T0 + STEPS)
    lines = []
    dec = FastDecoder(model, backend=backend, folder=compiled_cache, warn=lines.append)
    _check(model, dec, _tokens())
    assert dec.backend_used == backend and not lines, lines
    route = torch.rand(2, T0 + STEPS, generator=torch.Generator().manual_seed(5)) < 0.3
    _check(model, dec, _tokens(seed=1), route)
    if backend == "aoti":
        again = FastDecoder(model, backend="aoti", folder=compiled_cache)
        _check(model, again, _tokens(seed=2))
        assert again.compile_seconds < 10 and len(list(compiled_cache.glob("*.pt2"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("router", ["random", "stride"])
def test_compiled_step_with_drawing_routers(router, compiled_cache):
    model = _model("SASA", router)
    dec = FastDecoder(model, backend="aoti", folder=compiled_cache)
    _check(model, dec, _tokens(), forward=False)
    assert dec.backend_used == "aoti"

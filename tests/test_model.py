"""The hybrid model: shapes, causality, exact zeros where attention is skipped, every router's
decision rule, the FLOP count of SPEC §1.4, and gradients reaching every trained part."""

from __future__ import annotations

import pytest
import torch

from cramkit.gpu.config import load_config
from cramkit.gpu.data import to_tensors, train_world
from cramkit.gpu.build import build_model
from cramkit.gpu.model import CramAttention, attention_flops
from cramkit.sim.srcd import generate, split_seeds

TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16"]  # fmt: skip


def _setup(*extra: str, count: int = 6):
    cfg = load_config(None, [*TINY, *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    scfg = cfg.srcd_config()
    world = train_world(scfg, 0)
    tb = to_tensors(scfg, generate(scfg, world, split_seeds("train", count)))
    return cfg, scfg, model, tb


def test_forward_shapes_and_finite_loss():
    cfg, scfg, model, tb = _setup()
    out = model(tb.tokens, tb.targets, query_mask=tb.query_mask)
    assert out.logits.shape == (tb.tokens.shape[0] * scfg.n_q, scfg.v)
    assert torch.isfinite(out.loss)
    assert set(out.parts) >= {"task", "epi", "sem", "distill", "router", "total"}
    assert len(out.traces) == cfg.model.pattern.count("A")


def test_router_opens_everywhere_at_init():
    _, _, model, tb = _setup()
    out = model(tb.tokens, tb.targets)
    assert bool(out.traces[0].route.all())


def test_causal_prediction_does_not_see_the_future():
    _, scfg, model, tb = _setup("router.name=dense")
    model.eval()
    t = 40
    toks2 = tb.tokens.clone()
    toks2[:, t + 1 :] = scfg.filler_offset  # change every later token
    with torch.no_grad():
        a = model(tb.tokens).logits[:, : t + 1]
        b = model(toks2).logits[:, : t + 1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_skipped_positions_get_exact_zeros_from_attention():
    _, _, model, tb = _setup()
    layer = next(m for m in model.modules() if isinstance(m, CramAttention))
    h = torch.randn(3, 17, model.cfg.d_model)
    route = torch.rand(3, 17) < 0.3
    a = layer.attend(h, route)
    assert torch.all(a[~route] == 0)
    assert torch.all(a[route].abs().sum(-1) > 0)
    # a routed row equals the same row computed with every position routed
    full = layer.attend(h, torch.ones(3, 17, dtype=torch.bool))
    torch.testing.assert_close(a[route], full[route], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, check",
    [
        ("dense", lambda r, q, n: bool(r.all())),
        ("none", lambda r, q, n: not bool(r.any())),
        ("skip-all", lambda r, q, n: not bool(r.any())),
        ("stride", lambda r, q, n: torch.equal(r[0], (torch.arange(n) + 1) % 4 == 0)),
        ("oracle-pos", lambda r, q, n: not bool((r & ~q).any()) and 0 < r.sum() < q.sum()),
        ("learned-static", lambda r, q, n: bool((r.sum(1) == 2).all())),
    ],
)
def test_router_rules(name, check):
    # budget 0.25 of n_q = 8 queries: stride 4, top-2 capacity, oracle-pos on a quarter of the slots
    _, scfg, model, tb = _setup(f"router.name={name}", "router.budget=0.25", count=32)
    out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=torch.Generator().manual_seed(0))
    assert check(out.traces[0].route, tb.query_mask, scfg.n)


def test_learned_static_query_scope_picks_only_query_slots():
    _, _, model, tb = _setup("router.name=learned-static", "router.budget=0.25", "router.static_scope=queries", count=16)
    out = model(tb.tokens, tb.targets, query_mask=tb.query_mask)
    route = out.traces[0].route
    assert not bool((route & ~tb.query_mask).any()) and bool((route.sum(1) == 2).all())


def test_random_router_rate_matches_budget():
    _, _, model, tb = _setup("router.name=random", "router.budget=0.3", count=64)
    out = model(tb.tokens, generator=torch.Generator().manual_seed(1))
    rate = float(out.traces[0].route.float().mean())
    assert abs(rate - 0.3) < 0.03


def test_explore_mask_forces_attention():
    _, _, model, tb = _setup("router.name=skip-all")
    explore = torch.zeros_like(tb.query_mask)
    explore[:, 10] = True
    out = model(tb.tokens, tb.targets, explore=explore)
    assert torch.equal(out.traces[0].route, explore)
    assert not bool(out.traces[0].router_route.any())


def test_gradients_reach_every_trained_part():
    _, _, model, tb = _setup()
    out = model(tb.tokens, tb.targets, query_mask=tb.query_mask)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    layer = next(m for m in model.modules() if isinstance(m, CramAttention))
    assert float(layer.router[-1].weight.grad.abs().sum()) > 0
    assert float(layer.memory.fc.weight.grad.abs().sum()) > 0
    assert float(layer.q.weight.grad.abs().sum()) > 0


def test_router_sees_only_a_detached_state():
    _, _, model, _ = _setup()
    layer = next(m for m in model.modules() if isinstance(m, CramAttention))
    h = torch.randn(2, 9, model.cfg.d_model, requires_grad=True)
    layer.router_logits(h).sum().backward()
    assert h.grad is None  # sg(h): the router cannot shape the state it reads
    assert float(layer.router[0].weight.grad.abs().sum()) > 0


def test_attention_flops_match_spec():
    d, n = 16, 10
    full = torch.ones(2, n, dtype=torch.bool)
    fr, fa = attention_flops(full, d)
    assert fr == pytest.approx(fa)
    fr0, _ = attention_flops(torch.zeros(2, n, dtype=torch.bool), d)
    assert fr0 == 0  # never attending needs no keys or values
    first = torch.zeros(2, n, dtype=torch.bool)
    first[:, 0] = True  # the floor: K/V everywhere, one query with one key
    fr1, fa1 = attention_flops(first, d)
    floor = 4 * d * d * n / sum(8 * d * d + 4 * d * t for t in range(1, n + 1))
    assert fr1 / fa1 == pytest.approx(floor + (4 * d * d + 4 * d) / (fa1 / 2))
    one = torch.zeros(1, n, dtype=torch.bool)
    one[0, 4] = True  # position t = 5
    fr1, _ = attention_flops(one, d)
    assert fr1 == pytest.approx(4 * d * d * n + 4 * d * d + 4 * d * 5)

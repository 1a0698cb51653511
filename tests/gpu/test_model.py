"""The hybrid model: shapes, causality, exact zeros where attention is skipped, every router's
decision rule and budget, the FLOP count (docs/training.md), finite losses with all or no targets,
and gradients reaching every trained part."""

from __future__ import annotations

import pytest
import torch

from cramkit.gpu.model.cram import CramAttention
from cramkit.gpu.model.network import attention_flops
from cramkit.gpu.run.build import build_model
from cramkit.gpu.run.config import load_config
from cramkit.gpu.tasks.srcd import to_tensors, train_world
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
        ("stride", lambda r, q, n: bool(((r.float().view(r.shape[0], -1, 4).sum(-1)) == 1).all())),
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


# -- the router registry and one meaning of budget (issue #10) ------------------------------------


def _request(bsz, n, budget, n_targets, **kw):
    from cramkit.gpu.model.routers import RouteRequest

    return RouteRequest(bsz, torch.arange(n), budget, torch.full((bsz,), n_targets), **kw)


def test_registry_is_the_config_vocabulary_and_links_the_simulator():
    from cramkit.gpu.model.config import ROUTERS as CONFIG_ROUTERS
    from cramkit.gpu.model.routers import ROUTER_NAMES, make_router
    from cramkit.sim.routers import parse_router

    assert set(ROUTER_NAMES) == set(CONFIG_ROUTERS)
    linked = {}
    for name in ROUTER_NAMES:
        sim = make_router(name).sim_counterpart(0.25)
        if sim is not None:
            linked[name] = parse_router(sim.replace("<K>", "2")).name
    assert linked["dense"] == "ALL" and linked["stride"] == "STRIDE_4" and linked["random"] == "RAND_0.25"
    assert set(linked) == set(ROUTER_NAMES) - {"none"}


def test_unknown_router_is_a_clear_error():
    from cramkit.errors import CramError
    from cramkit.gpu.model.config import ModelConfig, RouterConfig
    from cramkit.gpu.model.network import CramModel

    with pytest.raises(CramError, match="router.name"):
        CramModel(ModelConfig(), RouterConfig(name="cramm"), 16)


def test_stride_attends_even_query_slots_at_the_budget():
    from cramkit.gpu.model.routers import StrideRouter

    n, bsz = 32, 400
    qmask = (torch.arange(n) % 2 == 0).expand(bsz, n)  # queries at even positions only
    route = StrideRouter().route(_request(bsz, n, 0.5, n // 2, generator=torch.Generator().manual_seed(0)))
    frac = float(route[qmask].float().mean())
    assert abs(frac - 0.5) < 0.06  # a fixed phase would attend none (or all) of them
    assert bool((route.sum(1) == n // 2).all())  # still every 2nd position


def test_learned_static_never_silently_attends_nothing():
    from cramkit.gpu.model.routers import LearnedStaticRouter, budget_count

    logits = torch.randn(5, 12)
    route = LearnedStaticRouter().route(_request(5, 12, 0.125, 1, logits=logits))
    assert bool((route.sum(1) == 1).all())  # round(0.125 * 1) = 0 -> 1
    assert bool((route == (logits == logits.max(1, keepdim=True).values)).all())
    assert budget_count(0.0, torch.tensor([8])).item() == 0
    assert budget_count(0.25, torch.tensor([8])).item() == 2


def test_budget_is_a_fraction_of_target_positions_in_language_modelling():
    # every position is a target: learned-static attends round(budget * T) positions per sequence
    from cramkit.gpu.model.config import ModelConfig, RouterConfig
    from cramkit.gpu.model.network import CramModel

    cfg = ModelConfig(pattern="SA", d_model=32, n_heads=2, ssm_heads=2, ssm_head_dim=16, d_state=8,
                      memory_hidden=32, router_hidden=16)  # fmt: skip
    model = CramModel(cfg, RouterConfig(name="learned-static"), 256, budget=0.25)
    tokens = torch.randint(0, 256, (3, 20))
    out = model(tokens, tokens)
    assert bool((out.traces[0].route.sum(1) == 5).all())
    out = model(tokens)  # no targets given: every position counts
    assert bool((out.traces[0].route.sum(1) == 5).all())


@pytest.mark.parametrize("router", ["cram", "learned-static", "random", "dense", "skip-all"])
@pytest.mark.parametrize("which", ["all", "none"])
def test_losses_are_finite_with_all_or_no_targets(router, which):
    from cramkit.gpu.model.config import ModelConfig, RouterConfig
    from cramkit.gpu.model.network import CramModel

    cfg = ModelConfig(pattern="SA", d_model=32, n_heads=2, ssm_heads=2, ssm_head_dim=16, d_state=8,
                      memory_hidden=32, router_hidden=16)  # fmt: skip
    torch.manual_seed(0)
    model = CramModel(cfg, RouterConfig(name=router, init_bias=0.0), 256, budget=0.25)
    tokens = torch.randint(0, 256, (2, 16))
    targets = tokens.roll(-1, 1) if which == "all" else torch.full_like(tokens, -1)
    out = model(tokens, targets, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    assert all(v == v for v in out.parts.values())  # no NaN part
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if which == "none":
        assert out.loss.item() == pytest.approx(out.parts.get("router", 0.0) * model.rcfg.loss_weight)

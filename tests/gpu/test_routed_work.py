"""Only the work the route needs (issue #9.2): the CRAM layer runs its query/output projections
and attention on routed rows and the semantic memory only where its output or a loss uses it.
The loss, every part and every gradient must equal the earlier formulation, which ran them at
every position (kept verbatim in tests/gpu/formulation_v0.py), on the same weights and routes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from cramkit.gpu.run.build import build_model
from cramkit.gpu.run.config import load_config
from cramkit.gpu.tasks.srcd import to_tensors, train_world
from cramkit.sim.srcd import generate, split_seeds

_spec = importlib.util.spec_from_file_location("formulation_v0", Path(__file__).with_name("formulation_v0.py"))
v0 = importlib.util.module_from_spec(_spec)
sys.modules["formulation_v0"] = v0
_spec.loader.exec_module(v0)

TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "model.pattern=SAA"]  # fmt: skip


# the formulation before issue 24: every loss at every target position, reaching the backbone and head
V0_LOSSES = ["router.aux_grad=shared", "router.aux_share=1.0"]


def _pair(*extra):
    cfg = load_config(None, [*TINY, *V0_LOSSES, *extra])
    torch.manual_seed(0)
    new = build_model(cfg)
    old = v0.CramModel(cfg.model, cfg.router, new.vocab_size, target_range=new.target_range,
                       budget=new.budget, n_q=new.n_q)  # fmt: skip
    old.load_state_dict(new.state_dict())
    scfg = cfg.srcd_config()
    tb = to_tensors(scfg, generate(scfg, train_world(scfg, 0), split_seeds("train", 8)))
    return new, old, tb


@pytest.mark.parametrize(
    "router, oracle",
    [("cram", False), ("cram", True), ("dense", False), ("random", True), ("learned-static", False),
     ("oracle-pos", False), ("skip-all", True), ("none", True)],  # fmt: skip
)
def test_loss_and_gradients_equal_the_dense_formulation(router, oracle):
    new, old, tb = _pair(f"router.name={router}", "router.init_bias=0.0", "router.budget=0.3")
    explore = torch.rand(tb.tokens.shape, generator=torch.Generator().manual_seed(3)) < 0.05
    outs = []
    for model in (new, old):
        model.zero_grad()
        out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, explore=explore,
                    generator=torch.Generator().manual_seed(7), oracle=oracle)  # fmt: skip
        out.loss.backward()
        outs.append(out)
    a, b = outs
    for ta, tb_ in zip(a.traces, b.traces):
        assert torch.equal(ta.route, tb_.route)
        assert 0 < int(ta.route.sum()) < ta.route.numel() or router in ("dense", "skip-all", "none")
        for name in ("z", "loss_m", "loss_a", "distill", "pred_m", "pred_a"):
            x, y = getattr(ta, name), getattr(tb_, name)
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-6, atol=1e-6)
    assert a.parts.keys() == b.parts.keys()
    for key in a.parts:
        assert a.parts[key] == pytest.approx(b.parts[key], rel=1e-5, abs=1e-6)
    grads_old = dict(old.named_parameters())
    for name, p in new.named_parameters():
        q = grads_old[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_parameter_order_and_names_are_unchanged():
    # optimizer state in checkpoints follows the parameter order; old checkpoints load by name
    new, old, _ = _pair()
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in old.named_parameters()]
    assert list(new.state_dict()) == list(old.state_dict())

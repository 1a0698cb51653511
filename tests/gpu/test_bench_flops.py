"""The FLOP model of ``cram bench model`` (gpu/bench/flops.py): the analytic attention counts
against FlopCounterMode on explicit matmul attention, and the totals and CRAM's parts of every
benchmark model against an independent count (module hooks plus closed-form kernels) within 5 %."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from cramkit.gpu.bench.common import routed_mask
from cramkit.gpu.bench.flops import (
    attention_flops,
    causal_pairs,
    count_flops,
    routed_pairs,
    scan_flops,
)
from cramkit.gpu.bench.model import ModelBenchConfig, build_models, make_cases
from cramkit.gpu.model.gathered import gather_slots, key_spans, routed_capacity

B, T, H, D = 2, 13, 3, 5


def _counter():
    """FlopCounterMode, imported at test time: importing torch.utils.flop_counter imports triton,
    and triton imported at collection time (before tests/ops/conftest.py sets TRITON_INTERPRET)
    breaks the interpreted kernel tests."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def _explicit_attention(q, k, v, route):
    """Causal attention of the routed queries written as one small matmul pair per query: the
    counter sees exactly the (query, key) pairs that are computed."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            if route[b, t]:
                for h in range(q.shape[2]):
                    s = (q[b, t, h][None] @ k[b, : t + 1, h].T) * q.shape[-1] ** -0.5
                    out[b, t, h] = (torch.softmax(s, -1) @ v[b, : t + 1, h])[0]
    return out


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("rho", [1.0, 0.4, 1 / 13])
def test_routed_attention_flops_match_a_count_of_explicit_attention(rho):
    import cramkit.gpu.ops.routed_attention as op

    route = routed_mask(B, T, rho, torch.Generator().manual_seed(1))
    q, k, v = _qkv()
    with _counter() as fc:
        _explicit_attention(q, k, v, route).sum().backward()
    explicit = fc.get_total_flops()
    pairs = routed_pairs(route) * H
    assert attention_flops(pairs, D) + attention_flops(pairs, D, backward=True) == explicit

    # the same count through the stub the FLOP model patches in, on the real op
    holder = nn.Linear(1, 1)
    q, k, v = _qkv()
    got = count_flops(holder, lambda: op.routed_attention(q, k, v, route).sum().backward())
    assert got.total == explicit and got.kernels == {"routed_attention": explicit}


def test_causal_sdpa_flops_match_a_count_of_explicit_attention():
    q, k, v = _qkv()
    full = torch.ones(B, T, dtype=torch.bool)
    with _counter() as fc:
        _explicit_attention(q, k, v, full).sum().backward()
    assert causal_pairs(T) * B * H * 12 * D == fc.get_total_flops()
    qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in _qkv())
    holder = nn.Linear(1, 1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    got = count_flops(holder, lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True).sum().backward())
    assert got.total == fc.get_total_flops()
    assert torch.nn.functional.scaled_dot_product_attention is sdpa  # restored
    # one decoding query against a cache of T keys, no gradient: T pairs per head
    with torch.no_grad():
        one = count_flops(holder, lambda: torch.nn.functional.scaled_dot_product_attention(qt[:, :, :1], kt, vt))
    assert one.total == attention_flops(B * H * T, D)


# ------------------------------------------------------------------------------------------------
# an independent count: hooks on every Linear / Conv1d call (2 FLOPs per multiply-add forward,
# the same again for each of dX and dW that the backward needs), plus closed-form kernels


class HookCount:
    def __init__(self, model: nn.Module, grad: bool):
        self.total = 0.0
        self.by_module: dict[str, float] = {}
        self.handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv1d)):
                self.handles.append(mod.register_forward_hook(lambda m, a, o, name=name: self._hook(name, m, a, o, grad)))

    def _hook(self, name, mod, args, out, grad):
        x = args[0]
        if isinstance(mod, nn.Linear):
            fwd = 2.0 * x.numel() / mod.in_features * mod.in_features * mod.out_features
        else:
            fwd = 2.0 * out.shape[0] * out.shape[2] * mod.out_channels * (mod.in_channels // mod.groups) * mod.kernel_size[0]
        n = fwd
        if grad and torch.is_grad_enabled():
            n += fwd * (int(mod.weight.requires_grad) + int(x.requires_grad))
        self.total += n
        self.by_module[name] = self.by_module.get(name, 0.0) + n

    def close(self):
        for h in self.handles:
            h.remove()


def _kernels(name, model, mode, t_len, route, steps):
    """Closed-form kernel FLOPs of one case (train/prefill over t_len positions, or decode steps)."""
    cfg = getattr(model, "cfg", None)
    bwd = mode == "train"
    total = 0.0
    if name == "transformer":
        d, heads = model.embed.weight.shape[1], model.blocks[0].h
        for _ in model.blocks:
            if mode == "decode":
                pairs = sum(t_len - 1 + i + 1 for i in range(steps)) * heads * B
            else:
                pairs = causal_pairs(t_len) * heads * B
            total += attention_flops(pairs, d // heads) * (3 if bwd else 1)
        return total
    d = cfg.d_model
    hd = d // cfg.n_heads
    n_steps = steps if mode == "decode" else t_len
    for letter in cfg.pattern:
        if letter == "S":
            total += scan_flops(B, n_steps, cfg.ssm_heads, cfg.d_state, cfg.ssm_head_dim) * (3 if bwd else 1)
            if mode == "decode":  # the eager step convolves with F.conv1d, which no module hook sees
                # (the routed prefill convolves with shifted products: elementwise, never counted)
                conv_ch = cfg.ssm_heads * cfg.ssm_head_dim + 2 * cfg.ssm_heads * cfg.d_state
                total += 2.0 * B * conv_ch * cfg.conv_width * n_steps
        elif mode == "decode":
            if letter == "G":
                mask = torch.ones(B, steps, dtype=torch.bool)
            elif name == "none":
                continue
            else:
                mask = route[:, t_len - 1 : t_len - 1 + steps]
            pos = torch.arange(t_len, t_len + steps)  # step i sees t_len + i keys
            total += attention_flops(int((mask * pos).sum()) * cfg.n_heads, hd)
        elif letter == "G" or (name == "cram-rho1" and mode == "train"):
            total += attention_flops(causal_pairs(t_len) * cfg.n_heads * B, hd) * (3 if bwd else 1)
        elif name == "cram" and mode == "train":
            total += attention_flops(routed_pairs(route[:, :t_len]) * cfg.n_heads, hd) * 3
        elif name in ("cram", "cram-rho1"):  # the routed prefill: each group of buffer rows against its key span
            _, idx = gather_slots(route[:, :t_len], routed_capacity(route[:, :t_len]))
            total += attention_flops(B * cfg.n_heads * sum((b - a) * n for a, b, n in key_spans(idx)), hd)
    return total


CFG = ModelBenchConfig(t_values=(24,), rhos=(0.25,), repeats=1, decode_steps=3, sizes=((16, 40),), batch=B, threads=1,
                       device="cpu", memory=False)  # fmt: skip


@pytest.fixture(scope="module")
def models():
    return build_models(CFG, "cpu")


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_flop_model_totals_match_an_independent_count(models, mode):
    gen = torch.Generator().manual_seed(3)
    for m in models.values():
        m.train(mode == "train")
    cases, _ = make_cases(CFG, models, mode, 24, "cpu", gen)
    assert {c.model for c in cases} == set(models)
    for case in cases:
        setup, timed = case.eager or (case.setup, case.timed)  # decode: the eager path (a compiled step is opaque)
        state = setup() if setup is not None else None
        counted = count_flops(case.module, lambda timed=timed, state=state: timed(state))
        state = setup() if setup is not None else None
        hooks = HookCount(case.module, grad=mode == "train")
        try:
            timed(state)
        finally:
            hooks.close()
        route = _route_of(case)
        expected = hooks.total + _kernels(case.model, case.module, mode, 24, route, CFG.decode_steps)
        assert counted.total == pytest.approx(expected, rel=0.05), (case.label, mode)
        if case.model in ("cram", "cram-rho1") and counted.parts is not None:
            parts = counted.parts
            assert sum(parts.values()) == pytest.approx(counted.total)
            memory = sum(v for k, v in hooks.by_module.items() if ".mixer.memory." in k)
            assert parts["memory"] == pytest.approx(memory, rel=0.05, abs=1.0), case.label
            proj = sum(v for k, v in hooks.by_module.items()
                       if k.rsplit(".", 1)[-1] in ("q", "k", "k_prev", "v", "o") and ".mixer." in k)  # fmt: skip
            kern = _kernels(case.model, case.module, mode, 24, route, CFG.decode_steps) - _kernels(
                "none", case.module, mode, 24, route, CFG.decode_steps)
            assert parts["attention"] == pytest.approx(proj + kern, rel=0.05, abs=1.0), case.label


def _route_of(case):
    """The forced route a case runs with (every position for the models without one)."""
    return case.route if case.route is not None else torch.ones(B, 64, dtype=torch.bool)


def test_readouts_are_counted_where_the_layer_calls_them(models):
    """CRAM's readouts part is the head over the layer's own readout rows, as a training step runs
    them (docs/training.md, "Losses"): with the losses isolated (the default on text) the head's
    weight is a stop-gradient copy, so each of the 2 readouts costs a forward and a dX, no dW, at
    the ceil(router.aux_share x positions) sampled rows (here every row is also attended, so the
    episodic readout runs at all of them)."""
    m = models["cram-rho1"]
    m.train()
    assert m.rcfg.aux_grad == "isolated"  # the bench trains CRAM as a language run does
    cases, _ = make_cases(CFG, {"cram-rho1": m}, "train", 24, "cpu", torch.Generator().manual_seed(0))
    got = count_flops(m, lambda: cases[0].timed(None)).parts
    k = math.ceil(m.rcfg.aux_share * B * 24)
    assert k < B * 23  # the sample is a strict share of the targets: the test sees the sampling
    assert got["readouts"] == pytest.approx(2 * 2 * 2 * k * 16 * 40, rel=1e-9)

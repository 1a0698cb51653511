"""The CRAM layer's own losses (issue 24): what they train (``router.aux_grad``), where they are
computed (the episodic readout only where a is known; readout losses and router labels on a sampled
share of target positions, ``router.aux_share``), what they cost in FLOPs, and the trainer's jump
guard on the validation loss."""

from __future__ import annotations

import math

import pytest
import torch

from cramkit.gpu.model import CramModel
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.run.build import build_model
from cramkit.gpu.run.config import load_config
from cramkit.gpu.run.schedule import step_generator
from cramkit.gpu.run.train import is_val_jump, summarize_run
from cramkit.gpu.tasks.srcd import to_tensors, train_world
from cramkit.sim.srcd import generate, split_seeds

# the SRCD presets keep aux_grad = "shared"; these tests use the default, "isolated"
TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "router.init_bias=0.0",
        "router.aux_grad=isolated"]  # fmt: skip
AUX_OFF = {"epi": 0.0, "sem": 0.0, "distill": 0.0, "router": 0.0}


def _setup(*extra: str):
    cfg = load_config(None, [*TINY, *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    scfg = cfg.srcd_config()
    tb = to_tensors(scfg, generate(scfg, train_world(scfg, 0), split_seeds("train", 8)))
    return model, tb


def _grads(model, tb, weights=None, step=3):
    model.zero_grad(set_to_none=True)
    model.train()
    out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=step_generator(0, step, 0), weights=weights)
    out.loss.backward()
    return out, {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


def _own_module(name: str, mode: str) -> bool:
    """Parameters the layer's own losses may train: memory, router, the readout norms; under
    ``aux_grad = "own"`` also attention's output projection."""
    parts = ("memory.", "router.", "norm_m.", "norm_a.") + (("o.",) if mode == "own" else ())
    return any(f".mixer.{part}" in name for part in parts)


@pytest.mark.parametrize("mode, share", [("isolated", 1.0), ("isolated", 0.05), ("own", 1.0), ("own", 0.05)])
def test_own_losses_put_no_gradient_into_the_backbone_or_the_head(mode, share):
    model, tb = _setup(f"router.aux_grad={mode}", f"router.aux_share={share}")
    out, with_aux = _grads(model, tb)
    route = out.traces[0].route
    assert 0 < int(route.sum()) < route.numel()  # a routed layer: both paths in use
    _, task_only = _grads(model, tb, AUX_OFF)
    for name, g in with_aux.items():
        if _own_module(name, mode):
            continue
        ref = task_only[name]
        assert (g is None) == (ref is None), name
        if g is not None:
            torch.testing.assert_close(g, ref, rtol=0, atol=0, msg=name)
    assert float(with_aux["blocks.1.mixer.memory.fc.weight"].abs().sum()) > 0
    assert float(with_aux["blocks.1.mixer.router.2.weight"].abs().sum()) > 0
    assert task_only["blocks.1.mixer.router.2.weight"] is None  # the router learns from its BCE alone


@pytest.mark.parametrize("mode, leaks", [("shared", ("embed", "blocks.0.", "mixer.q.")),
                                         ("memory", ("mixer.q.", "blocks.0."))])  # fmt: skip
def test_the_older_formulations_stay_selectable_and_do_reach_the_backbone(mode, leaks):
    # the check above discriminates: under "shared" the losses reach the (tied) head and the backbone,
    # under "memory" the episodic loss still reaches attention's q/k/v and, through h, the backbone
    model, tb = _setup(f"router.aux_grad={mode}", "router.aux_share=1.0")
    _, with_aux = _grads(model, tb)
    _, task_only = _grads(model, tb, AUX_OFF)
    for prefix in leaks:
        names = [n for n in with_aux if n.startswith(prefix) or prefix in n]
        assert names, prefix
        assert any(not torch.equal(with_aux[n], task_only[n]) for n in names), (mode, prefix)


class _Counter:
    """Wraps the model's aux readout and counts the rows of each call."""

    def __init__(self, model: CramModel):
        self.rows: list[int] = []
        self.inner = model.aux_readout

    def __call__(self, x, norm):
        self.rows.append(int(x.shape[0]))
        return self.inner(x, norm)


def _count_readouts(model, tb, step=3):
    counter = _Counter(model)
    model.aux_readout = counter
    try:
        model.train()
        out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=step_generator(0, step, 0))
    finally:
        del model.aux_readout
    return counter.rows, out


def test_episodic_readout_runs_only_on_attended_target_rows():
    model, tb = _setup("router.aux_share=1.0")
    rows, out = _count_readouts(model, tb)
    tmask = tb.targets >= 0
    n_targets, attended = int(tmask.sum()), int(out.traces[0].route[tmask].sum())
    assert 0 < attended < n_targets
    assert rows == [n_targets, attended]  # semantic readout at every target, episodic at the attended ones
    tr = out.traces[0]
    assert torch.equal(~torch.isnan(tr.loss_a), out.traces[0].route[tmask])
    assert torch.equal(tr.pred_a >= 0, out.traces[0].route[tmask])


def test_sampled_share_sets_the_readout_rows_and_leaves_the_other_draws_alone():
    model, tb = _setup("router.aux_share=0.05", "router.name=random", "router.budget=0.5")
    rows, out = _count_readouts(model, tb)
    tmask = tb.targets >= 0
    n = int(tmask.sum())
    k = math.ceil(0.05 * tb.tokens.numel())  # a share of the batch's positions, fewer than the targets
    assert k < n
    tr = out.traces[0]
    sel = ~torch.isnan(tr.loss_m)
    assert int(sel.sum()) == k and rows[0] == k
    assert rows[1] == int((sel & tr.route[tmask]).sum())  # episodic: the sampled rows that attended
    assert not bool(tr.z[~sel].any()) and bool((tr.pred_m[~sel] == -1).all())
    # the random router's draws (the step generator's) are those of a run without sampling
    full, _ = _setup("router.aux_share=1.0", "router.name=random", "router.budget=0.5")
    _, out_full = _count_readouts(full, tb)
    assert torch.equal(out_full.traces[0].route, tr.route)
    # evaluation mode never samples
    model.eval()
    ev = model(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=step_generator(0, 3, 0))
    assert not bool(torch.isnan(ev.traces[0].loss_m).any())


def test_the_sample_is_deterministic_per_step_and_uniform():
    cfg = load_config(None, [*TINY, "router.aux_share=0.3"])
    model = build_model(cfg).train()
    n, k = 40, math.ceil(0.3 * 40)
    a = model.aux_sample(n, n, step_generator(0, 5, 0))
    b = model.aux_sample(n, n, step_generator(0, 5, 0))
    c = model.aux_sample(n, n, step_generator(0, 6, 0))
    assert model.aux_sample(n, 4 * n, step_generator(0, 5, 0)) is None  # the share covers every target
    assert torch.equal(a, b) and not torch.equal(a, c) and int(a.sum()) == k
    # each position is drawn with probability k/n: the mean over the sample is unbiased
    draws = torch.stack([model.aux_sample(n, n, step_generator(1, s, 0)) for s in range(4000)]).double()
    freq = draws.mean(0)
    assert float((freq - k / n).abs().max()) < 4.5 * math.sqrt((k / n) * (1 - k / n) / 4000)
    values = torch.linspace(0.0, 3.0, n, dtype=torch.float64) ** 2
    est = (draws * values).sum(1) / k
    assert float(est.mean()) == pytest.approx(float(values.mean()), rel=0.01)
    model.eval()
    assert model.aux_sample(n, n, step_generator(0, 5, 0)) is None


def test_task_loss_alone_computes_none_of_the_layer_losses():
    model, tb = _setup()
    rows, _ = _count_readouts(model, tb)
    assert rows
    counter = _Counter(model)
    model.aux_readout = counter
    out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=step_generator(0, 3, 0), weights=AUX_OFF)
    del model.aux_readout
    assert counter.rows == [] and set(out.parts) == {"task", "total"}


def _lm_flops(d: int, vocab: int, t_len: int, weights, *, share: float = 0.25, mode: str = "own") -> float:
    """FLOPs of one training step (forward and backward) of the lm preset's SA model at width d
    with CRAM attending at 1/64 of the positions (the exploration mask; the learned router's own
    decision is closed), every position a target."""
    mcfg = ModelConfig(pattern="SA", d_model=d, n_heads=4, ssm_heads=4, ssm_head_dim=d // 4, d_state=16,
                       memory_hidden=2 * d, router_hidden=32)  # fmt: skip
    rcfg = RouterConfig(name="cram", aux_grad=mode, aux_share=share, init_bias=-4.0)
    torch.manual_seed(0)
    model = CramModel(mcfg, rcfg, vocab).train()
    for layer in model.cram_layers:
        torch.nn.init.zeros_(layer.router[-1].weight)
    tokens = torch.randint(0, vocab, (2, t_len), generator=torch.Generator().manual_seed(0))
    targets = torch.roll(tokens, -1, 1)
    explore = torch.zeros_like(tokens, dtype=torch.bool)
    explore[:, 63::64] = True
    from torch.utils.flop_counter import FlopCounterMode  # imports triton: only when this test runs

    with FlopCounterMode(display=False) as fc:
        out = model(tokens, targets, explore=explore, generator=step_generator(0, 1, 0), weights=weights)
        out.loss.backward()
    assert torch.equal(out.traces[0].route, explore)
    return float(fc.get_total_flops())


def test_cram_training_at_rho_1_64_costs_at_most_1_15x_its_task_only_path():
    base = _lm_flops(64, 256, 256, AUX_OFF)
    cram = _lm_flops(64, 256, 256, None)
    assert cram / base <= 1.15
    old = _lm_flops(64, 256, 256, None, share=1.0, mode="shared")
    assert old / base > cram / base  # the formulation before issue 24 costs more


def test_jump_guard_flags_a_validation_loss_above_its_best():
    series = [4.0, 3.0, 2.5, 2.4, 2.6, 2.3, 3.5, 2.2]
    flags = [is_val_jump(series[:i], v, 1.05) for i, v in enumerate(series)]
    assert flags == [False, False, False, False, True, False, True, False]
    metrics = [{"step": 50 * i, "val_loss": v, "val_jump": f} for i, (v, f) in enumerate(zip(series, flags))]
    assert summarize_run(metrics)["val_jumps"] == [200, 300]
    assert summarize_run([{"step": 1, "acc": 1.0}]).get("val_jumps") is None


def test_auto_isolates_the_losses_on_language_and_keeps_srcd_as_it_was():
    assert load_config(None, [], preset="lm").router.aux_grad == "isolated"
    assert load_config(None, ['task="tokens"', 'tokens.data="x.npy"']).router.aux_grad == "isolated"
    assert RouterConfig().aux_grad == "auto"
    for preset in ("quick", "paper"):
        cfg = load_config(None, [], preset=preset)
        assert cfg.router.aux_grad == "shared"
        # the share counts the batch's positions: every SRCD target, as before issue 24
        n = cfg.srcd.m_r + cfg.srcd.m_e
        model = build_model(cfg).train()
        assert model.aux_sample(n * 64, cfg.srcd.n * 64, step_generator(0, 1, 0)) is None


def test_dense_training_with_isolated_losses_follows_the_task_loss_alone(tmp_path):
    from cramkit.gpu.run.train import train

    data = tmp_path / "t.txt"
    data.write_text("in the beginning was the word, and the word was with god. " * 60)
    common = ['task="text"', f'text.data="{data}"', "text.seq_len=32", "text.eval_batches=1", "model.d_model=32",
              "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16", "model.memory_hidden=32",
              "router.name=dense", "train.steps=6", "train.batch_size=4", "train.eval_every=2", "train.warmup_steps=2",
              "train.lr=0.01", "train.grad_clip=0.05", "router.aux_share=0.5"]  # fmt: skip
    off = ["train.epi_weight=0.0", "train.sem_weight=0.0", "train.distill_weight=0.0"]
    runs = {name: train(load_config(None, [*common, *extra])).metrics
            for name, extra in (("task", off), ("apart", []), ("joint", ["train.clip_apart=false"]))}  # fmt: skip
    val = {name: [m["val_loss"] for m in ms] for name, ms in runs.items()}
    assert val["apart"] == pytest.approx(val["task"], rel=1e-5, abs=1e-6)
    # clipped together, the memory's and router's gradient shrinks the task's: another trajectory
    assert val["joint"] != pytest.approx(val["task"], rel=1e-5, abs=1e-6)


def test_a_run_recorded_before_aux_grad_resumes_as_it_was_trained(tmp_path):
    """A config.toml or checkpoint written before router.aux_grad existed (a text run: today's
    default would isolate the losses) is read back with the formulation it was trained with."""
    from cramkit.gpu.run import config as C

    fresh = C.load_config(preset="lm").to_dict()
    assert fresh["router"]["aux_grad"] == "isolated"  # today's default for language
    old = {sec: dict(v) if isinstance(v, dict) else v for sec, v in fresh.items()}
    for sec, key in C.RECORD_DEFAULTS:
        del old[sec][key]
    rec = C.from_record(old)
    assert (rec.router.aux_grad, rec.router.aux_share, rec.train.clip_apart) == ("shared", 1.0, False)
    assert C.from_dict(old).router.aux_grad == "isolated"  # a user's TOML without the key: today's default
    path = tmp_path / "config.toml"
    import tomli_w

    path.write_text(tomli_w.dumps(old))
    assert C.load_config(path, record=True).router.aux_grad == "shared"
    assert C.from_record(fresh).to_dict() == fresh  # a record that has the keys keeps them

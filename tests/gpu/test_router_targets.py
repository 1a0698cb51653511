"""The router targets (docs/training.md, "Router target"): ``error`` 1[l(m) > tau], ``utility``
1[l(m) - l(a) > delta] where attention ran, and ``gain`` (issue 18 part 5), the same counterfactual
gain at every sampled target row, attention probed where the route skipped it -- for the label only,
never in the output, the task loss or any gradient but the router's."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cramkit.errors import CramError
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.cram import CramAttention
from cramkit.gpu.model.mixer import ForwardContext
from cramkit.gpu.run.build import build_model
from cramkit.gpu.run.config import load_config
from cramkit.gpu.run.schedule import step_generator
from cramkit.gpu.run.train import train
from cramkit.gpu.tasks.srcd import to_tensors, train_world
from cramkit.sim.srcd import generate, split_seeds

TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "router.init_bias=0.0"]  # fmt: skip


# --- a constructed case: attention helps at some positions, neither path predicts the others ---------


def _copy_layer(target: str) -> CramAttention:
    """A one-head layer whose attention averages the one-hot states so far (q = k = 0, v = o =
    identity) and whose memory outputs 0 (uniform logits: it predicts nothing)."""
    d = 8
    layer = CramAttention(ModelConfig(d_model=d, n_heads=1, memory_hidden=4, router_hidden=0),
                          RouterConfig(target=target, aux_grad="isolated"))  # fmt: skip
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        layer.v.weight.copy_(torch.eye(d))
        layer.o.weight.copy_(torch.eye(d))
    return layer.train()


def _constructed(target: str, route_all: bool = False):
    d, t_len = 8, 6
    h = torch.nn.functional.one_hot(torch.zeros(1, t_len, dtype=torch.long), d).float()  # token 0 everywhere
    # even positions: the target (0) is what the context holds -> attention predicts it;
    # odd positions: a token never seen (5) -> neither attention nor the memory predicts it
    targets = torch.tensor([[0, 5, 0, 5, 0, 5]])
    readout = lambda x, norm=None: 10.0 * x  # noqa: E731 -- the readout: logits = 10 * state
    tmask = targets >= 0
    ctx = ForwardContext(readout, torch.tensor([t_len]), aux_readout=readout, tmask=tmask, tgt=targets[tmask],
                         route=torch.full((1, t_len), route_all))  # the route skips (or takes) every row  # fmt: skip
    return _copy_layer(target).mix(h, ctx)


def test_gain_labels_where_attention_helps_and_not_where_neither_path_predicts():
    helps = torch.tensor([True, False, True, False, True, False])
    err = _constructed("error").trace
    gain = _constructed("gain").trace
    util = _constructed("utility").trace
    assert math.log(8) == pytest.approx(float(err.loss_m[0]), rel=1e-6)  # the memory predicts nothing anywhere
    assert err.z.tolist() == [True] * 6  # error routes both kinds of position
    assert gain.z.tolist() == helps.tolist()  # gain: only where attention reduces the loss
    assert gain.probe.all()  # every row was probed (the route skipped them all)
    # utility has no label where the route skipped attention; with attention everywhere it agrees with gain
    assert not util.z.any() and torch.isnan(util.loss_a).all()
    assert _constructed("utility", route_all=True).trace.z.tolist() == helps.tolist()
    assert _constructed("gain", route_all=True).trace.probe.sum() == 0  # nothing to probe


def test_the_targets_are_checked_choices():
    assert load_config(None, ["router.target=gain"]).router.target == "gain"
    with pytest.raises(CramError, match="router.target must be one of"):
        load_config(None, ["router.target=gains"])


# --- the probe on a real model -------------------------------------------------------------------


def _pair(mode: str, share: float):
    """The same tiny SRCD model and batch under targets utility and gain."""
    extra = [f"router.aux_grad={mode}", f"router.aux_share={share}"]
    models = []
    for target in ("utility", "gain"):
        cfg = load_config(None, [*TINY, *extra, f"router.target={target}"])
        torch.manual_seed(0)
        models.append(build_model(cfg))
    scfg = cfg.srcd_config()
    tb = to_tensors(scfg, generate(scfg, train_world(scfg, 0), split_seeds("train", 8)))
    return models, tb


def _step(model, tb, step=3, oracle=False):
    model.zero_grad(set_to_none=True)
    model.train()
    explore = torch.rand(tb.tokens.shape, generator=torch.Generator().manual_seed(7)) < 0.05
    out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, explore=explore,
                generator=step_generator(0, step, 0), oracle=oracle)  # fmt: skip
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode, share", [("shared", 1.0), ("isolated", 1.0), ("isolated", 0.05), ("own", 0.05)])
def test_the_probe_changes_no_output_no_task_loss_and_no_gradient_but_the_routers(mode, share):
    (util, gain), tb = _pair(mode, share)
    out_u, g_u = _step(util, tb)
    out_g, g_g = _step(gain, tb)
    tr = out_g.traces[0]
    assert tr.probe is not None and int(tr.probe.sum()) > 0  # the probe ran on rows the route skipped
    assert not (tr.probe & tr.route).any()
    torch.testing.assert_close(out_g.logits, out_u.logits, rtol=0, atol=1e-6)
    assert out_g.parts["task"] == pytest.approx(out_u.parts["task"], abs=1e-6)
    for name in ("epi", "sem", "distill"):
        assert out_g.parts[name] == pytest.approx(out_u.parts[name], abs=1e-6), name
    assert g_g.keys() == g_u.keys()
    for name, g in g_u.items():
        if ".mixer.router." in name:
            continue
        torch.testing.assert_close(g_g[name], g, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(g_g[n], g_u[n]) for n in g_u if ".mixer.router." in n)  # other labels


def test_gain_labels_exist_at_non_routed_sampled_rows_and_measure_the_true_attention():
    (util, gain), tb = _pair("isolated", 0.25)
    tu, tg = _step(util, tb)[0].traces[0], _step(gain, tb)[0].traces[0]
    tmask = tb.targets >= 0
    skipped = ~tg.route[tmask]
    sampled = torch.isfinite(tg.loss_m)
    assert int((sampled & skipped).sum()) > 0
    assert torch.isfinite(tg.loss_a[sampled]).all()  # gain: a measured at every sampled row
    assert torch.isnan(tu.loss_a[sampled & skipped]).all()  # utility: nothing where the route skipped
    assert not tu.z[skipped].any()
    # the probed loss is the episodic path's true loss: the oracle pass (a everywhere) gives the same
    to = _step(util, tb, oracle=True)[0].traces[0]
    torch.testing.assert_close(tg.loss_a[sampled], to.loss_a[sampled], rtol=1e-5, atol=1e-5)
    # the label is the whole model's counterfactual (the CRAM block is the last one, so what follows
    # its mixer is per position): the task loss with the layer's output m there (attention off
    # everywhere) minus with a (on everywhere), not the layer's readouts
    assert gain.blocks[-1].kind == "A"
    tgt = tb.targets[tmask] - (gain.target_range[0] if gain.target_range is not None else 0)
    with torch.no_grad():
        ce = {on: F.cross_entropy(gain(tb.tokens, tb.targets, query_mask=tb.query_mask,
                                       route=torch.full_like(tmask, on)).logits, tgt, reduction="none")
              for on in (False, True)}  # fmt: skip
    g = (ce[False] - ce[True])[sampled]
    clear = (g - gain.rcfg.delta).abs() > 1e-4  # away from the threshold (float noise)
    assert int(clear.sum()) > 0.9 * int(sampled.sum())
    assert torch.equal(tg.z[sampled][clear], (g > gain.rcfg.delta)[clear])
    readout = (to.loss_m - to.loss_a > util.rcfg.delta)[sampled]
    assert not torch.equal(tg.z[sampled], readout)  # here the two definitions disagree: the test can tell


def test_eval_mode_runs_no_probe():
    (_, gain), tb = _pair("isolated", 1.0)
    gain.eval()
    with torch.no_grad():
        out = gain(tb.tokens, tb.targets, query_mask=tb.query_mask, generator=step_generator(0, 0, 0))
    assert out.traces[0].probe is None


def test_resume_with_the_gain_target_is_bit_identical_and_logs_the_probe(tmp_path):
    cfg = load_config(None, [*TINY, "train.steps=6", "train.eval_every=2", "train.ckpt_every=3", "train.batch_size=8",
                             "train.eval_sequences=32", "router.target=gain", "router.explore=0.2"])  # fmt: skip
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", max_steps=4)
    assert part.stopped_early
    resumed = train(None, None, resume=tmp_path / "part")
    strip = lambda ms: [{k: v for k, v in m.items() if k != "wall_s"} for m in ms]  # noqa: E731
    assert strip(resumed.metrics) == strip(full.metrics)
    logged = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < m["train_probe_frac"] < 1 for m in logged if m["step"] > 0)
    from cramkit import runs

    assert "train_probe_frac" in runs.METRICS_FIELDS  # the schema declares it


# --- the evaluation's counterfactual gain ----------------------------------------------------------


def _text_model():
    from cramkit.gpu.run.build import model_for_task
    from cramkit.gpu.tasks.text import TextTask

    corpus = __import__("pathlib").Path(__file__).resolve().parents[2] / "gpu" / "redundancy" / "default_corpus.txt"
    task = TextTask(corpus, seq_len=24, val_frac=0.05, eval_batches=1, eval_batch_size=3)
    torch.manual_seed(0)
    small = ModelConfig(pattern="SA", d_model=32, n_heads=2, ssm_heads=2, ssm_head_dim=16, d_state=8,
                        memory_hidden=32, router_hidden=16)  # fmt: skip
    return model_for_task(small, RouterConfig(init_bias=0.0), task).eval(), task


@torch.no_grad()
def test_counterfactual_gain_is_each_positions_own_gain_in_an_sa_model():
    from cramkit.gpu.tasks.text import _position_loss, counterfactual_gain

    model, task = _text_model()
    x, y = next(iter(task.eval_windows()))
    g = counterfactual_gain(model, x, y)
    assert g.shape == x.shape and float(g.abs().max()) > 1e-3  # attention changes the loss somewhere
    on = torch.ones_like(x, dtype=torch.bool)
    for b, t in ((0, 0), (1, 7), (2, 23)):  # switch attention off at (b, t) alone
        off_t = on.clone()
        off_t[b, t] = False
        loss = _position_loss(model(x, y, route=off_t), y)
        ref = _position_loss(model(x, y, route=on), y)
        assert float(loss[b, t] - ref[b, t]) == pytest.approx(float(g[b, t]), abs=1e-5)
        others = torch.ones_like(loss, dtype=torch.bool)
        others[b, t] = False
        torch.testing.assert_close(loss[others], ref[others], rtol=0, atol=1e-5)  # nothing else moves


def test_gain_metrics_of_a_hand_made_case():
    from cramkit.gpu.tasks.recall import gain_metrics

    gain = torch.tensor([[1.0, 0.0, 2.0, -1.0]])
    route = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    hits = torch.tensor([[True, False, True, False]])
    m = gain_metrics(gain, route, hits, 0.5)
    assert m["need_share"] == 0.5 and m["gain_precision"] == 0.5 and m["gain_recall"] == 0.5
    assert m["gain_attended"] == 0.5 and m["gain_skipped"] == 0.5 and m["gain_mean"] == 0.5
    assert m["need_share_recall"] == 1.0 and m["need_share_other"] == 0.0
    assert gain_metrics(gain, torch.zeros_like(route), hits, 0.5)["gain_precision"] is None

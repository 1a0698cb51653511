"""cram redundancy on CRAM language models (issue #10): text checkpoints with CRAM retrieval (``A``)
and sliding-window (``W``) blocks. The adapter must reproduce the model's own forward (the
residual stream follows the model's route), measure the episodic path a_t at every position, and
the command must give per-layer rows for A and W layers, and a trajectory over a run folder."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.gpu.redundancy.cram_adapter import ROUTE_SEED, load_cram_text
from cramkit.gpu.redundancy.engine import run
from cramkit.gpu.run import config as C
from cramkit.gpu.run.build import build_model
from cramkit.gpu.run.checkpoint import save_checkpoint


def _lm_cfg(pattern="SAW", router="cram", budget=None, window=5):
    data = C.load_toml(C.PRESET_DIR / "lm.toml")
    data["model"].update({"pattern": pattern, "d_model": 32, "n_heads": 2, "max_len": 0, "window": window,
                          "ssm_heads": 2, "ssm_head_dim": 16, "d_state": 8, "chunk_size": 16,
                          "memory_hidden": 32, "router_hidden": 8})  # fmt: skip
    data["text"].update({"data": "unused.txt", "seq_len": 64})
    data["router"]["name"] = router
    if budget is not None:
        data["router"]["budget"] = budget
    return C.from_dict(data)


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    for layer in model.cram_layers:  # a router that attends some positions and not others
        torch.nn.init.normal_(layer.router[-1].weight, std=2.0)
        torch.nn.init.zeros_(layer.router[-1].bias)
    return model


def _save(path, model, cfg, step):
    save_checkpoint(path, model, None, {"arch": "gpt-bytes", "config": cfg.to_dict(), "step": step})


def _tokens(T=40):
    return torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(1))


def _model_nll(model, tok, generator=None):
    with torch.no_grad():
        logits = model(tok, generator=generator).logits.view(tok.shape[0], tok.shape[1], -1)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tok[:, 1:].reshape(-1), reduction="none"
    )


@pytest.mark.parametrize(("pattern", "router", "budget"),
                         [("SAW", "cram", None), ("SA", "stride", 0.5), ("SW", "cram", None)])  # fmt: skip
def test_adapter_reproduces_the_model_and_its_route(tmp_path, pattern, router, budget):
    cfg = _lm_cfg(pattern, router, budget)
    model = _model(cfg)
    _save(tmp_path / "m.safetensors", model, cfg, 7)
    lm = load_cram_text(tmp_path / "m.safetensors")
    ad = lm.adapter
    assert ad.n_layers == len(pattern) - 1 and [ad.layer_kind(i) for i in range(ad.n_layers)] == list(pattern[1:])
    tok = _tokens()
    ref = _model_nll(model, tok, torch.Generator().manual_seed(ROUTE_SEED))
    P = run(ad, tok, capture=True)
    assert torch.allclose(P.nll[:, :-1].reshape(-1), ref, atol=1e-4)
    if "A" in pattern:
        li = pattern[1:].index("A")
        route = ad.route(li, P.xs[li])
        assert 0 < int(route.sum()) < route.numel()  # the stream really mixes a and M(h)
        mixer = model.blocks[ad.layer_block(li)].mixer
        with torch.no_grad():  # the measured output is a_t at every position (the oracle pass)
            a_all = mixer.attend(P.xs[li], torch.ones_like(route))
        assert torch.allclose(P.os[li], a_all, atol=1e-5)


def test_a_patch_reaches_the_stream_only_where_the_model_attends(tmp_path):
    cfg = _lm_cfg("SA")
    model = _model(cfg)
    _save(tmp_path / "m.safetensors", model, cfg, 1)
    ad = load_cram_text(tmp_path / "m.safetensors").adapter
    tok = _tokens()
    clean = run(ad, tok, capture=True)
    route = ad.route(0, clean.xs[0])
    assert 0 < int(route.sum()) < route.numel()
    # a_t changed at the positions the router skips leaves the model's output untouched ...
    off = run(ad, tok, patch=lambda layer, x, o: torch.where(route[..., None], o, 0.0))
    assert torch.allclose(off.nll, clean.nll, atol=1e-6)
    # ... and changed at the routed positions, it does not
    on = run(ad, tok, patch=lambda layer, x, o: torch.where(route[..., None], 0.0, o))
    assert not torch.allclose(on.nll, clean.nll, atol=1e-4)


def test_window_layer_is_banded(tmp_path):
    cfg = _lm_cfg("SW", window=3)
    model = _model(cfg)
    _save(tmp_path / "m.safetensors", model, cfg, 1)
    ad = load_cram_text(tmp_path / "m.safetensors").adapter
    x = torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(3))
    q, k, v = ad.qkv(0, x)
    z = ad.attend(0, q, k, v)
    v2 = v.clone()
    v2[:, :, 0] += 5.0  # position 0 lies outside the window of positions >= 3
    z2 = ad.attend(0, q, k, v2)
    assert torch.allclose(z[:, 3:], z2[:, 3:]) and not torch.allclose(z[:, :3], z2[:, :3])
    assert ad.n_keys(0, 6).tolist() == [1, 2, 3, 3, 3, 3]  # the keys C7 counts for a window layer


def _corpus(tmp_path):
    rnd = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n\n".join(" ".join(rnd.choice(words) for _ in range(60)) for _ in range(12)))
    return corpus


ARGS = ["--min-pos", "4", "--max-tokens", "3000", "--predictors", "p0,p1", "--no-gate", "--no-per-layer",
        "--bootstrap", "20", "--quiet"]  # fmt: skip


def test_cli_measures_a_and_w_layers(tmp_path):
    cfg = _lm_cfg("SAW")
    path = tmp_path / "saw.safetensors"
    _save(path, _model(cfg), cfg, 3)
    res = CliRunner().invoke(cli, ["redundancy", str(path), "--text", str(_corpus(tmp_path)), *ARGS, "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["model"]["layer_kinds"] == ["A", "W"]
    assert [(row["kind"], row["block"]) for row in r["layers"]] == [("A", 1), ("W", 2)]
    for row in r["layers"]:
        p1 = row["predictors"]["p1"]
        assert all(0.0 <= v <= 1.0 for v in p1["pi"].values())
        assert p1["r2"] is not None and math.isfinite(p1["r2"])
    assert math.isfinite(r["headline"]["dnll"]) and 0.0 <= r["headline"]["fraction"] <= 1.0
    text = CliRunner().invoke(cli, ["redundancy", str(path), "--text", str(_corpus(tmp_path)), *ARGS])
    assert text.exit_code == 0, text.output
    assert any(line.split()[:2] == ["0", "A"] for line in text.output.splitlines())


def test_cli_trajectory_over_a_cram_lm_run_folder(tmp_path):
    cfg = _lm_cfg("SA")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for i, step in enumerate((100, 200)):
        _save(run_dir / "checkpoints" / f"step_{step:07d}.safetensors", _model(cfg, seed=i), cfg, step)
    res = CliRunner().invoke(cli, ["redundancy", str(run_dir), "--text", str(_corpus(tmp_path)), *ARGS, "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert [row["step"] for row in r["trajectory"]] == [100, 200]
    assert all(0.0 <= row["headline"] <= 1.0 for row in r["trajectory"])
    assert all(c["layers"][0]["kind"] == "A" for c in r["checkpoints"])


def test_cram_layer_reference_rows(tmp_path):
    cfg = _lm_cfg("SAW")
    path = tmp_path / "saw.safetensors"
    _save(path, _model(cfg), cfg, 3)
    res = CliRunner().invoke(cli, ["redundancy", str(path), "--text", str(_corpus(tmp_path)), *ARGS, "--json"])
    assert res.exit_code == 0, res.output
    a_row, w_row = json.loads(res.output)["layers"]
    assert "semantic_memory" not in w_row and "route" not in w_row
    sm, rt = a_row["semantic_memory"], a_row["route"]
    assert sm["n"] > 0 and math.isfinite(sm["r2"]) and 0.0 < rt["routed"] < 1.0
    pis = [sm["pi"], rt["pi_routed"], rt["pi_skipped"]]
    assert all(0.0 <= v <= 1.0 for pi in pis for v in pi.values())
    # the split by route recombines into the layer's pi of the patch predictor
    for t, v in a_row["predictors"]["p1"]["pi"].items():
        both = rt["routed"] * rt["pi_routed"][t] + (1 - rt["routed"]) * rt["pi_skipped"][t]
        assert both == pytest.approx(v, abs=1e-9)
    text = CliRunner().invoke(cli, ["redundancy", str(path), "--text", str(_corpus(tmp_path)), *ARGS])
    assert text.exit_code == 0 and "CRAM (A) layers" in text.output, text.output


def test_switched_off_cram_layers_are_not_measured(tmp_path):
    cfg = _lm_cfg("SAW", router="none")
    model = _model(cfg)
    _save(tmp_path / "m.safetensors", model, cfg, 1)
    ad = load_cram_text(tmp_path / "m.safetensors").adapter
    assert [ad.layer_kind(i) for i in range(ad.n_layers)] == ["W"]  # the A block adds nothing
    tok = _tokens()
    assert torch.allclose(run(ad, tok).nll[:, :-1].reshape(-1), _model_nll(model, tok), atol=1e-4)
    cfg = _lm_cfg("SA", router="none")
    _save(tmp_path / "s.safetensors", _model(cfg), cfg, 1)
    res = CliRunner().invoke(cli, ["redundancy", str(tmp_path / "s.safetensors"), *ARGS])
    assert res.exit_code == 2 and "router 'none'" in res.output and "Traceback" not in res.output, res.output

"""cram redundancy on cram text checkpoints: the adapter reproduces the model's forward, and a run
folder is measured checkpoint by checkpoint (the trajectory over training). No transformers."""

from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.redundancy.cram_adapter import CramTextAdapter, load_cram_text
from cramkit.gpu.redundancy.engine import run
from cramkit.gpu.run import config as C
from cramkit.gpu.run.build import build_model
from cramkit.gpu.run.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    _model_tensors,
    save_checkpoint,
    write_checkpoint_file,
)


def _text_cfg(pattern="GSG"):
    data = C.load_toml(C.PRESET_DIR / "text.toml")
    data["model"].update({"pattern": pattern, "d_model": 32, "n_heads": 2, "max_len": 64,
                          "ssm_heads": 2, "ssm_head_dim": 16, "d_state": 8, "chunk_size": 16})  # fmt: skip
    data["text"].update({"data": "unused.txt", "seq_len": 64})
    return C.from_dict(data)


def _save(path, cfg, step, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    save_checkpoint(path, model, None, {"arch": "gpt-bytes", "config": cfg.to_dict(), "step": step})
    return model


def test_adapter_matches_model_forward(tmp_path):
    cfg = _text_cfg("GSG")
    model = _save(tmp_path / "m.safetensors", cfg, 10).eval()
    lm = load_cram_text(tmp_path / "m.safetensors")
    assert isinstance(lm.adapter, CramTextAdapter) and lm.adapter.n_layers == 2 and lm.step == 10
    tok = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tok).logits.view(2, 40, -1)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 256), tok[:, 1:].reshape(-1), reduction="none"
    )
    P = run(lm.adapter, tok, capture=True)
    assert torch.allclose(P.nll[:, :-1].reshape(-1), ref, atol=1e-4)
    assert len(P.zs) == 2 and P.zs[0].shape == (2, 40, 2, 16)


def test_srcd_checkpoint_is_refused(tmp_path):
    cfg = C.load_config(preset="quick")
    _save(tmp_path / "s.safetensors", cfg, 0)
    with pytest.raises(CramError, match="text checkpoints"):
        load_cram_text(tmp_path / "s.safetensors")


def test_run_folder_gives_a_trajectory(tmp_path):
    cfg = _text_cfg("GG")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for i, step in enumerate((100, 200)):
        _save(run_dir / "checkpoints" / f"step_{step:07d}.safetensors", cfg, step, seed=i)
    rnd = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n\n\n".join(" ".join(rnd.choice(words) for _ in range(60)) for _ in range(12))
    )
    plot = tmp_path / "t.png"
    res = CliRunner().invoke(
        cli,
        ["redundancy", str(run_dir), "--text", str(corpus), "--min-pos", "4", "--max-tokens", "3000",
         "--predictors", "p0,p1", "--no-gate", "--no-per-layer", "--bootstrap", "50", "--quiet", "--json",
         "--plot", str(plot)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert [row["step"] for row in r["trajectory"]] == [100, 200]
    assert all(0.0 <= row["headline"] <= 1.0 for row in r["trajectory"])
    assert all(isinstance(row["budget_binding"], bool) for row in r["trajectory"])
    assert r["trend"] is not None and len(r["checkpoints"]) == 2
    assert r["checkpoints"][0]["model"]["source"] == "cram-text"
    assert plot.stat().st_size > 1000
    text = CliRunner().invoke(
        cli,
        ["redundancy", str(run_dir), "--text", str(corpus), "--min-pos", "4", "--max-tokens", "2000",
         "--predictors", "p0,p1", "--no-gate", "--no-per-layer", "--bootstrap", "0", "--quiet"],
    )  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "step_0000100" in text.output and "over training" in text.output


@pytest.mark.parametrize("as_json", [False, True])
def test_cram_checkpoint_with_nan_weights_is_one_line_error(tmp_path, as_json):
    cfg = _text_cfg("GG")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # one NaN in an MLP matrix (not the attention output projection)
        next(p for n, p in model.named_parameters() if ".mlp." in n and p.dim() == 2)[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    # cram refuses to save non-finite weights, so write the signed file directly (as a foreign
    # tool or a bit flip before signing would): the load must still refuse it in one line
    tensors, meta = _model_tensors(model, {"arch": "gpt-bytes", "config": cfg.to_dict(), "step": 5})
    write_checkpoint_file(path, tensors, {"format": FORMAT, "format_version": FORMAT_VERSION, **meta})
    res = CliRunner().invoke(
        cli,
        ["redundancy", str(path), "--min-pos", "4", "--max-tokens", "2000", "--predictors", "p0,p1", "--no-gate",
         "--bootstrap", "0", "--quiet", *(["--json"] if as_json else [])],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "NaN" in res.output and str(path) in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1

"""`cram generate`: a tiny text checkpoint trained in the test continues a prompt; speed and
attention use are reported; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.network import CramModel
from cramkit.gpu.run.generate import GenerateConfig, generate_text


@pytest.fixture
def text_run(tiny_text_run):
    return tiny_text_run


def test_generate_greedy_json_and_text(text_run):
    run = str(text_run / "r")
    r = CliRunner().invoke(cli, ["generate", run, "--prompt", "the quick", "--max-new-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["new_tokens"] == 8 and out["tokens_per_s"] > 0 and out["attention_per_layer"] == []
    again = json.loads(CliRunner().invoke(cli, ["generate", run, "--prompt", "the quick", "--max-new-tokens", "8",
                                                "--json"]).output)  # fmt: skip
    assert again["text"] == out["text"]  # greedy is deterministic
    r = CliRunner().invoke(cli, ["generate", run, "--prompt", "the quick", "--max-new-tokens", "8",
                                 "--temperature", "1.0", "--top-k", "5", "--seed", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.startswith("the quick") and "tokens/s" in r.output  # CliRunner mixes stderr in


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--prompt", ""], "empty"),
        (["--prompt", "x" * 130], "longer than the model's max_len 128"),
        (["--prompt", "abc", "--max-new-tokens", "200"], "--max-new-tokens 125"),
    ],
)
def test_generate_bad_input_is_one_line(text_run, args, fragment):
    r = CliRunner().invoke(cli, ["generate", str(text_run / "r"), *args])
    assert r.exit_code == 2 and fragment in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_generate_refuses_a_non_text_checkpoint(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--set", "train.steps=1", "--set", "train.eval_every=1",
                                 "--set", "train.eval_sequences=8", "--set", "model.d_model=32",
                                 "--set", "train.batch_size=2", "--out", str(tmp_path / "s"), "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["generate", str(tmp_path / "s"), "--prompt", "hi"])
    assert r.exit_code == 2 and "not a text checkpoint" in r.output


def test_generate_with_cram_layers_reports_attention_use():
    cfg = ModelConfig(pattern="SA", d_model=32, n_heads=2, ssm_heads=2, ssm_head_dim=16, d_state=8,
                      memory_hidden=32, router_hidden=16)  # fmt: skip
    torch.manual_seed(0)
    model = CramModel(cfg, RouterConfig(name="stride"), 256, budget=0.25)
    res = generate_text(model, GenerateConfig("m", "hello world", max_new_tokens=40))
    assert res.new_tokens == 40 and len(res.attention) == 1
    assert res.attention[0] == pytest.approx(0.25, abs=0.03)  # every 4th position, one phase
    with pytest.raises(CramError, match="empty"):
        GenerateConfig("m", "")

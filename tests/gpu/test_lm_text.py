"""CRAM language models on the text task (gpu/tasks/text.py): where attention goes (byte classes,
position in the word), the attention keys of text evaluations, fit-gamma on a text run, and the
King James corpus helper (gpu/tasks/corpora.py). Data: small text written here or the bundled
32 KB corpus; never the real corpus."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.run.build import model_for_task
from cramkit.gpu.tasks.corpora import KJV_RANGE, kjv_text
from cramkit.gpu.tasks.text import (
    BYTE_CLASSES,
    WORD_POS,
    TextTask,
    attention_by_class,
    breakdown,
    byte_class,
    word_position,
)

CORPUS = Path(__file__).resolve().parents[2] / "gpu" / "redundancy" / "default_corpus.txt"
SMALL = ModelConfig(pattern="SA", d_model=32, n_heads=2, ssm_heads=2, ssm_head_dim=16, d_state=8,
                    memory_hidden=32, router_hidden=16)  # fmt: skip


def _b(text: str) -> torch.Tensor:
    return torch.tensor([list(text.encode())])


def test_byte_classes():
    got = [BYTE_CLASSES[i] for i in byte_class(_b("Az 09\n,;\t"))[0].tolist()]
    assert got == ["letter", "letter", "space", "digit", "digit", "newline", "punct", "punct", "punct"]


def test_word_position_counts_letters_of_the_current_word():
    got = [WORD_POS[i] for i in word_position(_b("in the\nbeginning, a"))[0].tolist()]
    assert got == ["1", "2", "0", "1", "2", "3", "0", "1", "2", "3", "4", "5+", "5+", "5+", "5+", "5+", "0", "0", "1"]


def test_breakdown_of_a_hand_made_route():
    x = _b("ab cd ef")
    route = (x == 32).float()  # attend only at the two spaces
    loss = torch.arange(x.numel(), dtype=torch.float32).view(x.shape)
    rows = {r["group"]: r for r in breakdown(route, loss, byte_class(x), BYTE_CLASSES)}
    assert rows["space"]["rho"] == 1.0 and rows["space"]["attn_share"] == 1.0 and rows["space"]["n"] == 2
    assert rows["letter"]["rho"] == 0.0 and rows["letter"]["attn_share"] == 0.0 and rows["letter"]["n"] == 6
    assert rows["digit"]["n"] == 0 and rows["digit"]["rho"] is None and rows["digit"]["bpb"] is None
    assert rows["space"]["bpb"] == pytest.approx((2 + 5) / 2 / math.log(2))
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)


def _task(seq_len: int = 32) -> TextTask:
    return TextTask(CORPUS, seq_len=seq_len, val_frac=0.05, eval_batches=2, eval_batch_size=4)


@pytest.mark.parametrize("router, rho", [("dense", 1.0), ("skip-all", 0.0), ("cram", None)])
def test_text_evaluation_reports_attention_by_class(router, rho):
    task = _task()
    torch.manual_seed(0)
    model = model_for_task(SMALL, RouterConfig(name=router, init_bias=0.0), task)
    m = task.evaluate(model)
    assert m["rho_q"] == m["rho_all"] and m["positions"] == 2 * 4 * 32
    assert m["attended"] == pytest.approx(m["rho_all"] * m["positions"])
    if rho is not None:
        assert m["rho_all"] == rho and all(v in (rho, None) for v in m["rho_by_class"].values())
    full = attention_by_class(model, task)
    assert full["rho_all"] == pytest.approx(m["rho_all"]) and full["bpb"] == pytest.approx(m["bpb"], rel=1e-5)
    for table in ("by_class", "by_next_class", "by_word_pos"):
        rows = full[table]
        assert sum(r["n"] for r in rows) == m["positions"]
        # the groups' routed positions add up to the whole
        assert sum(r["rho"] * r["n"] for r in rows if r["n"]) == pytest.approx(m["attended"])
        if m["attended"]:
            assert sum(r["attn_share"] for r in rows if r["n"]) == pytest.approx(1.0)
    by_cls = {r["group"]: r["rho"] for r in full["by_class"]}
    assert by_cls == pytest.approx(m["rho_by_class"])


def test_text_model_without_cram_layers_reports_no_attention_keys():
    task = _task()
    model = model_for_task(ModelConfig(pattern="SW", d_model=32, n_heads=2, ssm_heads=2, ssm_head_dim=16,
                                       d_state=8, window=8), RouterConfig(name="dense"), task)  # fmt: skip
    m = task.evaluate(model)
    assert m["bpb"] > 0 and "rho_all" not in m and "rho_by_class" not in m
    assert attention_by_class(model, task)["by_class"][0]["rho"] is None


@pytest.mark.slow
def test_cram_text_run_works_with_fit_gamma(tmp_path):
    out = tmp_path / "r"
    sets = ['model.pattern="SA"', 'router.name="cram"', "text.seq_len=32", "text.eval_batches=1",
            "model.max_len=32", "model.d_model=32", "train.batch_size=4", "train.steps=14", "train.eval_every=2",
            "train.warmup_steps=1"]  # fmt: skip
    r = CliRunner().invoke(cli, ["train", "--preset", "text", "--data", str(CORPUS), "--quiet", "--out", str(out),
                                 *[a for s in sets for a in ("--set", s)]])  # fmt: skip
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("rho_q" in m and set(m["rho_by_class"]) == set(BYTE_CLASSES) for m in recs)
    r = CliRunner().invoke(cli, ["fit-gamma", str(out), "--resamples", "0", "--no-human", "--json"])
    assert r.exit_code in (0, 1), r.output  # 1 = the fit is flagged unreliable, not a crash
    assert "gamma" in r.output


# --- the corpus helper ---------------------------------------------------------------------------


def _fake_bible(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "bin" / "fakebible"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


def test_kjv_text_writes_what_the_program_prints(tmp_path):
    exe = _fake_bible(tmp_path, 'printf "range=%s\\nIn the beginning\\n" "$1"')
    out = kjv_text(tmp_path / "sub" / "kjv.txt", program=exe)
    assert out.read_text() == f"range={KJV_RANGE}\nIn the beginning\n"
    assert [p.name for p in out.parent.iterdir()] == ["kjv.txt"]  # no temporary file left


def test_kjv_text_errors_are_one_line(tmp_path):
    with pytest.raises(CramError, match="apt-get install -y bible-kjv"):
        kjv_text(tmp_path / "k.txt", program="no-such-bible-program")
    exe = _fake_bible(tmp_path, "echo 'no data file' >&2; exit 3")
    with pytest.raises(CramError, match="printed no text \\(no data file\\)"):
        kjv_text(tmp_path / "k.txt", program=exe)
    assert not (tmp_path / "k.txt").exists()


@pytest.mark.skipif(not os.path.exists("/usr/bin/bible"), reason="the bible-kjv package is not installed")
def test_kjv_text_with_the_real_program(tmp_path):
    out = kjv_text(tmp_path / "kjv.txt")
    data = out.read_bytes()
    assert len(data) > 4_000_000 and data.startswith(b"\nGenesis 1\n") and data.rstrip().endswith(b"Amen.")


def test_lm_preset_builds_a_cram_text_model():
    from cramkit.gpu.run.build import build_model
    from cramkit.gpu.run.config import load_config

    cfg = load_config(preset="lm", overrides=[f'text.data="{CORPUS}"'])
    assert cfg.task == "text" and cfg.router.name == "cram" and "A" in cfg.model.pattern
    model = build_model(cfg)
    assert model.cram_layers and model.n_q == cfg.text.seq_len


def test_text_task_without_data_is_one_line(tmp_path):
    with pytest.raises(CramError, match="needs a data file: give --data FILE"):
        TextTask("")
    with pytest.raises(CramError, match="does not exist"):
        TextTask(tmp_path / "missing.txt")


def test_lm_bpe_preset_is_the_subword_study_scale():
    """The lm-bpe preset is the lm model on BPE subwords with a 512-token context: the setting
    every run of the subword study (docs/results/language.md) spelled out with --set."""
    from cramkit.gpu.run.config import load_config

    lm = load_config(preset="lm", overrides=[f'text.data="{CORPUS}"'])
    cfg = load_config(preset="lm-bpe", overrides=[f'text.data="{CORPUS}"'])
    assert (cfg.text.tokenizer, cfg.text.seq_len, cfg.text.eval_batches) == ("bpe:2048", 512, 8)
    assert (cfg.train.batch_size, cfg.train.eval_every, cfg.router.tau) == (8, 100, 5.6)
    assert cfg.model == lm.model.__class__(**{**lm.model.__dict__, "window": 64})
    study = {k: v for k, v in cfg.train.__dict__.items() if k not in ("batch_size", "eval_every")}
    assert study == {k: v for k, v in lm.train.__dict__.items() if k not in ("batch_size", "eval_every")}
    assert (cfg.router.aux_grad, cfg.router.aux_share) == (lm.router.aux_grad, lm.router.aux_share)

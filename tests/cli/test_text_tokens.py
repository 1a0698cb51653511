"""Subword text runs end to end (issue 18): cram train with a BPE tokenizer and a held-out corpus,
cram eval on text, cram generate decoding with the run's tokenizer, TensorBoard, and bad input
as one line with exit status 2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cramkit import runs
from cramkit.cli.main import cli
from cramkit.gpu.run.checkpoint import read_checkpoint
from cramkit.gpu.tasks.tokenizer import Tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "gpu" / "redundancy" / "default_corpus.txt"
TINY = ["train.steps=3", "train.eval_every=3", "text.seq_len=32", "model.d_model=32", "train.batch_size=4",
        "text.eval_batches=1", 'model.pattern="SA"', 'router.name="cram"', "train.threads=1"]  # fmt: skip


def _sets(*items):
    return [a for s in items for a in ("--set", s)]


def _train(tmp, out, *extra, data=None, sets=()):
    return CliRunner().invoke(cli, ["train", "--task", "text", "--data", str(data or CORPUS), *_sets(*TINY, *sets),
                                    *extra, "--out", str(tmp / out), "--quiet", "--json"])  # fmt: skip


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A 3-step CRAM run on a 320-token BPE of the bundled corpus, with a held-out corpus."""
    tmp = tmp_path_factory.mktemp("bpe")
    mp = pytest.MonkeyPatch()
    mp.setenv("CRAM_CACHE_DIR", str(tmp / "cache"))
    held = tmp / "held.txt"
    held.write_text(CORPUS.read_text()[:4000])
    r = _train(tmp, "r", "--eval-data", str(held), sets=['text.tokenizer="bpe:320"'])
    assert r.exit_code == 0, r.output
    yield tmp
    mp.undo()


@pytest.fixture(autouse=True)
def _cache(bpe_run, monkeypatch):
    monkeypatch.setenv("CRAM_CACHE_DIR", str(bpe_run / "cache"))


def test_the_run_keeps_its_tokenizer_and_logs_recall_and_heldout(bpe_run):
    run = bpe_run / "r"
    tok = Tokenizer.from_file(run / "tokenizer.json")
    _, meta = read_checkpoint(run)
    assert tok.vocab_size == 320 == meta["vocab_size"] == meta["tokenizer_vocab"]
    assert meta["tokenizer_sha256"] == tok.sha256 and meta["tokenizer"] == "bpe:320"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for k in ("bpb", "recall_share", "bpb_recall", "bpb_other", "rho_recall", "rho_other", "attn_share_recall",
              "heldout_bpb", "heldout_val_loss", "heldout_rho_all"):  # fmt: skip
        assert k in last, k
        assert k in runs.METRICS_FIELDS or k.startswith("heldout_"), k  # the schema declares them
    # bits per UTF-8 byte: the loss per token over the bytes per token (a 320-token BPE: > 1 byte each)
    assert last["bpb"] < last["val_loss"] / math.log(2)
    assert 0 <= last["recall_share"] <= 1 and 0 <= last["rho_all"] <= 1


def test_eval_on_the_validation_split_and_on_a_text_file(bpe_run, tmp_path):
    run = bpe_run / "r"
    r = CliRunner().invoke(cli, ["eval", str(run), "--json", "--sequences", "8"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [row["corpus"] for row in res["rows"]] == ["validation", "held-out"]
    v = res["rows"][0]
    assert v["windows"] == 8 and v["tokens"] == 8 * 32 and v["bytes"] > v["tokens"]
    assert math.isclose(v["bpb"], v["val_loss"] * v["tokens"] / math.log(2) / v["bytes"], rel_tol=1e-6)
    by = {row["class"]: row for row in v["by_recall"]}
    assert by["recall"]["n"] + by["other"]["n"] == v["tokens"]
    assert math.isclose(by["recall"]["share"], v["recall_share"])
    text = tmp_path / "other.txt"
    text.write_text("the bees and the hive. " * 100 + "\n")
    plot = tmp_path / "p.png"
    r = CliRunner().invoke(cli, ["eval", str(run), "--data", str(text), "--sequences", "4", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    assert "recall tokens vs the rest" in r.output and plot.stat().st_size > 1000
    r = CliRunner().invoke(cli, ["eval", str(run), "--data", str(text), "--json"])
    row = json.loads(r.stdout)["rows"][0]
    assert row["corpus"] == "file" and row["recall_share"] > 0.5  # a phrase repeated within each window: recall


def test_byte_runs_score_on_text_too(tiny_text_run):
    r = CliRunner().invoke(cli, ["eval", str(tiny_text_run / "r"), "--json", "--sequences", "2"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["tokenizer"] == "bytes" and row["bytes"] == row["tokens"] == 64
    assert math.isclose(row["bpb"], row["val_loss"] / math.log(2), rel_tol=1e-6)
    last = json.loads((tiny_text_run / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "recall_share" in last and "bpb_recall" in last


def test_generate_decodes_with_the_runs_tokenizer(bpe_run):
    r = CliRunner().invoke(cli, ["generate", str(bpe_run / "r"), "--prompt", "The first summer", "--max-new-tokens",
                                 "5", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    tok = Tokenizer.from_file(bpe_run / "r" / "tokenizer.json")
    assert out["new_tokens"] == 5 == len(out["token_ids"]) and max(out["token_ids"]) < 320
    assert out["text"] == tok.decode(out["token_ids"])  # decoded with the run's BPE, not as bytes


def _one_line(r, fragment):
    assert r.exit_code == 2, r.output
    assert fragment in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_a_replaced_tokenizer_does_not_match_the_checkpoint(bpe_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(bpe_run / "r", run)
    other = Tokenizer.train_bpe([CORPUS.read_text()[:9000]], 320)
    (run / "tokenizer.json").write_text(other.to_json())
    _one_line(CliRunner().invoke(cli, ["eval", str(run)]), "vocabulary does not match the checkpoint")
    _one_line(CliRunner().invoke(cli, ["generate", str(run), "--prompt", "x"]), "is not the tokenizer")
    small = Tokenizer.train_bpe([CORPUS.read_text()], 300)
    (run / "tokenizer.json").unlink()
    (tmp_path / "small.json").write_text(small.to_json())
    # a run trained with another tokenizer file cannot be resumed with it
    r = _train(tmp_path, "f", data=CORPUS, sets=[f'text.tokenizer="{tmp_path / "small.json"}"'])
    assert r.exit_code == 0, r.output
    (tmp_path / "small.json").write_text(other.to_json())
    _one_line(CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "f"), "--set", "train.steps=4",
                                       "--quiet"]), "does not match")  # fmt: skip


def test_bad_input_is_one_line(bpe_run, tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"model": "not a tokenizer"}')
    _one_line(_train(tmp_path, "a", sets=[f'text.tokenizer="{bad_json}"']), "does not parse")
    short = tmp_path / "short.txt"
    short.write_text("too short for one context\n")
    _one_line(_train(tmp_path, "b", data=short, sets=['text.tokenizer="bpe:260"']), "too short for one context")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait, encore un caf\xe9\n".encode("latin-1") * 200)
    _one_line(_train(tmp_path, "c", data=latin, sets=['text.tokenizer="bpe:260"']), "is not UTF-8")
    r = _train(tmp_path, "c2", data=latin, sets=['text.tokenizer="bpe:260"', 'text.errors="replace"'])
    assert r.exit_code == 0, r.output
    _one_line(CliRunner().invoke(cli, ["eval", str(bpe_run / "r"), "--data", str(latin)]), "--errors replace")
    r = CliRunner().invoke(cli, ["eval", str(bpe_run / "r"), "--data", str(latin), "--errors", "replace", "--json"])
    assert r.exit_code == 0, r.output
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _one_line(_train(tmp_path, "d", "--eval-data", str(empty), sets=['text.tokenizer="bpe:260"']), "is empty")
    _one_line(CliRunner().invoke(cli, ["eval", str(bpe_run / "r"), "--data", str(empty)]), "is empty")
    _one_line(_train(tmp_path, "e", sets=['text.tokenizer="bpe:7"']), "BPE vocabulary")
    np.savez(tmp_path / "t.npz", tokens=np.zeros((2, 4), int))
    _one_line(CliRunner().invoke(cli, ["eval", str(bpe_run / "r"), "--data", str(short)]), "too short for one context")


def test_tensorboard_mirrors_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = _train(tmp_path, "r", "--tensorboard", sets=["train.eval_every=1"])
    assert r.exit_code == 0, r.output
    ea = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {"bpb", "rho_all", "recall_share", "rho_by_class/letter", "loss_task"} <= tags
    assert [e.step for e in ea.Scalars("bpb")] == [m["step"] for m in records]
    assert np.allclose([e.value for e in ea.Scalars("bpb")], [m["bpb"] for m in records])


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tb(name, *args, **kw):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    _one_line(_train(tmp_path, "r", "--tensorboard"), "pip install 'cram-toolkit[tensorboard]'")


def test_redundancy_reads_a_bpe_run_with_its_tokenizer(bpe_run):
    from cramkit.errors import CramError
    from cramkit.gpu.redundancy.cram_adapter import load_cram_text

    lm = load_cram_text(bpe_run / "r")
    tok = Tokenizer.from_file(bpe_run / "r" / "tokenizer.json")
    assert lm.tokenizer == "bpe:320" and lm.encode("The hive") == tok.encode("The hive").tolist()
    with pytest.raises(CramError, match="reads its own tokenizer"):
        load_cram_text(bpe_run / "r", tokenizer="bytes")


def test_eval_reports_where_attention_helps(bpe_run):
    r = CliRunner().invoke(cli, ["eval", str(bpe_run / "r"), "--json", "--sequences", "4"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)["rows"][0]
    assert 0 <= v["need_share"] <= 1
    assert v["gain_recall"] is None or 0 <= v["gain_recall"] <= 1
    if v["rho_all"] > 0:
        assert 0 <= v["gain_precision"] <= 1
    shares = (v["need_share_recall"] * v["recall_share"] + v["need_share_other"] * (1 - v["recall_share"]))
    assert shares == pytest.approx(v["need_share"])

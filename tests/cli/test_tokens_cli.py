"""``cram train --task tokens --data FILE`` and ``cram eval RUN --data FILE`` on token files built
here (docs/tasks.md): a good file trains and evaluates, every bad file is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cramkit.cli.main import cli

SETS = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16", "model.d_state=8",
        "model.memory_hidden=32", "model.router_hidden=16", "train.batch_size=8", "train.warmup_steps=1",
        "train.threads=1", "train.eval_log_points=0", "train.steps=4", "train.eval_every=2"]  # fmt: skip


def _sets(*extra: str) -> list[str]:
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


def recall_file(path, n=24, t=16, vocab=20, *, labels=True, split=True, fmt="npz"):
    """Key-value recall: the value after a key reappears at the end; labels mark two kinds of query."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, vocab, size=(n, t))
    targets = np.full((n, t), -1)
    targets[:, -1] = tokens[:, 1]
    tokens[:, -2] = tokens[:, 0]
    arrays = {"tokens": tokens, "targets": targets}
    if labels:
        lab = np.full((n, t), -1)
        lab[:, -1] = np.arange(n) % 2
        arrays["labels"] = lab
    if split:
        arrays["split"] = (np.arange(n) >= n - 6).astype(np.int64)
    arrays["query_mask"] = targets >= 0
    if fmt == "npz":
        np.savez(path, **arrays)
    else:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    return path


def test_train_and_eval_on_a_token_file(tmp_path):
    data = recall_file(tmp_path / "recall.npz")
    r = CliRunner().invoke(cli, ["train", "--task", "tokens", "--data", str(data), *_sets(), "--out",
                                 str(tmp_path / "r"), "--quiet", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and 0 <= summary["acc"] <= 1 and 0 <= summary["rho_target"] <= 1
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "r"), "--data", str(data), "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["n_sequences"] == 6 and row["n_targets"] == 6  # the file's validation split
    assert [b["label"] for b in row["by_label"]] == [0, 1] and sum(b["n"] for b in row["by_label"]) == 6
    assert 0 <= row["rho_all"] <= 1 and 0 <= row["rho_q"] <= 1
    acc = sum(b["acc"] * b["n"] for b in row["by_label"]) / 6
    assert acc == pytest.approx(row["acc"])
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "r"), "--data", str(data)])
    assert r.exit_code == 0 and "by label" in r.output and "rho_tar" in r.output


def test_safetensors_token_file_and_default_targets(tmp_path):
    data = recall_file(tmp_path / "recall.safetensors", labels=False, split=False, fmt="st")
    r = CliRunner().invoke(cli, ["train", "--task", "tokens", "--data", str(data), *_sets("train.steps=2"),
                                 "--quiet", "--json", "--out", str(tmp_path / "r")])  # fmt: skip
    assert r.exit_code == 0, r.output
    from cramkit.gpu.tasks import load_token_file

    np.savez(tmp_path / "plain.npz", tokens=np.arange(40).reshape(4, 10) % 7)
    d = load_token_file(tmp_path / "plain.npz")
    assert d.targets[0, :-1].tolist() == d.tokens[0, 1:].tolist() and d.targets[0, -1] == -1  # next token
    assert d.split.tolist() == [0, 0, 0, 1]


def _bad(tmp_path, name, **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


GOOD = np.arange(60).reshape(6, 10) % 9


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p / "none.npz", "does not exist"),
        (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "must be .npz or .safetensors"),
        (lambda p: (p / "g.npz").write_bytes(b"garbage") and p / "g.npz", "cannot be read"),
        (lambda p: _bad(p, "a.npz", targets=GOOD), "no field 'tokens'"),
        (lambda p: _bad(p, "b.npz", tokens=GOOD, extra=GOOD), "unknown field"),
        (lambda p: _bad(p, "c.npz", tokens=np.where(GOOD > 4, np.nan, GOOD)), "field tokens: contains NaN"),
        (lambda p: _bad(p, "d.npz", tokens=GOOD.astype(float) + 0.5), "field tokens: must hold integers"),
        (lambda p: _bad(p, "e.npz", tokens=GOOD.ravel()), "field tokens: must have 2 dimension"),
        (lambda p: _bad(p, "f.npz", tokens=GOOD[:0]), "field tokens: is empty"),
        (lambda p: _bad(p, "g2.npz", tokens=GOOD - 5), "field tokens: token id -5 is negative"),
        (lambda p: _bad(p, "h.npz", tokens=GOOD, targets=GOOD[:, :5]), "field targets: shape"),
        (lambda p: _bad(p, "i.npz", tokens=GOOD, targets=GOOD - 3), "field targets: value -3 < -1"),
        (lambda p: _bad(p, "j.npz", tokens=GOOD, query_mask=GOOD), "field query_mask: must be booleans"),
        (lambda p: _bad(p, "k.npz", tokens=GOOD, split=np.full(6, 2)), "field split: must be 0"),
        (lambda p: _bad(p, "l.npz", tokens=GOOD, split=np.zeros(6, int)), "no validation sequences"),
        (lambda p: _bad(p, "m.npz", tokens=GOOD, targets=np.full_like(GOOD, -1)), "have no target positions"),
        (lambda p: _bad(p, "n.npz", tokens=np.array([[1, 2], [3, 4]], dtype=object)), "never loaded"),
        (lambda p: _bad(p, "o.npz", tokens=GOOD + 100), "token id 108 >= vocabulary size 50"),
    ],
)
def test_bad_token_files_are_one_line(tmp_path, make, fragment):
    path = make(tmp_path)
    r = CliRunner().invoke(cli, ["train", "--task", "tokens", "--data", str(path), *_sets("tokens.vocab_size=50"),
                                 "--quiet", "--out", str(tmp_path / "r")])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert fragment in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_eval_on_a_file_past_the_models_vocabulary(tmp_path):
    data = recall_file(tmp_path / "recall.npz")
    r = CliRunner().invoke(cli, ["train", "--task", "tokens", "--data", str(data), *_sets("train.steps=1"),
                                 "--quiet", "--out", str(tmp_path / "r")])  # fmt: skip
    assert r.exit_code == 0, r.output
    big = _bad(tmp_path, "big.npz", tokens=GOOD + 30)
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "r"), "--data", str(big)])
    assert r.exit_code == 2 and "field tokens: token id 38 >= vocabulary size 20" in r.output


def test_text_preset_takes_data_and_cram_blocks(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    r = CliRunner().invoke(cli, ["train", "--preset", "text", "--data", str(data), *_sets(
        'model.pattern="SA"', 'router.name="cram"', "text.seq_len=32", "text.eval_batches=1", "model.max_len=32",
        "train.batch_size=4"), "--quiet", "--json", "--out", str(tmp_path / "r")])  # fmt: skip
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["bpb"] > 0 and 0 <= s["rho_all"] <= 1
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(x)["loss"] is None or json.loads(x)["loss"] < 1e3 for x in lines)

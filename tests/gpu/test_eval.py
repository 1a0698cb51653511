"""Evaluation: checkpoint loading errors, per-query records consistent with the aggregates, the
splits, the Pareto front, and the ``cram eval`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.run import config as C
from cramkit.gpu.run.eval import (
    evaluate_checkpoint,
    evaluate_checkpoints,
    pareto_front,
    parse_split,
    split_data,
)
from cramkit.gpu.run.load import load_checkpoint
from cramkit.gpu.run.train import train
from cramkit.gpu.tasks.srcd_eval import evaluate

TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "train.batch_size=8",
        "train.eval_sequences=32", "train.warmup_steps=2", "train.threads=1", "train.eval_log_points=0", "train.steps=3",
        "train.eval_every=3"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for router in ("cram", "random", "dense"):
        cfg = C.load_config(None, [*TINY, f"router.name={router}"])
        train(cfg, base / router)
        out[router] = base / router
    return out


def test_load_checkpoint_rebuilds_the_architecture(runs):
    ck = load_checkpoint(runs["random"])
    assert ck.cfg.router.name == "random" and ck.cfg.model.d_model == 32
    assert ck.meta["step"] == 3 and ck.meta["world_seed"] == 0


def test_missing_corrupt_foreign_files(tmp_path, runs):
    with pytest.raises(CramError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CramError, match="corrupt"):
        load_checkpoint(bad)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes((runs["cram"] / "last.safetensors").read_bytes()[:-100])
    with pytest.raises(CramError, match="corrupt"):
        load_checkpoint(trunc)
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CramError, match="not a cram checkpoint"):
        load_checkpoint(foreign)


def test_per_query_records_match_aggregates(runs):
    ck = load_checkpoint(runs["random"])
    scfg, world, seeds = split_data(ck.cfg, "iid", 40)
    res = evaluate(ck.model, scfg, world, seeds)
    m = res.metrics
    assert res.attend.shape == res.correct.shape == res.recurring.shape == (40, scfg.n_q)
    assert m["rec_total"] == int(res.recurring.sum()) == 40 * scfg.m_r
    assert m["epi_total"] == 40 * scfg.m_e
    assert m["rec_attended"] + m["epi_attended"] == int(res.attend.sum())
    assert m["rho_q"] == pytest.approx(res.attend.mean())
    assert m["acc"] == pytest.approx(res.correct.mean())
    assert m["acc_r"] == pytest.approx(res.correct[res.recurring].mean())
    assert ((res.rank >= 0) == res.recurring).all()
    assert 0 < m["phi_model"] < 1.1
    # the same probe set twice gives the same answer (random router seeded per evaluation)
    again = evaluate(ck.model, scfg, world, seeds)
    assert np.array_equal(again.attend, res.attend) and np.array_equal(again.correct, res.correct)


def test_random_router_is_type_blind(runs):
    # Lemma 1: a static router attends recurring and episodic queries at the same rate
    ck = load_checkpoint(runs["random"])
    scfg, world, seeds = split_data(ck.cfg, "iid", 400)
    m = evaluate(ck.model, scfg, world, seeds).metrics
    budget = ck.cfg.budget()
    assert m["rho_q"] == pytest.approx(budget, abs=0.03)
    assert m["rec_attended"] / m["rec_total"] == pytest.approx(m["epi_attended"] / m["epi_total"], abs=0.06)


@pytest.mark.parametrize("split", ["iid", "fresh", "transfer:0.5", "conflict:0.25", "struct"])
def test_splits_rebuild(runs, split):
    ck = load_checkpoint(runs["dense"])
    scfg, world, seeds = split_data(ck.cfg, split, 8)
    base = split_data(ck.cfg, "iid", 8)[1]
    if split == "fresh":
        assert not set(world.keys) & set(base.keys)
    if split.startswith("transfer"):
        shared = world.keys[world.shared]
        assert len(shared) == 32 and set(shared) <= set(base.keys)
    if split == "struct":
        assert scfg.n == 2 * ck.cfg.srcd.n and set(world.keys) == set(base.keys)
    m = evaluate(ck.model, scfg, world, seeds).metrics
    assert m["rho_q"] == 1.0 and m["phi"] == pytest.approx(1.0) and m["phi_model"] == pytest.approx(1.0)


@pytest.mark.parametrize("bad", ["train", "transfer", "transfer:2", "conflict:x", "iid:0.5"])
def test_bad_split(bad):
    with pytest.raises(CramError):
        parse_split(bad)


def test_pareto_front():
    rows = [{"rho_q": 0.1, "acc": 0.5}, {"rho_q": 0.2, "acc": 0.9}, {"rho_q": 0.3, "acc": 0.8},
            {"rho_q": 1.0, "acc": 1.0}, {"rho_q": 0.2, "acc": 0.4}]  # fmt: skip
    assert pareto_front(rows) == [0, 1, 3]


def test_eval_many_and_cli(runs, tmp_path):
    res = evaluate_checkpoints([runs["cram"], runs["random"], runs["dense"]], "iid", sequences=16)
    assert len(res["rows"]) == 3 and res["pareto"]
    r = CliRunner().invoke(cli, ["eval", str(runs["cram"]), str(runs["dense"]), "--sequences", "16", "--json",
                                 "--plot", str(tmp_path / "p.png")])  # fmt: skip
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert {"acc_r", "acc_e", "acc", "rho_q", "rho_all", "phi"} <= set(obj["rows"][0])
    assert (tmp_path / "p.png").stat().st_size > 1000
    r = CliRunner().invoke(cli, ["eval", str(runs["cram"]), str(runs["random"]), "--sequences", "16"])
    assert r.exit_code == 0 and "Pareto" in r.output and "rho_q" in r.output


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p / "missing.safetensors", "does not exist"),
        (lambda p: _write(p / "x.safetensors", b"garbage"), "corrupt"),
    ],
)
def test_eval_cli_bad_file_is_one_line(tmp_path, make, fragment):
    r = CliRunner().invoke(cli, ["eval", str(make(tmp_path))])
    assert r.exit_code != 0
    assert fragment in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_eval_cli_bad_split(runs):
    r = CliRunner().invoke(cli, ["eval", str(runs["cram"]), "--split", "transfer:7"])
    assert r.exit_code != 0 and "overlap" in r.output


def test_eval_scores_text_checkpoints_on_their_validation_split(tmp_path, runs):
    data = tmp_path / "t.txt"
    data.write_text("abcdefgh " * 200)
    cfg = C.load_config(None, ["task=\"text\"", "model.pattern=\"G\"", "model.d_model=16", "model.n_heads=2",
                               f"text.data=\"{data}\"", "text.seq_len=16", "train.steps=1", "train.batch_size=2",
                               "text.eval_batches=1", "model.max_len=16"])  # fmt: skip
    train(cfg, tmp_path / "r")
    with pytest.raises(CramError, match="'text' checkpoint"):  # an SRCD split is for SRCD checkpoints
        evaluate_checkpoint(tmp_path / "r", "iid", sequences=4)
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "r"), "--json", "--sequences", "3"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["corpus"] == "validation" and row["windows"] == 3 and row["bpb"] > 0
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "r"), str(runs["cram"])])  # one kind at a time
    assert r.exit_code == 2 and "evaluate text checkpoints separately" in r.output


def test_eval_times_the_routed_path_beside_phi(runs):
    """cram eval times the model's own routed pass against the same model routed everywhere."""
    row = evaluate_checkpoints([runs["cram"]], "iid", sequences=40)["rows"][0]
    assert row["timed_sequences"] == 40
    assert row["ms_per_seq_routed"] > 0 and row["ms_per_seq_dense"] > 0
    assert row["speedup_measured"] == pytest.approx(row["ms_per_seq_dense"] / row["ms_per_seq_routed"])
    assert row["phi"] is not None

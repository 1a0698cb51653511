"""Data-parallel training: two CPU processes on gloo under torchrun (rank 0 logs and saves) match a
single process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cramkit.gpu.run import config as C
from cramkit.gpu.run.checkpoint import read_checkpoint
from cramkit.gpu.run.train import train

SETS = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "train.batch_size=8",
        "train.eval_sequences=32", "train.warmup_steps=2", "train.threads=1", "train.eval_log_points=0", "train.steps=4",
        "train.eval_every=2", "router.explore=0.0"]  # fmt: skip


def test_two_process_gloo_matches_single_process(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "cramkit.cli.main", "train", "--out", str(tmp_path / "ddp"), "--quiet", "--json"]  # fmt: skip
    for s in SETS:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0 and "rendezvous" in proc.stderr.lower() and "refused" in proc.stderr.lower():
        pytest.skip("no local TCP rendezvous in this sandbox")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 2, 4]  # written once, by rank 0
    _, meta = read_checkpoint(tmp_path / "ddp")
    assert meta["step"] == 4
    single = train(C.load_config(None, SETS), tmp_path / "one")
    ddp = [json.loads(x) for x in lines]
    for a, b in zip(ddp[1:], single.metrics[1:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["acc"] == pytest.approx(b["acc"], abs=1 / 256)

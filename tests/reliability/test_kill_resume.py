"""kill -9 at random moments: of a process saving checkpoints (the last good checkpoint always
verifies, temps are cleaned when the folder is reopened) and of `cram train` (``--resume`` then
ends bit-identical to an uninterrupted run). One fast trial each; the sweep is ``-m slow``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cramkit import runs
from cramkit.cli.main import cli
from cramkit.gpu.run.checkpoint import read_checkpoint
from cramkit.gpu.run.runfolder import RunFolder

CFG = 'task = "srcd"\n'

_SAVER = textwrap.dedent("""
    import sys, torch
    from cramkit.gpu.run.runfolder import RunFolder
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 512))  # ~6 MB
    with torch.no_grad():
        model[0].weight.zero_()
    folder = RunFolder.open(sys.argv[1], 'task = "srcd"\\n', overwrite=True)
    for step in range(1, 10_000):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        folder.save_checkpoint(step, model, None, {"step": step}, keep=True)
        print(step, flush=True)
""")


def _kill_saver(out: Path, delay: float) -> int:
    """Run the saver, kill -9 it ``delay`` seconds after its first checkpoint; the last step it reported."""
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(out)], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.strip() == "1", first
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read().split()
    proc.wait(timeout=30)
    return int(rest[-1]) if rest else 1


def _check_after_kill(out: Path, reported: int) -> None:
    with RunFolder.open(out, CFG, resume=True) as folder:
        temps = [p for d in (out, out / runs.CHECKPOINTS) for p in d.glob(".*.tmp")]
        assert temps == []  # stale temps of the killed writer are gone
        last_step = read_checkpoint(out / runs.LAST)[1]["step"]  # last.safetensors is never broken by a kill
        good = folder.last_good_checkpoint()
        tensors, meta = read_checkpoint(good)
        step = meta["step"]
        assert step >= max(reported, last_step)  # nothing the process reported as saved is lost
        assert torch.all(tensors["model/0.weight"] == float(step))  # the content of that step
        kept = folder.checkpoint_paths(step)[1]
        # the newest is last.safetensors, or (killed between the kept copy and the link) the kept
        # copy one step ahead of it
        assert good in (out / runs.LAST, kept)
        assert read_checkpoint(kept)[1]["step"] == step  # the kept copy of that step exists


def test_kill_during_checkpoint_writes_one_trial(tmp_path):
    reported = _kill_saver(tmp_path / "r", 0.35)
    _check_after_kill(tmp_path / "r", reported)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(12))
def test_kill_during_checkpoint_writes_sweep(tmp_path, trial):
    delay = random.Random(trial).uniform(0.0, 1.5)
    reported = _kill_saver(tmp_path / "r", delay)
    _check_after_kill(tmp_path / "r", reported)


# --- cram train, killed and resumed --------------------------------------------------------------

TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "train.batch_size=8",
        "train.eval_sequences=32", "train.warmup_steps=2", "train.threads=1", "train.eval_log_points=0",
        "train.steps=32", "train.eval_every=8", "train.ckpt_every=2", "router.explore=0.2"]  # fmt: skip


def _sets() -> list[str]:
    return [a for s in TINY for a in ("--set", s)]


def _cram(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cramkit.cli.main import cli; cli()", *args]


def _strip(ms):
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in ms if not runs.is_event(m)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "r"
    r = CliRunner().invoke(cli, ["train", *_sets(), "--out", str(out), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    return out


def _kill_when_saving(args: list[str], out: Path, delay: float) -> bool:
    """Run `cram <args>`, kill -9 it ``delay`` s after it next writes last.safetensors; whether the
    kill hit the running process (False: it had finished)."""
    before = (out / runs.LAST).stat().st_mtime_ns if (out / runs.LAST).exists() else None
    proc = subprocess.Popen(_cram(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        now = (out / runs.LAST).stat().st_mtime_ns if (out / runs.LAST).exists() else None
        if now is not None and now != before:
            break
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60) == -signal.SIGKILL


def _kill_train(out: Path, delay: float) -> bool:
    return _kill_when_saving(["train", *_sets(), "--out", str(out), "--quiet"], out, delay)


def _resume_and_compare(out: Path, reference: Path) -> None:
    r = CliRunner().invoke(cli, ["train", "--resume", str(out), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in (out / runs.METRICS).read_text().splitlines()]
    want = [json.loads(x) for x in (reference / runs.METRICS).read_text().splitlines()]
    assert _strip(got) == _strip(want)
    a, _ = read_checkpoint(reference)
    b, _ = read_checkpoint(out)
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("model/", "optim/")):
            assert torch.equal(a[k], b[k]), k


def test_cli_kill_then_resume_is_bit_identical_one_trial(tmp_path, reference):
    assert _kill_train(tmp_path / "r", 0.2), "the run ended before the kill: the trial tests nothing"
    _resume_and_compare(tmp_path / "r", reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_cli_kill_then_resume_is_bit_identical_sweep(tmp_path, reference, trial):
    _kill_train(tmp_path / "r", random.Random(100 + trial).uniform(0.0, 2.5))
    _resume_and_compare(tmp_path / "r", reference)


@pytest.mark.slow
def test_cli_kill_leaves_no_temp_and_every_kept_checkpoint(tmp_path, reference):
    """After kill + resume the folder holds what an uninterrupted run holds: every kept checkpoint
    (bit-identical) and no stale temp file."""
    out = tmp_path / "r"
    assert _kill_train(out, 0.05)
    assert _kill_when_saving(["train", "--resume", str(out), "--quiet"], out, 0.3)  # killed while resuming
    _resume_and_compare(out, reference)
    assert [p for d in (out, out / runs.CHECKPOINTS) for p in d.glob(".*.tmp")] == []
    want = [p.name for p in runs.kept_checkpoints(reference)]
    assert [p.name for p in runs.kept_checkpoints(out)] == want
    for name in want:
        a, _ = read_checkpoint(reference / runs.CHECKPOINTS / name)
        b, _ = read_checkpoint(out / runs.CHECKPOINTS / name)
        assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model/")), name
    assert not os.path.exists(out / "last.json")

"""The reliability promises through the `cram` command line (docs/reliability.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import one_line_error, tiny_sets
from click.testing import CliRunner

from cramkit import runs
from cramkit.cli.main import cli


def _train(*args: str):
    return CliRunner().invoke(cli, ["train", *args, "--quiet"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    r = _train(*tiny_sets(), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    return out



@pytest.mark.parametrize("command", [["eval"], ["transfer"], ["redundancy"]])
def test_commands_refuse_a_corrupt_checkpoint_naming_it(finished, tmp_path, command):
    bad = tmp_path / "bad.safetensors"
    blob = bytearray((finished / runs.LAST).read_bytes())
    blob[-100] ^= 0x10  # one bit in the weights
    bad.write_bytes(bytes(blob))
    line = one_line_error(CliRunner().invoke(cli, [*command, str(bad)]))
    assert f"{bad}: checksum mismatch: the file is corrupt" in line


def test_resume_of_a_corrupt_last_checkpoint_is_one_line(finished, tmp_path):
    import shutil

    out = tmp_path / "r"
    shutil.copytree(finished, out)
    data = bytearray((out / runs.LAST).read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / runs.LAST).unlink()
    (out / runs.LAST).write_bytes(bytes(data))
    r = _train("--resume", str(out / runs.LAST))
    assert "checksum mismatch" in one_line_error(r) and "diverge" not in r.output


def test_a_new_run_in_a_folder_with_a_run_is_refused(finished, tmp_path):
    import shutil

    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = (out / runs.METRICS).read_text()
    line = one_line_error(_train(*tiny_sets(), "--out", str(out)))
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (out / runs.METRICS).read_text() == before


def test_overwrite_moves_the_old_run_aside(finished, tmp_path):
    import shutil

    out = tmp_path / "r"
    shutil.copytree(finished, out)
    before = (out / runs.METRICS).read_text()
    r = _train(*tiny_sets(), "--out", str(out), "--overwrite")
    assert r.exit_code == 0, r.output
    moved = [p for p in out.iterdir() if p.name.startswith(runs.REPLACED_PREFIX)]
    assert len(moved) == 1 and (moved[0] / runs.METRICS).read_text() == before


def test_resume_with_set_allows_lr_and_refuses_model_keys(tmp_path):
    out = tmp_path / "r"
    assert _train(*tiny_sets(), "--out", str(out), "--max-steps", "2").exit_code == 0
    line = one_line_error(_train("--resume", str(out), "--set", "model.d_model=64"))
    assert "model.d_model" in line
    r = _train("--resume", str(out), "--set", "train.lr=0.001")
    assert r.exit_code == 0, r.output
    events = [json.loads(x) for x in (out / runs.METRICS).read_text().splitlines()]
    assert any(e.get("event") == "resume" and "train.lr" in e["changed"] for e in events)


def test_resume_of_a_run_saved_before_a_setting_existed(tmp_path):
    """A run folder written before a config key was added (its config.toml lacks the key) ran
    at the key's default: resuming it is not a config change."""
    out = tmp_path / "r"
    assert _train(*tiny_sets(), "--out", str(out), "--max-steps", "2").exit_code == 0
    cfg = out / runs.CONFIG
    lines = cfg.read_text().splitlines()
    assert any(ln.startswith("window") for ln in lines)
    cfg.write_text("\n".join(ln for ln in lines if not ln.startswith("window")) + "\n")
    r = _train("--resume", str(out), "--max-steps", "4")
    assert r.exit_code == 0, r.output
    line = one_line_error(_train("--resume", str(out), "--set", "model.window=8"))
    assert "model.window" in line


def test_the_divergence_hint_is_a_command_that_works(tmp_path):
    out = tmp_path / "r"
    r = _train(*tiny_sets("train.lr=1e12", "train.grad_clip=0", "train.ckpt_every=1"), "--out", str(out))
    line = one_line_error(r)
    hint = line[line.index("cram train ") :].split(" (")[0].rstrip(".)")
    args = hint.split()[2:]
    assert "--set" in args and any(a.startswith("train.lr=") for a in args)
    r2 = _train(*args)
    assert "Traceback" not in r2.output and "--resume takes the configuration" not in r2.output


def _cram(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cramkit.cli.main import cli; cli()", *args]


@pytest.mark.slow
def test_two_concurrent_runs_into_one_folder_one_is_refused(tmp_path):
    out = tmp_path / "r"
    args = ["train", *tiny_sets("train.steps=40"), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(_cram(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    refused = next(err for c, err in results if c == 2)
    assert "in use by another cram process" in refused and "Traceback" not in refused
    steps = [json.loads(x).get("step") for x in (out / runs.METRICS).read_text().splitlines()]
    assert steps == sorted(steps)  # one run's evaluations, not two interleaved


@pytest.mark.slow
def test_ctrl_c_prints_how_to_resume(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen(_cram("train", *tiny_sets("train.steps=400"), "--out", str(out), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / runs.LAST).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == 130 and "Traceback" not in err
    assert f"cram train --resume {out}" in err and len(err.strip().splitlines()) == 1

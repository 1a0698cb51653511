"""A run folder is owned by one process; another run's files are never overwritten or mixed in
silently; resume refuses a different config by name except the documented allow-list."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from cramkit import runs
from cramkit.errors import CramError
from cramkit.gpu.run.checkpoint import read_checkpoint
from cramkit.gpu.run.runfolder import (
    RESUMABLE_KEYS,
    RunFolder,
    RunInterrupted,
    check_resume_changes,
    diff_configs,
)

CFG = 'task = "srcd"\n\n[train]\nlr = 0.003\nsteps = 100\nseed = 0\n\n[model]\nd_model = 32\n'


def _cfg(**train) -> str:
    body = {"lr": 0.003, "steps": 100, "seed": 0} | train
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items())
    return f'task = "srcd"\n\n[train]\n{lines}\n\n[model]\nd_model = 32\n'


def _fake_run(folder: RunFolder, step: int = 4) -> None:
    model = torch.nn.Linear(2, 2)
    folder.append_metrics({"step": 0, "rho_q": 1.0})
    folder.save_checkpoint(step, model, None, {"step": step, "metrics": []}, keep=True)


def test_new_run_writes_config_and_holds_the_lock(tmp_path):
    with RunFolder.open(tmp_path / "r", CFG):
        assert (tmp_path / "r" / runs.CONFIG).read_text() == CFG
        with pytest.raises(CramError, match=r"in use by another cram process \(pid \d+"):
            RunFolder.open(tmp_path / "r", CFG, resume=True)
    # released on close: the next open gets past the lock (a run without a checkpoint yet resumes
    # from step 0 with its config.toml; a folder with neither is refused)
    RunFolder.open(tmp_path / "r", CFG, resume=True).close()
    (tmp_path / "r" / runs.CONFIG).unlink()
    with pytest.raises(CramError, match="nothing to resume .* no checkpoint and no config.toml.* --overwrite"):
        RunFolder.open(tmp_path / "r", CFG, resume=True)


def test_second_process_is_refused_naming_the_holder_pid(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from cramkit.gpu.run.runfolder import RunFolder
        f = RunFolder.open({str(tmp_path / 'r')!r}, {CFG!r}, overwrite=True)
        print("locked", flush=True)
        sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CramError, match=f"pid {holder.pid} "):
            RunFolder.open(tmp_path / "r", CFG, overwrite=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # a killed holder leaves the lock file but no lock
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=30)
    assert (tmp_path / "r" / runs.LOCK).exists()
    RunFolder.open(tmp_path / "r", CFG, overwrite=True).close()


def test_a_folder_with_another_run_is_refused_and_overwrite_moves_it_aside(tmp_path):
    out = tmp_path / "r"
    with RunFolder.open(out, CFG) as f:
        _fake_run(f)
    with pytest.raises(CramError, match=r"already holds a run .*--resume .*--overwrite"):
        RunFolder.open(out, CFG)
    old_metrics = (out / runs.METRICS).read_text()
    with RunFolder.open(out, _cfg(lr=0.001), overwrite=True) as f:
        moved = f.replaced
    assert moved is not None and moved.parent == out and moved.name.startswith(runs.REPLACED_PREFIX)
    assert (moved / runs.METRICS).read_text() == old_metrics  # nothing discarded
    assert read_checkpoint(moved / runs.LAST)[1]["step"] == 4
    assert not (out / runs.LAST).exists() and not (out / runs.CHECKPOINTS).exists()
    events = [json.loads(x) for x in (out / runs.METRICS).read_text().splitlines()]
    assert events == [{"event": "overwrite", "moved_to": moved.name}]


def test_unrelated_files_do_not_make_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    RunFolder.open(tmp_path, CFG).close()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    out = tmp_path / "r"
    with RunFolder.open(out, CFG) as f:
        _fake_run(f)
    changed = _cfg(seed=3).replace("d_model = 32", "d_model = 64")
    with pytest.raises(CramError, match=r"model\.d_model \(32 -> 64\), train\.seed \(0 -> 3\)"):
        RunFolder.open(out, changed, resume=True)
    assert (out / runs.CONFIG).read_text() == CFG  # untouched


def test_resume_with_an_allowed_change_is_applied_and_recorded(tmp_path):
    out = tmp_path / "r"
    with RunFolder.open(out, CFG) as f:
        _fake_run(f, step=4)
        f.save_checkpoint(8, torch.nn.Linear(2, 2), None, {"step": 8}, keep=True)  # the old future
        f.append_metrics({"step": 8, "rho_q": 0.5})  # an evaluation after the resumed checkpoint
        (out / runs.SUMMARY).write_text('{"step": 8}')
    new = _cfg(lr=0.0015, steps=200)
    with RunFolder.open(out, new, resume=True) as f:
        assert f.changes == {"train.lr": (0.003, 0.0015), "train.steps": (100, 200)}
        f.begin_resume([{"step": 0, "rho_q": 1.0}], 4)
    assert (out / runs.CONFIG).read_text() == new
    lines = [json.loads(x) for x in (out / runs.METRICS).read_text().splitlines()]
    moved = lines[-1]["moved_to"]
    assert lines == [{"step": 0, "rho_q": 1.0},
                     {"event": "resume", "step": 4, "changed": {"train.lr": [0.003, 0.0015], "train.steps": [100, 200]},
                      "replaced_evaluations": 1, "moved_to": moved}]  # fmt: skip
    assert runs.evaluations(lines) == [{"step": 0, "rho_q": 1.0}]
    # what the old trajectory held beyond step 4 is kept aside, not discarded
    aside = out / moved
    assert [p.name for p in runs.kept_checkpoints(aside)] == ["step_0000008.safetensors"]
    assert [p.name for p in runs.kept_checkpoints(out)] == ["step_0000004.safetensors"]
    assert read_checkpoint(aside / runs.LAST)[1]["step"] == 8 and not (out / runs.LAST).exists()
    with RunFolder.open(out, new, resume=True) as f:  # a kill now resumes from step 4, not 8
        assert f.last_good_checkpoint() == f.checkpoint_paths(4)[1]
    assert (aside / runs.SUMMARY).read_text() == '{"step": 8}' and not (out / runs.SUMMARY).exists()
    old_lines = [json.loads(x) for x in (aside / runs.METRICS).read_text().splitlines()]
    assert runs.evaluations(old_lines) == [{"step": 8, "rho_q": 0.5}]


def test_a_plain_resume_leaves_exactly_the_checkpoint_evaluations(tmp_path):
    out = tmp_path / "r"
    with RunFolder.open(out, CFG) as f:
        _fake_run(f, step=4)
        f.append_metrics({"step": 8, "rho_q": 0.5})
    with RunFolder.open(out, CFG, resume=True) as f:
        assert f.changes == {}
        f.begin_resume([{"step": 0, "rho_q": 1.0}], 4)
    assert [json.loads(x) for x in (out / runs.METRICS).read_text().splitlines()] == [{"step": 0, "rho_q": 1.0}]


def test_allow_list_and_diff():
    assert {"train.lr", "train.grad_clip", "train.steps"} <= set(RESUMABLE_KEYS)
    assert diff_configs({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == {"a.c": (2, 3), "a.d": (None, 4)}
    with pytest.raises(CramError, match="router.name"):
        check_resume_changes({"router": {"name": "cram"}}, {"router": {"name": "dense"}}, "x")


def test_checkpoint_save_keeps_kept_and_last_consistent_and_cleans_temps(tmp_path):
    out = tmp_path / "r"
    with RunFolder.open(out, CFG) as f:
        stale = out / runs.CHECKPOINTS / ".step_0000002.safetensors.abc.tmp"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"x" * 1000)  # what a kill -9 mid-write leaves
        last = f.save_checkpoint(2, torch.nn.Linear(2, 2), None, {"step": 2}, keep=True)
        assert not stale.exists()
        kept = f.checkpoint_paths(2)[1]
        assert last.read_bytes() == kept.read_bytes()
        f.save_checkpoint(3, torch.nn.Linear(2, 2), None, {"step": 3}, keep=False)
        assert read_checkpoint(kept)[1]["step"] == 2 and read_checkpoint(last)[1]["step"] == 3
        assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoints", "config.toml", "last.safetensors", "run_id"]


def test_last_good_checkpoint_skips_a_corrupt_one(tmp_path, capsys):
    out = tmp_path / "r"
    with RunFolder.open(out, CFG) as f:
        for s in (2, 4):
            f.save_checkpoint(s, torch.nn.Linear(2, 2), None, {"step": s}, keep=True)
        assert f.last_good_checkpoint() == out / runs.LAST
        last = out / runs.LAST
        data = bytearray(last.read_bytes())
        data[-3] ^= 0xFF
        last.unlink()  # break the hard link, as a fresh file would
        last.write_bytes(bytes(data))
        assert f.last_good_checkpoint() == f.checkpoint_paths(4)[1]
        assert "checksum mismatch" in capsys.readouterr().err


def test_resume_hint_is_followable(tmp_path):
    from click.testing import CliRunner

    from cramkit.cli.main import cli

    out = tmp_path / "r"
    with RunFolder.open(out, CFG) as f:
        hint = f.resume_hint({"train.lr": 0.0015})
        assert hint == f"cram train --resume {out} --set train.lr=0.0015"  # from step 0: no checkpoint yet
        assert str(f.interrupted(1)).endswith(f"start it again with: cram train --resume {out}")
        _fake_run(f)
        hint = f.resume_hint({"train.lr": 0.0015})
        assert hint == f"cram train --resume {out} --set train.lr=0.0015"
        with pytest.raises(ValueError):
            f.resume_hint({"model.d_model": 3})
        err = f.interrupted(5)
        assert isinstance(err, RunInterrupted) and "last checkpoint is step 4" in str(err)
    # the hint's arguments are options `cram train` knows
    r = CliRunner().invoke(cli, ["train", "--help"])
    for opt in ("--resume", "--set"):
        assert opt in r.output


def test_resume_of_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(CramError, match="nothing to resume: .* does not exist"):
        RunFolder.open(tmp_path / "nope", CFG, resume=True)
    assert not (tmp_path / "nope").exists()


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(CramError, match="give one"):
        RunFolder.open(tmp_path, CFG, resume=True, overwrite=True)

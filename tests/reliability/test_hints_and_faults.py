"""Issue 19: every hint leads somewhere, every error names its real cause, every run folder knows
its run (docs/reliability.md, sections 4 and 5).

- a run killed before its first checkpoint: the hint of `cram train --resume DIR` is a command
  that works, and following it ends where an uninterrupted run ends;
- a checkpoint of another run in a run folder is refused naming both runs, unless adopted on
  purpose with ``--from``; checkpoints written before run ids still resume;
- a full disk during training is reported as a full disk (not as divergence) with a hint that,
  once space is freed, finishes the run bit for bit;
- read-only work (reprinting a finished run, ``cram eval``, ``cram generate``) works on a
  read-only run folder, and writing into one names the real cause.

Each test goes through the ``cram`` command line (click's CliRunner or a subprocess).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, tiny_sets
from click.testing import CliRunner

from cramkit import runs
from cramkit.cli.main import cli
from cramkit.gpu.run.checkpoint import read_checkpoint, write_checkpoint_file


def _cram(*args: str):
    return CliRunner().invoke(cli, list(args))





def _hint(line: str) -> list[str]:
    """The arguments of the `cram ...` command a message ends with (after ``cram``)."""
    assert "cram " in line, line
    quoted = re.findall(r"`(cram [^`]*)`", line)
    cmd = quoted[-1] if quoted else line[line.rindex("cram ") :].split(" (")[0].rstrip(".")
    args = shlex.split(cmd)
    assert args[0] == "cram", cmd
    return args[1:]


def _strip(ms):
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in ms if not runs.is_event(m)]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / runs.METRICS).read_text().splitlines() if x.strip()]


def _same_run(out: Path, reference: Path) -> None:
    """``out`` ended where the uninterrupted ``reference`` ended: the same evaluations, bit-identical
    weights and optimizer state."""
    assert _strip(_metrics(out)) == _strip(_metrics(reference))
    a, _ = read_checkpoint(reference / runs.LAST)
    b, _ = read_checkpoint(out / runs.LAST)
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("model/", "optim/")):
            assert torch.equal(a[k], b[k]), k


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != runs.LOCK}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run (6 steps, checkpoints every 2)."""
    out = tmp_path_factory.mktemp("ref") / "r"
    r = _cram("train", *tiny_sets(), "--out", str(out), "--quiet", "--json")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run A (2 of 6 steps) and run B, another run of the same model with another learning rate
    (4 of 6 steps): a checkpoint of B passes every config check of A's folder."""
    base = tmp_path_factory.mktemp("two")
    a, b = base / "A", base / "B"
    assert _cram("train", *tiny_sets(), "--out", str(a), "--max-steps", "2", "--quiet").exit_code == 0
    assert _cram("train", *tiny_sets("train.lr=0.002"), "--out", str(b), "--max-steps", "4", "--quiet").exit_code == 0
    return a, b


# --- 1. a run killed before its first checkpoint ------------------------------------------------


def _follow(line_or_result, reference: Path, out: Path) -> None:
    """Follow the command a one-line error names (or accept a resume that just worked), then the
    run must end where the uninterrupted reference ended."""
    r = line_or_result
    if r.exit_code != 0:
        args = _hint(one_line_error(r))
        r = _cram(*args, "--quiet")
        assert r.exit_code == 0, f"the hint `cram {' '.join(args)}` fails: {r.output}"
    _same_run(out, reference)


def test_resume_of_a_folder_without_a_checkpoint_follows_its_hint(reference, tmp_path):
    """The state a kill leaves after metrics.jsonl appears and before the first checkpoint."""
    out = tmp_path / "r"
    out.mkdir()
    shutil.copy(reference / runs.CONFIG, out / runs.CONFIG)
    (out / runs.METRICS).write_text((reference / runs.METRICS).read_text().splitlines()[0] + "\n")
    _follow(_cram("train", "--resume", str(out), "--quiet"), reference, out)


def test_new_run_refused_in_a_folder_without_a_checkpoint_gives_a_working_hint(reference, tmp_path):
    """`cram train --out DIR` on that folder is refused; its hint must work too."""
    out = tmp_path / "r"
    out.mkdir()
    shutil.copy(reference / runs.CONFIG, out / runs.CONFIG)
    (out / runs.METRICS).write_text((reference / runs.METRICS).read_text().splitlines()[0] + "\n")
    line = one_line_error(_cram("train", *tiny_sets(), "--out", str(out), "--quiet"))
    assert "already holds a run" in line
    r = _cram("train", "--resume", str(out), "--quiet")  # the hint: continue it with --resume
    _follow(r, reference, out)


def _cram_proc(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cramkit.cli.main import cli; cli()", *args]


def test_a_real_kill_before_the_first_checkpoint_resumes_to_the_same_run(reference, tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen(_cram_proc("train", *tiny_sets("train.ckpt_every=6"), "--out", str(out), "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / runs.METRICS).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before the kill: the trial tests nothing"
    assert not (out / runs.LAST).exists()
    _follow(_cram("train", "--resume", str(out), "--quiet"), reference, out)


def test_the_interrupt_hint_before_the_first_checkpoint_continues_this_run(reference, tmp_path):
    """Ctrl-C before any checkpoint names a command; it must continue this run (its config), not
    start the default preset in the folder."""
    try:
        from cramkit.gpu.run.runfolder import RunFolder
    except ImportError:  # before the gpu/run/ layout
        from cramkit.gpu.runfolder import RunFolder

    out = tmp_path / "r"
    out.mkdir()
    config = (reference / runs.CONFIG).read_text()
    with RunFolder.open(out, config) as folder:
        folder.append_metrics(_metrics(reference)[0])
        msg = str(folder.interrupted(1))
    args = _hint(msg)
    r = _cram(*args, "--quiet")
    assert r.exit_code == 0, r.output
    assert (out / runs.CONFIG).read_text() == config
    _same_run(out, reference)


def test_a_folder_with_neither_checkpoint_nor_config_gives_a_working_hint(reference, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / runs.METRICS).write_text((reference / runs.METRICS).read_text().splitlines()[0] + "\n")
    line = one_line_error(_cram("train", "--resume", str(out), "--quiet"))
    args = _hint(line)
    assert args == ["train", "--out", str(out), "--overwrite"]  # "... and the run's options"
    r = _cram(*args, *tiny_sets(), "--quiet")
    assert r.exit_code == 0, r.output
    _same_run(out, reference)


def test_the_max_steps_hint_finishes_the_run(reference, tmp_path):
    out = tmp_path / "r"
    r = _cram("train", *tiny_sets(), "--out", str(out), "--max-steps", "4", "--quiet")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stderr.splitlines() if "--max-steps" in ln)
    assert _hint(line) == ["train", "--resume", str(out)]
    assert _cram(*_hint(line), "--quiet").exit_code == 0
    _same_run(out, reference)


# --- 2. a checkpoint of another run -------------------------------------------------------------


def _run_id(out: Path) -> str:
    return (out / runs.RUN_ID).read_text().strip()


def test_a_checkpoint_of_another_run_is_refused_naming_both(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "A"
    shutil.copytree(a, out)
    (out / runs.LAST).unlink()
    shutil.copy(b / runs.LAST, out / runs.LAST)  # run B's (validly signed) checkpoint in A's folder
    before = _snapshot(out)
    line = one_line_error(_cram("train", "--resume", str(out), "--quiet"))
    id_a, id_b = _run_id(a), _run_id(b)
    assert id_a != id_b
    assert id_a in line and id_b in line and str(out / runs.LAST) in line and "--from" in line
    assert _snapshot(out) == before  # nothing of A's rewritten, nothing of B's added
    line = one_line_error(_cram("train", "--resume", str(out), "--set", "train.steps=8", "--quiet"))
    assert id_b in line and _snapshot(out) == before
    # its hint adopts B's checkpoint on purpose, and works
    args = _hint(one_line_error(_cram("train", "--resume", str(out), "--quiet")))
    assert args == ["train", "--resume", str(out), "--from", str(out / runs.LAST)]
    r = _cram(*args, "--quiet", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["step"] == 6 and _run_id(out) == id_a


def test_a_checkpoint_of_another_model_is_refused_as_another_run(two_runs, tmp_path):
    """The issue's case: run B has another d_model and seed. The refusal names both runs and the
    differing keys, and offers no --from (the weights cannot fit this run)."""
    a, b = two_runs
    out = tmp_path / "A"
    shutil.copytree(a, out)
    (out / runs.LAST).unlink()
    tensors, meta = read_checkpoint(b / runs.LAST)
    meta["config"]["model"]["d_model"] = 64
    meta["config"]["train"]["seed"] = 3
    write_checkpoint_file(out / runs.LAST, tensors, meta)
    before = _snapshot(out)
    line = one_line_error(_cram("train", "--resume", str(out), "--quiet"))
    assert _run_id(a) in line and _run_id(b) in line
    assert "model.d_model (64 -> 32)" in line and "train.seed (3 -> 0)" in line and "--from" not in line
    assert _snapshot(out) == before


def test_a_checkpoint_of_another_run_is_adopted_on_purpose_with_from(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "A"
    shutil.copytree(a, out)
    r = _cram("train", "--resume", str(out), "--from", str(b / runs.LAST), "--quiet", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["step"] == 6
    tensors, meta = read_checkpoint(out / runs.LAST)
    assert meta["step"] == 6 and meta["run_id"] == _run_id(out) == _run_id(a)  # the folder keeps its identity
    events = [m for m in _metrics(out) if runs.is_event(m)]
    assert any(e.get("from_run") == _run_id(b) and e.get("step") == 4 for e in events), events
    # B's run was continued: the log up to step 4 is B's (its evaluation at step 3, lr 0.002)
    assert _strip(_metrics(out))[:2] == _strip(_metrics(b))[:2] != _strip(_metrics(a))[:2]
    # --from is only for --resume
    line = one_line_error(_cram("train", *tiny_sets(), "--out", str(tmp_path / "n"), "--from", str(b / runs.LAST)))
    assert "--from" in line


def test_every_checkpoint_carries_the_folder_run_id(two_runs):
    a, _ = two_runs
    rid = _run_id(a)
    assert len(rid) >= 8
    for p in [a / runs.LAST, *runs.kept_checkpoints(a)]:
        assert read_checkpoint(p)[1]["run_id"] == rid


def _strip_run_id(path: Path) -> None:
    """Re-sign a checkpoint without a run id: what cram wrote before run ids existed."""
    tensors, meta = read_checkpoint(path)
    meta.pop("run_id", None)
    path.unlink()
    write_checkpoint_file(path, tensors, meta)


def test_checkpoints_and_folders_from_before_run_ids_still_resume(two_runs, reference, tmp_path):
    a, _ = two_runs
    out = tmp_path / "A"
    shutil.copytree(a, out)
    for p in [out / runs.LAST, *runs.kept_checkpoints(out)]:
        _strip_run_id(p)
    (out / runs.RUN_ID).unlink()  # a folder made before run ids
    r = _cram("train", "--resume", str(out), "--max-steps", "4", "--quiet")
    assert r.exit_code == 0, r.output
    rid = _run_id(out)  # the folder got an identity, written once
    assert read_checkpoint(out / runs.LAST)[1]["run_id"] == rid
    _strip_run_id(out / runs.LAST)  # an old checkpoint in a folder that has an id
    r = _cram("train", "--resume", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    assert _run_id(out) == rid
    _same_run(out, reference)


def test_overwrite_gives_the_new_run_a_new_identity(two_runs, tmp_path):
    a, _ = two_runs
    out = tmp_path / "A"
    shutil.copytree(a, out)
    old = _run_id(out)
    r = _cram("train", *tiny_sets("train.steps=2"), "--out", str(out), "--overwrite", "--quiet")
    assert r.exit_code == 0, r.output
    moved = [p for p in out.iterdir() if p.name.startswith(runs.REPLACED_PREFIX)]
    assert len(moved) == 1 and _run_id(moved[0]) == old  # the old identity went with the old run
    assert _run_id(out) != old


# --- 3. a full disk is not a divergence ---------------------------------------------------------


def _check_disk_full_line(line: str, out: Path) -> None:
    assert "no space left on device" in line, line
    assert "non-finite" not in line and "learning rate" not in line and "train.lr" not in line, line
    assert _hint(line) == ["train", "--resume", str(out)], line


@pytest.mark.parametrize("code, words, fix", [(errno.ENOSPC, "no space left on device", "free some space"),
                                              (errno.EROFS, "read-only file system", "make {out} writable"),
                                              (errno.EACCES, "permission denied", "make {out} writable")])  # fmt: skip
@pytest.mark.parametrize("as_json", [False, True])
def test_an_os_fault_during_training_is_named_with_its_own_hint(reference, tmp_path, monkeypatch, code, words, fix,
                                                               as_json):  # fmt: skip
    """The disk fills (or turns read-only, or refuses) while the step-4 checkpoint is written."""
    real_mkstemp = tempfile.mkstemp
    fault = {"on": True}

    def mkstemp(*args, prefix=None, **kw):
        if prefix and runs.step_checkpoint_name(4) in prefix and fault["on"]:
            raise OSError(code, os.strerror(code))
        return real_mkstemp(*args, prefix=prefix, **kw)

    out = tmp_path / "r"
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    json_flag = ["--json"] if as_json else []
    line = one_line_error(_cram("train", *tiny_sets(), "--out", str(out), "--quiet", *json_flag))
    assert line.startswith(f"Error: {words} while writing {out / runs.CHECKPOINTS / runs.step_checkpoint_name(4)}")
    assert "non-finite" not in line and "learning rate" not in line and "train.lr" not in line, line
    assert "the last good checkpoint is step 2 (last.safetensors)" in line and fix.format(out=out) in line, line
    assert _hint(line) == ["train", "--resume", str(out)], line
    assert read_checkpoint(out / runs.LAST)[1]["step"] == 2  # the last good checkpoint is kept
    fault["on"] = False  # space freed, folder writable again
    r = _cram(*_hint(line), "--quiet", *json_flag)
    assert r.exit_code == 0, r.output
    _same_run(out, reference)


def test_a_full_disk_at_the_summary_names_it_and_the_hint_writes_it(reference, tmp_path, monkeypatch):
    real_mkstemp = tempfile.mkstemp
    full = {"on": True}

    def mkstemp(*args, prefix=None, **kw):
        if prefix and runs.SUMMARY in prefix and full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*args, prefix=prefix, **kw)

    out = tmp_path / "r"
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    line = one_line_error(_cram("train", *tiny_sets(), "--out", str(out), "--quiet"))
    assert line.startswith(f"Error: no space left on device while writing {out / runs.SUMMARY}"), line
    assert "non-finite" not in line and "train.lr" not in line
    full["on"] = False
    r = _cram(*_hint(line), "--quiet", "--json")
    assert r.exit_code == 0, r.output
    got, want = (json.loads((d / runs.SUMMARY).read_text()) for d in (out, reference))
    assert got.pop("wall_s") > 0 and got == {k: v for k, v in want.items() if k != "wall_s"}
    _same_run(out, reference)


def _mount(args: list[str]) -> str | None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and a mount command"
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount {' '.join(args)} failed: {r.stderr.strip() or r.returncode}"


def _mounted(request, args: list[str], mnt: Path, what: str) -> None:
    """Mount (``mount ARGS``) at ``mnt``, unmounted when the test ends, whatever happens after."""
    why = _mount(args)
    if why:
        pytest.skip(f"{what} test skipped: {why}")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mnt)], check=False))


@pytest.fixture
def small_disk(tmp_path, request):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    _mounted(request, ["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], mnt, "full-disk")
    return mnt


def test_a_real_full_disk_is_named_and_the_run_finishes_once_space_is_freed(reference, small_disk):
    out = small_disk / "r"
    line = one_line_error(_cram("train", *tiny_sets(), "--out", str(out), "--quiet"))
    _check_disk_full_line(line, out)
    good = [p for p in [out / runs.LAST, *runs.kept_checkpoints(out)] if p.exists()]
    assert good and all(read_checkpoint(p) for p in good)
    assert [p for d in (out, out / runs.CHECKPOINTS) for p in d.glob(".*.tmp")] == []
    assert _mount(["-o", "remount,size=16m", str(small_disk)]) is None
    r = _cram(*_hint(line), "--quiet")
    assert r.exit_code == 0, r.output
    _same_run(out, reference)


# --- 4. read-only work on a read-only run folder ------------------------------------------------


@pytest.fixture
def read_only(tmp_path, request):
    """``read_only(src)``: a read-only view (a read-only bind mount) of a copy of ``src``."""
    count = [0]

    def make(src: Path) -> Path:
        count[0] += 1
        copy, view = tmp_path / f"copy{count[0]}", tmp_path / f"ro{count[0]}"
        shutil.copytree(src, copy)
        view.mkdir()
        _mounted(request, ["--bind", str(copy), str(view)], view, "read-only")
        why = _mount(["-o", "remount,ro,bind", str(view)])
        if why:
            pytest.skip(f"read-only test skipped: {why}")
        with pytest.raises(OSError):
            (view / "probe").write_text("x")
        return view

    return make


def test_reprinting_a_finished_run_needs_no_write(reference, read_only):
    ro = read_only(reference)
    r = _cram("train", "--resume", str(ro), "--quiet", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    want = json.loads((reference / runs.SUMMARY).read_text())
    assert {k: v for k, v in got.items() if k != "out"} == want


def test_eval_and_generate_work_on_a_read_only_run(reference, tiny_text_run, read_only):
    ro = read_only(reference)
    r = _cram("eval", str(ro), "--sequences", "16", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rows"][0]["step"] == 6
    ro_text = read_only(tiny_text_run / "r")
    r = _cram("generate", str(ro_text), "--prompt", "the ", "--max-new-tokens", "4", "--json")
    assert r.exit_code == 0, r.output


def test_writing_into_a_read_only_run_names_the_cause(reference, read_only, tmp_path):
    ro = read_only(reference)
    line = one_line_error(_cram("train", "--resume", str(ro), "--set", "train.steps=8", "--quiet"))
    assert "read-only file system" in line and str(ro) in line
    line = one_line_error(_cram("train", *tiny_sets(), "--out", str(ro / "new"), "--quiet"))
    assert "read-only file system" in line
    for args in (["train", "--resume", str(ro), "--quiet"], ["eval", str(ro), "--sequences", "16"]):
        for extra in ([], ["--json"]):
            r = _cram(*args, *extra, "--plot", str(ro / "p.png"))
            assert r.exit_code == 2 and "Traceback" not in r.output, r.output
            errs = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
            assert len(errs) == 1 and "read-only file system" in errs[0] and str(ro / "p.png") in errs[0], r.output


def _corpus(path: Path) -> Path:
    import random

    rnd = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    path.write_text("\n\n\n".join(" ".join(rnd.choice(words) for _ in range(60)) for _ in range(12)))
    return path


def _fit_gamma_run(path: Path) -> Path:
    """A run folder whose metrics.jsonl holds a consolidation curve (what fit-gamma reads)."""
    path.mkdir(parents=True)
    with open(path / runs.METRICS, "w") as fh:
        for s in sorted({int(x) for x in np.geomspace(10, 1e5, 30)}):
            e = 0.1 + 0.9 * (1 + s / 100) ** -0.43
            fh.write(json.dumps({"step": s, "exposures": s * 0.25, "lr": 1e-3, "cum_lr": s * 1e-3, "rho_q": e,
                                 "rec_attended": int(2000 * e), "rec_total": 2000}) + "\n")  # fmt: skip
    return path


def test_every_read_only_command_works_on_a_read_only_run(reference, tiny_text_run, read_only, tmp_path):
    ro = read_only(reference)
    r = _cram("transfer", str(ro / runs.LAST), "--overlap", "0,1", "--sequences", "8", "--chunk", "4",
              "--bootstrap", "0", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    ro_fit = read_only(_fit_gamma_run(tmp_path / "fit"))
    r = _cram("fit-gamma", str(ro_fit), "--resamples", "20", "--no-human", "--models", "M1,M2", "--json")
    assert r.exit_code == 0, r.output
    ro_text = read_only(tiny_text_run / "r")
    r = _cram("redundancy", str(ro_text), "--text", str(_corpus(tmp_path / "c.txt")), "--min-pos", "4",
              "--max-tokens", "2000", "--predictors", "p0,p1", "--no-gate", "--no-per-layer", "--bootstrap", "20",
              "--quiet", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output


def test_a_subword_text_run_is_read_with_a_read_only_folder_and_cache(read_only, tmp_path, monkeypatch):
    """`cram eval` on a text run encodes its validation split through the prepared-corpus cache;
    an unwritable cache (a read-only home) costs a warning, not the command."""
    data = tmp_path / "t.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 80)
    run = tmp_path / "run"
    r = _cram("train", "--task", "text", "--data", str(data), "--set", 'text.tokenizer="bpe:300"',
              *[a for s in ("train.steps=2", "train.eval_every=2", "text.seq_len=32", "model.d_model=32",
                            "train.batch_size=4", "text.eval_batches=1", "train.threads=1") for a in ("--set", s)],
              "--out", str(run), "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("CRAM_CACHE_DIR", str(read_only(tmp_path / "cache") / "cram"))
    ro = read_only(run)
    r = _cram("eval", str(ro), "--sequences", "4", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"][0]["tokenizer"] == "bpe:300"
    assert "read-only file system" in r.stderr and "using the corpus from memory" in r.stderr
    r = _cram("generate", str(ro), "--prompt", "the ", "--max-new-tokens", "4", "--json")
    assert r.exit_code == 0, r.output


@pytest.fixture
def full_disk(tmp_path, request):
    """A tmpfs with no space left."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    _mounted(request, ["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], mnt, "full-disk")
    with contextlib.suppress(OSError), open(mnt / "filler", "wb", buffering=0) as fh:
        while True:
            fh.write(b"x" * 4096)
    return mnt


@pytest.mark.parametrize("as_json", [False, True])
def test_a_plot_on_a_full_or_read_only_target_names_the_cause_and_keeps_the_result(
        reference, read_only, full_disk, tmp_path, as_json):  # fmt: skip
    ro = read_only(reference)
    fit = _fit_gamma_run(tmp_path / "fit")
    commands = {"train": ["train", "--resume", str(reference), "--quiet"],
                "eval": ["eval", str(reference), "--sequences", "16"],
                "fit-gamma": ["fit-gamma", str(fit), "--resamples", "20", "--no-human", "--models", "M1,M2"]}  # fmt: skip
    for name, args in commands.items():
        for target, cause in ((ro / "sub" / "p.svg", "read-only file system"),
                              (full_disk / "p.png", "no space left on device")):  # fmt: skip
            r = _cram(*args, *(["--json"] if as_json else []), "--plot", str(target))
            assert r.exit_code == 2 and "Traceback" not in r.output, (name, r.output)
            errs = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
            assert errs == [f"Error: {cause} while writing {target}"], (name, r.stderr)
            assert not target.exists()
            if as_json:  # the result was printed before the plot failed: nothing computed is lost
                assert json.loads(r.stdout), name
            else:
                assert r.stdout.strip(), name
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no temp left behind


def test_an_out_folder_on_a_full_or_read_only_disk_names_the_cause(read_only, full_disk, tmp_path):
    ro = read_only(_fit_gamma_run(tmp_path / "any"))
    for args, cause in ((["train", *tiny_sets(), "--out", str(ro / "r")], "read-only file system"),
                        (["train", *tiny_sets(), "--out", str(full_disk / "r")], "no space left on device"),
                        (["reproduce", "--out", str(ro / "rep")], "read-only file system")):  # fmt: skip
        for extra in ([], ["--json"]):
            line = one_line_error(_cram(*args, *extra, "--quiet"))
            assert cause in line.lower() and ("/r" in line or "/rep" in line), line

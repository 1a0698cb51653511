"""OS faults are one line: a full disk (a 1 MiB tmpfs where the machine allows mounting one), a
read-only file system, a missing or blocked parent; the previous file survives every failure."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
import torch

from cramkit.errors import CramError
from cramkit.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    os_errors,
)


def _mount_tmpfs(path, size="1m") -> str | None:
    """Mount a tmpfs at ``path``; the reason it cannot be done, or None on success."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    if shutil.which("mount") is None:
        return "no mount command"
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"mount -t tmpfs is not allowed here ({r.stderr.strip() or r.returncode})"
    return None


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    why = _mount_tmpfs(mnt)
    if why:
        pytest.skip(f"full-disk test skipped: {why}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _ro(mnt):
    r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")


def test_full_disk_is_one_line_and_keeps_the_previous_file(small_disk):
    target = small_disk / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(CramError, match=rf"^no space left on device while writing {target}$"):
        atomic_write_bytes(target, b"x" * (2 << 20))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in small_disk.iterdir()) == ["out.bin"]  # no temp left


def test_full_disk_during_a_checkpoint_keeps_the_last_good_one(small_disk):
    from cramkit.gpu.run.checkpoint import read_checkpoint, save_checkpoint

    path = small_disk / "last.safetensors"
    save_checkpoint(path, torch.nn.Linear(8, 8), None, {"step": 1})
    with pytest.raises(CramError, match="no space left on device while writing .*last.safetensors"):
        save_checkpoint(path, torch.nn.Linear(600, 600), None, {"step": 2})  # 1.4 MB > 1 MiB disk
    assert read_checkpoint(path)[1]["step"] == 1


def test_full_disk_while_appending_metrics(small_disk):
    atomic_write_bytes(small_disk / "filler", b"x" * ((1 << 20) - 4096))
    with pytest.raises(CramError, match="no space left on device while writing .*metrics.jsonl"):
        for i in range(1000):
            append_jsonl(small_disk / "metrics.jsonl", {"step": i, "pad": "y" * 200})


def test_read_only_file_system(small_disk):
    atomic_write_text(small_disk / "a.txt", "kept")
    _ro(small_disk)
    with pytest.raises(CramError, match="^read-only file system while writing"):
        atomic_write_text(small_disk / "a.txt", "new")
    assert (small_disk / "a.txt").read_text() == "kept"


def test_missing_parent_is_created_and_a_file_in_the_way_is_one_line(tmp_path):
    atomic_write_json(tmp_path / "new" / "deep" / "x.json", {"a": 1})
    (tmp_path / "blocker").write_text("")
    with pytest.raises(CramError, match="while writing .*blocker/x.json"):
        atomic_write_text(tmp_path / "blocker" / "x.json", "y")


def test_permission_denied_is_one_line():
    with pytest.raises(CramError, match="^permission denied while reading secrets$"):
        with os_errors("reading secrets"):
            raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
                                         (errno.EDQUOT, "disk quota exceeded"), (errno.ENOENT, "no such file or folder")])  # fmt: skip
def test_os_errors_decorator(code, words):
    @os_errors("saving the thing")
    def f():
        raise OSError(code, os.strerror(code))

    with pytest.raises(CramError, match=f"^{words} while saving the thing$"):
        f()


def test_cram_errors_pass_through_unchanged():
    with pytest.raises(CramError, match="^mine$"):
        with os_errors("x"):
            raise CramError("mine")


def test_cli_maps_a_stray_oserror_memoryerror_and_interrupt_to_one_line(monkeypatch):
    import click
    from click.testing import CliRunner

    from cramkit.cli import main
    from cramkit.gpu.run.runfolder import RunInterrupted

    raised = {}

    @click.command("boom")
    def boom():
        raise raised["exc"]

    monkeypatch.setattr(main.LazyGroup, "get_command", lambda self, ctx, name: boom)
    cases = [
        (OSError(errno.ENOSPC, "No space left on device", "/x/y"), 2, "no space left on device (/x/y)"),
        (MemoryError(), 2, "out of memory"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"), 2, "out of memory"),
        (RunInterrupted("stopped at step 5; continue with: cram train --resume r"), 130, "cram train --resume r"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ]
    for exc, code, text in cases:
        raised["exc"] = exc
        r = CliRunner().invoke(main.cli, ["boom"])
        assert r.exit_code == code, (exc, r.output)
        assert text in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output

"""Atomic writes (cramkit/io.py)."""

from __future__ import annotations

import os
import stat

import pytest

from cramkit.errors import CramError
from cramkit.io import atomic_write_json, atomic_write_text, save_figure


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]


def test_atomic_write_uses_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.txt").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(p, {"a": float("nan")})
    assert p.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_save_figure_formats(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    fig, _ = plt.subplots()
    with pytest.raises(CramError, match="cannot write a plot"):
        save_figure(fig, tmp_path / "f.notaformat")
    assert not (tmp_path / "f.notaformat").exists()

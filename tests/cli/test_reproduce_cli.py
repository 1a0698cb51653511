"""``cram reproduce`` on the command line: bad input is one line and exit 2; --json prints the
report's JSON (steps injected, so this is fast)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cramkit.cli.main import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
from test_reproduce import FakeSteps  # noqa: E402


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--only", "nope"], "unknown claim(s) nope"),
        (["--only", "gamma,,compute"], "no empty item"),
        (["--only", "gamma,gamma"], "claims repeat"),
        (["--scale", "huge"], "unknown scale 'huge'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    res = CliRunner().invoke(cli, ["reproduce", "--out", str(tmp_path / "r"), "--quiet", *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert needle in res.output and lines[-1].startswith("Error:") and "Traceback" not in res.output
    assert not (tmp_path / "r" / "steps").exists()


def test_json_output_with_injected_steps(tmp_path, monkeypatch):
    from cramkit.gpu.reproduce import runner
    from cramkit.gpu.reproduce.report import ReproduceResult

    monkeypatch.setattr(runner, "STEPS", FakeSteps().table())
    monkeypatch.setattr(ReproduceResult, "plot", lambda self, path: Path(path).write_bytes(b""))
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["reproduce", "--scale", "tiny", "--out", str(out), "--only", "gamma", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [c["id"] for c in data["claims"]][0] == "static-bound"
    assert {c["id"]: c["verdict"] for c in data["claims"]}["gamma"] == "fails"
    assert data == json.loads((out / "report.json").read_text())

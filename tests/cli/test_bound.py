"""The ``cram bound`` command: output, JSON, plot, symbolic form and exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cramkit.cli.main import cli

SMALL = ["--freq", "0.1", "--fe", "0.03", "--P", "64", "--n-min", "128", "--n-max", "512",
         "--seeds", "20", "--batch", "2", "--T", "600", "--stream-P", "16"]  # fmt: skip


def _run(args):
    return CliRunner().invoke(cli, ["bound", *args])


def test_json_and_plot(tmp_path):
    fig = tmp_path / "bound.png"
    res = _run([*SMALL, "--json", "--plot", str(fig)])
    assert res.exit_code == 0, res.output
    js = json.loads(res.output)
    assert js["freq"] == 0.1
    assert set(js["criteria"]) == {"P1", "P2", "P3", "P4", "P5"} and all(js["criteria"].values())
    assert set(js["controls"]) == {"F1", "F2", "F3", "F4", "F5"}
    assert js["routers"]["ORACLE-POS"]["static"] and not js["routers"]["CR_2"]["static"]
    assert js["seconds"] > 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_output_names_every_part():
    res = _run([*SMALL, "--routers", "ORACLE-POS,RAND_0.5,SKIP-ALL+M", "--K", "2"])
    assert res.exit_code == 0, res.output
    out = res.output
    for part in ("RAND_0.5", "CR_2", "P1 pass", "P5 pass", "F3 pass", "Stream separation", "router decisions/s",
                 "Result: every criterion holds."):  # fmt: skip
        assert part in out


def test_failing_criterion_exits_1_and_says_which():
    res = _run([*SMALL, "--T", "20", "--routers", "ORACLE-POS", "--K", "3"])
    assert res.exit_code == 1
    last = res.output.strip().splitlines()[-1]
    assert (
        "P4 FAIL" in res.output
        and last.startswith("Result: FAILED")
        and "P4" in last
        and "T_0" in res.output
    )


@pytest.mark.parametrize(
    "args, words",
    [
        (["--freq", "0"], "freq must lie in (0, 1)"),
        (["--freq", "1.5"], "freq must lie in (0, 1)"),
        (["--freq", "abc"], "'abc' is not a valid float"),
        (["--freq", "nan"], "freq must be a finite number"),
        (["--alpha", "inf"], "alpha must be a finite number"),
        (["--fe", "-0.1"], "f_e must lie"),
        (["--routers", "ALL,NOPE"], "unknown router 'NOPE'"),
        (["--P", "10"], "m_r <= P"),
        (["--K", "1,x"], "expected comma-separated integers"),
        (["--K", "1,,2"], "no empty item"),
        (["--K", "0"], "outside [1, 1000000]"),
        (["--n-min", "512", "--n-max", "256"], "n range"),
        (["--seeds", "1.5"], "'1.5' is not a valid integer"),
        (["--plot", "."], "needs a file path ending in .png, .pdf or .svg, not the folder"),
        (["--plot", "newdir/"], "not the folder"),
        (["--plot", "figure.jpg"], "must end in .png, .pdf or .svg"),
        (["--symbolic", "--freq", "nan"], "f must be a finite number"),
        (["--symbolic", "--fe", "inf"], "f_e must be a finite number"),
        (["--symbolic", "--freq", "-inf"], "f must be a finite number"),
        (["--symbolic", "--freq", "1.5"], "f must be <= 1"),
        (["--symbolic", "--plot", "s.png"], "has no plot"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(args, words):
    res = _run(args)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0], res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("flag", [[], ["--latex"], ["--json"]])
def test_symbolic(flag):
    res = _run(["--symbolic", *flag])
    assert res.exit_code == 0, res.output
    if flag == ["--json"]:
        js = json.loads(res.output)
        names = [t["name"] for t in js["theorems"]]
        assert any(n.startswith("Theorem 1") for n in names)
        assert js["evaluated"]["kappa_l1"] == 4 and js["evaluated"]["m_e"] == 164
    else:
        assert "Theorem 2 (CR_K upper bound)" in res.output and "assumes:" in res.output
        assert ("\\geq" in res.output) == (flag == ["--latex"])


def test_symbolic_prints_proposition3_from_the_count_model():
    count_model = pytest.importorskip("cramkit.theory.count_model")
    if not hasattr(count_model, "asymptotic_expr"):
        pytest.skip("theory.count_model has no asymptotic_expr")
    res = _run(["--symbolic"])
    assert res.exit_code == 0 and "Proposition 3" in res.output and "[P]" in res.output

"""``cram fit-gamma`` end to end through Click."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cramkit.cli.main import cli


def _run(args):
    return CliRunner().invoke(cli, ["fit-gamma", *args])


def _write_run(path, seed, gamma=0.43):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    steps = np.unique(np.geomspace(10, 1e5, 30).astype(int))
    with open(path / "metrics.jsonl", "w") as fh:
        for s in steps:
            e = 0.1 + 0.9 * (1 + s / 100) ** -gamma
            k = int(rng.binomial(2000, e))
            fh.write(json.dumps({"step": int(s), "exposures": float(s) * 0.25, "lr": 1e-3,
                                 "cum_lr": float(s) * 1e-3, "rho_q": float(e),
                                 "rec_attended": k, "rec_total": 2000,
                                 "epi_attended": 100, "epi_total": 100}) + "\n")


def test_list_human():
    r = _run(["--list-human"])
    assert r.exit_code == 0
    assert "murre-dros-dros" in r.output and "savings" in r.output and "analogy" in r.output


def test_human_json_schema():
    r = _run(["--human", "murre-dros-dros", "--json", "--resamples", "50", "--models", "M1,M2,M5,M6"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {"fits", "best_model", "transition", "gamma", "human_reference"} <= set(out)
    f = out["fits"][0]
    assert {"dataset", "model", "params", "gamma", "aic", "bic", "n"} <= set(f)
    assert {"value", "stderr", "ci"} <= set(f["params"]["gamma"])
    assert {"t_c", "W", "sharp"} <= set(out["transition"])
    assert out["source"]["type"] == "human" and "savings" in out["source"]["measure"]
    a = {h["dataset"]: round(h["a"], 3) for h in out["human_reference"]}
    assert a["murre-dros-dros"] == 0.167


def test_single_run_report_and_plot(tmp_path):
    _write_run(tmp_path / "run", 0)
    png = tmp_path / "fit.png"
    r = _run([str(tmp_path / "run"), "--resamples", "100", "--no-human", "--plot", str(png),
              "--models", "M1,M2,M3,M5,M6,M8"])
    assert r.exit_code == 0, r.output
    for key in ("[[Fit M1", "# data points", "reduced chi-square", "Akaike info crit",
                "[[Model comparison]]", "[[gamma]]", "profile-likelihood", "[[Transition]]",
                "verdict: not sharp"):
        assert key in r.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_several_runs_bootstrap_over_runs(tmp_path):
    for s in range(4):
        _write_run(tmp_path / f"seed{s}", s)
    r = _run([str(tmp_path / f"seed{s}") for s in range(4)] + [
        "--json", "--resamples", "2000", "--no-human", "--models", "M1,M2,M6", "--time", "exposures"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    g = out["gamma"]
    assert g["ci_method"] == "bootstrap over runs" and g["n_resamples"] == 2000
    assert g["ci"][0] < 0.43 < g["ci"][1]
    assert out["n_runs"] == 4 and out["time_unit"] == "exposures per pattern"


def test_count_model():
    r = _run(["--count-model", "--alpha", "2", "--K", "3", "--P", "100000", "--json",
              "--resamples", "0", "--no-human", "--models", "M1,M2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["count_model"]["predicted_gamma"] == 0.5
    assert abs(out["gamma"]["value"] - 0.5) < 0.03


@pytest.mark.parametrize("content,needle", [
    ("", "empty"),
    ("t,k,N\n1,5,4\n2,1,4\n3,1,4\n4,1,4\n5,1,4\n6,1,4\n", "exceeds N"),
    ("t,E\n1,0.5\n2,nan\n3,0.2\n", "NaN"),
    ("t,E\n1,0.5\n3,0.4\n2,0.2\n", "not strictly increasing"),
    ("t,E\n1,0.5\n2,0.4\n3,0.2\n", "free parameters"),
])
def test_bad_input_one_line_nonzero_exit(tmp_path, content, needle):
    p = tmp_path / "in.csv"
    p.write_text(content)
    r = _run([str(p), "--no-human"])
    assert r.exit_code == 2
    assert needle in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_usage_errors(tmp_path):
    assert _run([]).exit_code == 2
    assert _run(["--count-model", "--alpha", "2"]).exit_code == 2
    assert _run(["--human", "nobody"]).exit_code == 2
    assert _run([str(tmp_path / "missing")]).exit_code == 2
    assert _run(["--human", "murre-dros-dros", "--models", "M9"]).exit_code == 2


def test_fixed_parameter_primary_reproduces_murre_dros():
    r = _run(["--human", "murre-dros-seitz", "--primary", "M2", "--fix", "Einf=0", "--json",
              "--resamples", "100", "--no-human", "--models", "M1,M2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert round(out["gamma"]["value"], 3) == 0.099
    m2 = next(f for f in out["fits"] if f["model"] == "M2")
    assert m2["params"]["Einf"]["fixed"] is True and m2["nvary"] == 2
    lo, hi = out["gamma"]["profile_ci"]
    assert lo < 0.099 < hi
    assert _run(["--human", "murre-dros-seitz", "--fix", "nope"]).exit_code == 2


def test_human_default_primary_is_the_pure_power_law():
    r = _run(["--human", "murre-dros-mack", "--json", "--resamples", "50", "--no-human",
              "--models", "M1,M2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["primary_model"] == "M2"
    assert round(out["gamma"]["value"], 3) == 0.093


@pytest.mark.parametrize(
    "rows, args, needle",
    [
        ("t,E\n1,1.9\n2,0.5\n3,-0.8\n4,0.1\n5,0.1\n", [], "must lie in [0, 1]"),
        ("t,k,N\n1,5.5,10.2\n2,3,10\n3,2,10\n4,1,10\n5,1,10\n", [], "whole numbers"),
        ("t,E\n1,0.9\n2,0.5\n3,0.3\n4,0.2\n5,0.1\n", ["--fix", "Einf=nan"], "finite"),
        ("t,E\n1,0.9\n2,0.5\n3,0.3\n4,0.2\n5,0.1\n", ["--seed", "-1"], "x>=0"),
    ],
)
def test_more_bad_input_is_one_line(tmp_path, rows, args, needle):
    p = tmp_path / "d.csv"
    p.write_text(rows)
    r = _run([str(p), "--resamples", "0", "--no-human", *args])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output


def test_degenerate_data_reports_without_crashing(tmp_path):
    p = tmp_path / "zeros.csv"
    p.write_text("t,E\n" + "".join(f"{t},0\n" for t in range(1, 8)))
    r = _run([str(p), "--resamples", "0", "--no-human", "--models", "M1,M2,M3"])
    assert r.exit_code == 0, r.output
    assert "Model comparison" in r.output


def test_count_model_limits():
    assert _run(["--count-model", "--alpha", "2", "--K", "99999999999"]).exit_code == 2
    assert _run(["--count-model", "--alpha", "2", "--K", "2", "--n-range", "1e300", "1e308"]).exit_code == 2


@pytest.mark.parametrize("args, needle", [
    (["--plot", "newdir/"], "not the folder"),
    (["--plot", "fig.jpg"], "must end in .png, .pdf or .svg"),
    (["--models", "M1,,M2"], "no empty item"),
    (["--t-min", "-1"], "t_min must be a positive finite number"),
    (["--t-min", "nan"], "t_min must be a positive finite number"),
])
def test_option_errors_are_one_error_line(tmp_path, args, needle):
    p = tmp_path / "d.csv"
    p.write_text("t,E\n1,0.9\n2,0.5\n3,0.3\n4,0.2\n5,0.1\n")
    r = _run([str(p), "--resamples", "0", "--no-human", *args])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in r.output


def test_t_out_of_range_and_huge_counts_exit_2_with_one_line(tmp_path):
    for name, text, needle in (("t.csv", "t,E\n1,0.9\n10,0.5\n1e308,0.1\n", "outside"),
                               ("n.csv", "t,k,N\n1,9e18,1e19\n2,8e18,1e19\n3,7e18,1e19\n", "2^53")):
        p = tmp_path / name
        p.write_text(text)
        r = _run([str(p), "--no-human"])
        assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1


def test_list_human_json_and_strict_json_output():
    r = _run(["--list-human", "--json"])
    assert r.exit_code == 0
    names = [h["name"] for h in json.loads(r.output)["human"]]
    assert "murre-dros-dros" in names and "ebbinghaus-1885" in names

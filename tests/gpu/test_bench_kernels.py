"""The kernel benchmark library and ``cram bench kernels`` at toy sizes (seconds, not minutes)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.bench import CASE_KEYS, bench_kernels, parse_rho, routed_mask
from cramkit.gpu.bench.kernels import KernelBenchConfig, KernelBenchResult, run

TINY = dict(t_values=[24], rhos=[0.25, 1.0], repeats=1, batch=2, heads=2, head_dim=8, d_state=4, chunk_size=8,
            model_t=16, model_batch=2, device="cpu")


def test_every_case_has_the_documented_keys_and_consistent_ratios():
    result = bench_kernels(ops=["routed_attention", "ssm_scan", "model_step"], **TINY)
    cases = result["cases"]
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"] == torch.__version__
    ops = [c["op"] for c in cases]
    assert ops.count("routed_attention") == 2 * 2  # two rho values x (dense, gathered) baselines
    assert ops.count("ssm_scan") == 1 and ops.count("model_step") == 2
    for c in cases:
        assert set(CASE_KEYS) <= set(c)
        assert c["ms"] > 0 and c["baseline_ms"] > 0
        assert c["speedup"] == pytest.approx(c["baseline_ms"] / c["ms"])
    full = [c for c in cases if c["op"] == "routed_attention" and c["rho"] == 1.0]
    assert all(c["flop_limit"] == pytest.approx(1.0) for c in full)
    sparse = [c for c in cases if c["op"] == "routed_attention" and c["rho"] == 0.25]
    assert all(c["flop_limit"] > 1.5 for c in sparse)
    json.dumps(result, allow_nan=False)


def test_each_backend_is_its_own_row_timed_in_the_same_run():
    cfg = {**TINY, "rhos": [0.25]}
    cases = bench_kernels(ops=["routed_attention"], backends=["auto", "gathered", "flex"], forward_only=True, **cfg)["cases"]
    assert [(c["backend"], c["baseline"]) for c in cases] == [
        (b, base) for b in ("auto", "gathered", "flex") for base in ("sdpa_dense", "sdpa_gathered")
    ]
    assert {c["pass"] for c in cases} == {"fwd"}
    algos = {c["backend"]: c["algorithm"] for c in cases}
    assert algos["auto"].startswith("cpu-") and algos["gathered"] == "gathered" and algos["flex"] == "flex"
    dense = {c["baseline_ms"] for c in cases if c["baseline"] == "sdpa_dense"}
    assert len(dense) == 1  # one baseline measurement shared by every backend's rows
    both = bench_kernels(ops=["routed_attention"], **cfg)["cases"]
    assert {c["pass"] for c in both} == {"fwd+bwd"} and {c["backend"] for c in both} == {"auto"}


def test_routed_mask_routes_exactly_round_rho_t_per_row():
    gen = torch.Generator().manual_seed(0)
    for rho, want in ((1 / 64, 2), (0.25, 25), (1.0, 100), (1e-4, 1)):
        mask = routed_mask(3, 100, rho, gen)
        assert mask.sum(1).tolist() == [want] * 3


@pytest.mark.parametrize("text, value", [("1/64", 1 / 64), ("0.25", 0.25), (" 1 ", 1.0)])
def test_parse_rho_accepts_fractions(text, value):
    assert parse_rho(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "1.5", "-1/4", "abc", "1/0"])
def test_parse_rho_rejects_bad_values(text):
    with pytest.raises(CramError):
        parse_rho(text)


def test_bad_library_arguments_raise():
    with pytest.raises(CramError, match="unknown op"):
        bench_kernels(ops=["nope"], **TINY)
    with pytest.raises(CramError, match="repeats"):
        bench_kernels(ops=["ssm_scan"], **{**TINY, "repeats": 0})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"ops": ()}, "unknown op"),
        ({"t_values": (1,)}, "every T"),
        ({"t_values": (2**20 + 1,)}, "every T"),
        ({"rhos": (0.0,)}, "every rho"),
        ({"rhos": ()}, "every rho"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"heads": True}, "heads"),
        ({"threads": 2000}, "threads"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_config_refuses_bad_settings_in_one_line(fields, message):
    with pytest.raises(CramError, match=message) as info:
        KernelBenchConfig(**fields)
    assert "\n" not in str(info.value)


def test_run_reports_progress_per_case_and_its_result_owns_the_views(tmp_path):
    seen = []
    cfg = KernelBenchConfig(**{**TINY, "t_values": (16, 24), "rhos": [1.0]}, ops=["ssm_scan", "model_step"])
    assert cfg.rhos == (1.0,) and cfg.ops == ("ssm_scan", "model_step")  # lists become tuples (frozen, hashable)
    result = run(cfg, lambda stage, done, total: seen.append((stage, done, total)))
    assert isinstance(result, KernelBenchResult)
    labels = ["ssm_scan T=16", "ssm_scan T=24", "model_step T=16"]
    assert seen == [x for i, lab in enumerate(labels) for x in ((lab, i, 3), (lab, i + 1, 3))]
    data = result.to_json()
    assert set(data) == {"machine", "cases"} and [c["op"] for c in data["cases"]] == ["ssm_scan", "ssm_scan", "model_step"]
    text = result.report(width=160)
    assert "kernels on cpu" in text and "cpu-chunked-8" in text and "model_rho_1" in text and "1.00x" in text
    assert len(text.splitlines()) == 4 + 3 + 1  # title, top rule, header, rule; 3 rows; bottom rule
    result.plot(tmp_path / "k.png")
    assert (tmp_path / "k.png").stat().st_size > 0


def test_cli_json_and_plot(tmp_path):
    plot = tmp_path / "speedup.png"
    res = CliRunner().invoke(
        cli,
        ["bench", "kernels", "--t", "24", "--rho", "1/4,1", "--repeats", "1", "--heads", "2", "--head-dim", "8",
         "--d-state", "4", "--ops", "routed_attention,ssm_scan", "--json", "--plot", str(plot)],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {c["op"] for c in data["cases"]} == {"routed_attention", "ssm_scan"}
    assert plot.stat().st_size > 0


def test_cli_table_output():
    res = CliRunner().invoke(cli, ["bench", "kernels", "--t", "16", "--rho", "1", "--repeats", "1", "--head-dim", "8",
                                   "--heads", "1", "--ops", "ssm_scan", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "ssm_scan" in res.output and "reference" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rho", "2"], "rho must lie in"),
        (["--rho", "x"], "rho must be a number"),
        (["--t", "1"], "outside [2, 1048576]"),
        (["--t", "99999999999999999999"], "outside [2, 1048576]"),
        (["--t", "256,,512"], "no empty item"),
        (["--rho", "1/4,,1"], "no empty item"),
        (["--plot", "somedir/"], "not the folder"),
        (["--threads", "99999"], "1<=x<=1024"),
        (["--model-t", "3"], "16<=x"),
        (["--seed", "-1"], "x>=0"),
        (["--t", "a,b"], "integers"),
        (["--ops", "bogus"], "unknown op"),
        (["--repeats", "0"], "repeats"),
        (["--backends", "fastest"], "unknown routed attention backend"),
        (["--backends", "flex", "--device", "cpu"], "--forward-only"),
    ],
)
def test_cli_bad_options_fail_with_one_line(args, message):
    res = CliRunner().invoke(cli, ["bench", "kernels", *args])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("Error")]) == 1


@pytest.mark.parametrize("args", [["--rho", "1/4,,1"], ["--rho", "2"], ["--rho", "x"]])
def test_model_rho_uses_the_same_rho_list(args):
    res = CliRunner().invoke(cli, ["bench", "model", *args])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "rho" in res.output

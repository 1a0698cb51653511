"""``cram bench model`` at toy sizes: the JSON schema, skipped decode cases, the ratios against
the plain hybrid with their FLOP predictions, the crossover and target logic, sizes, the memory
probe, and one-line errors for bad options."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.bench.model import (
    CASE_KEYS,
    MODELS,
    Case,
    ModelBenchConfig,
    has_step_api,
    memory_method,
    peak_mb,
    run,
)
from cramkit.gpu.bench.model_result import ModelBenchResult
from cramkit.jsonable import dumps

TINY = dict(t_values=(16,), rhos=(1.0, 0.25), repeats=1, decode_steps=2, sizes=((16, 48),), threads=1, device="cpu")


@pytest.fixture(scope="module")
def tiny_result():
    return run(ModelBenchConfig(**TINY))


def test_every_case_has_the_schema(tiny_result):
    data = json.loads(dumps(tiny_result.to_json()))
    assert data["machine"]["device"] == "cpu" and data["machine"]["torch"] == torch.__version__
    cases = data["cases"]
    for c in cases:
        assert set(CASE_KEYS) <= set(c)
        assert c["mode"] in ("train", "prefill", "decode") and c["model"] in MODELS and c["T"] == 16
        assert (c["rho"] is None) == (c["model"] != "cram")
        assert (c["width"], c["vocab"], c["layers"]) == (16, 48, 2)
    measured = [c for c in cases if c["us_per_token"] is not None]
    for c in measured:
        assert c["us_per_token"] > 0 and c["flops_per_token"] > 0
        assert c["us_per_token"] == pytest.approx(c["ms"] * 1e3 / c["tokens"])
        if c["model"] in ("cram", "cram-rho1", "none"):
            assert sum(c["flop_parts"].values()) == pytest.approx(c["flops_per_token"])
        else:
            assert c["flop_parts"] is None
    # train and prefill: every model, cram once per rho
    for mode in ("train", "prefill"):
        rows = [c for c in measured if c["mode"] == mode]
        assert sorted((c["model"], c["rho"] or 0) for c in rows) == sorted(
            [("cram", 1.0), ("cram", 0.25), ("hybrid", 0), ("cram-rho1", 0), ("none", 0), ("ssm", 0), ("transformer", 0)]
        )
    # decode: cram also at rho 0 (never attends: the step's fixed cost), through the sync-free step
    rows = [c for c in measured if c["mode"] == "decode"]
    assert sorted(c["rho"] for c in rows if c["model"] == "cram") == [0.0, 0.25, 1.0]
    for c in rows:
        assert ("uncompiled step" in c["method"]) == (c["model"] != "transformer"), c  # the suite's backend
        assert ("static-KV step" in c["method"]) == (c["model"] == "transformer"), c  # its own compiled step
        assert "eager step" not in c["method"], c
        assert c["flops_per_token"] > 0  # counted on the eager path
    # every measured row has its ratio against the plain hybrid, first, and against CRAM rho=1
    ratios = data["ratios"]
    for c in measured:
        mine = [r for r in ratios if (r["mode"], r["model"], r["rho"]) == (c["mode"], c["model"], c["rho"])]
        assert [r["baseline"] for r in mine] == ["hybrid", "cram-rho1"]
        for r in mine:
            assert r["quotient"] == pytest.approx(r["measured"] / r["predicted"])
    assert {t["target"] for t in data["targets"]} and {c["mode"] for c in data["crossover"]} == {"train", "prefill", "decode"}


def test_decode_runs_where_there_is_a_step_api_and_says_why_not_elsewhere(tiny_result):
    from cramkit.gpu.bench.model import build_models

    models = build_models(ModelBenchConfig(**TINY), "cpu")
    for c in (c for c in tiny_result.cases if c["mode"] == "decode"):
        if has_step_api(models[c["model"]]):
            assert c["us_per_token"] > 0 and c["tokens"] == 2
        else:
            assert c["us_per_token"] is None and "no step API" in c["note"]
    assert any(c["model"] == "transformer" and c["us_per_token"] for c in tiny_result.cases if c["mode"] == "decode")


def test_report_and_plot(tiny_result, tmp_path):
    text = tiny_result.report()
    for part in ("train: microseconds per token", "speed-up over the plain hybrid: measured / FLOP-predicted",
                 "speed-up over the CRAM ρ=1", "CRAM FLOPs by part", "crossover (train, measured)",
                 "crossover (train, FLOP-predicted)", "issue #9 targets", "cram rho=1/4", "width 16, vocabulary 48"):
        assert part in text
    path = tmp_path / "model.png"
    tiny_result.plot(path)
    assert path.stat().st_size > 0


def _fake(rows, flops=None):
    """Old-style rows (no size fields, "dense" for CRAM rho=1), as the JSON of earlier runs."""
    cases = [
        {"mode": "train", "model": m, "rho": rho, "T": t, "batch": 1, "us_per_token": us, "ms": us, "tokens": 1000,
         "peak_mb": None, "method": "x", "note": None, **({"flops_per_token": flops(m, rho, t)} if flops else {})}
        for m, rho, t, us in rows
    ]
    return ModelBenchResult(machine={}, config={"batch": 1}, cases=cases)


def test_crossover_is_the_smallest_t_from_which_routed_cram_beats_the_plain_hybrid_and_the_transformer():
    rows = []
    for t, cram, hybrid, tr in ((512, 5, 4, 3), (1024, 4, 5, 3.5), (2048, 3, 6, 5), (4096, 2, 8, 9)):
        rows += [("cram", 1 / 64, t, cram), ("cram", 1.0, t, cram * 3), ("hybrid", None, t, hybrid),
                 ("transformer", None, t, tr), ("none", None, t, 0.5), ("dense", None, t, 0.1)]
    cross = _fake(rows).crossover("train")
    # at 1024 the transformer is still faster; the floor and CRAM rho=1 are no rivals
    assert cross["T"] == 2048 and cross["width"] == 64
    rows[-6] = ("cram", 1 / 64, 4096, 10.0)  # loses at the largest T: no crossover
    assert _fake(rows).crossover("train")["T"] is None
    assert _fake(rows).crossover("decode")["measured"] is False


def test_ratios_put_the_flop_prediction_beside_the_measurement():
    fl = {"cram": 2e6, "hybrid": 3e6, "dense": 6e6}
    res = _fake([("cram", 1 / 64, 4096, 10.0), ("hybrid", None, 4096, 20.0), ("dense", None, 4096, 40.0)],
                flops=lambda m, rho, t: fl[m])  # fmt: skip
    got = {(r["model"], r["baseline"]): r for r in res.ratios()}
    r = got[("cram", "hybrid")]
    assert (r["measured"], r["predicted"], r["quotient"]) == pytest.approx((2.0, 1.5, 2.0 / 1.5))
    r = got[("cram", "cram-rho1")]  # the old name "dense" reads as CRAM rho=1
    assert (r["measured"], r["predicted"]) == pytest.approx((4.0, 3.0))
    assert res.crossover("train", key="flops_per_token")["T"] == 4096


def test_targets_use_the_documented_ratios():
    res = _fake([("cram", 1 / 64, 4096, 10.0), ("cram-rho1", None, 4096, 40.0), ("none", None, 4096, 9.0),
                 ("transformer", None, 4096, 27.0)])
    got = {t["target"]: t for t in res.targets()}
    speed = next(v for k, v in got.items() if k.startswith("train step T=4096: rho=1/64 >= 3x"))
    assert speed["ratio"] == pytest.approx(4.0) and speed["met"] is True
    floor = next(v for k, v in got.items() if "within 1.15x" in k)
    assert floor["ratio"] == pytest.approx(10 / 9) and floor["met"] is True
    tr = next(v for k, v in got.items() if "transformer" in k)
    assert tr["ratio"] == pytest.approx(3.0) and tr["met"] is False
    assert next(v for k, v in got.items() if k.startswith("decode"))["met"] is None


def test_peak_memory_sees_a_64_mb_buffer():
    if memory_method("cpu") is None:
        pytest.skip("this kernel cannot reset the peak RSS")
    def timed(_):
        buf = torch.ones(16 * 2**20)  # 64 MiB, touched
        assert float(buf[-1]) == 1.0
    peak = peak_mb(Case("train", "x", None, None, timed, 1, "test"), "cpu")
    assert 56 < peak < 200


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"t_values": (8,)}, "every T"), ({"rhos": (0.0,)}, "rho"), ({"models": ("gpt",)}, "unknown model"),
        ({"modes": ("serve",)}, "unknown mode"), ({"repeats": 0}, "repeats"), ({"pattern": "SS"}, "pattern"),
        ({"d_model": 30}, "multiple of 4"), ({"device": "tpu"}, "device"), ({"sizes": ((64, 1),)}, "vocab"),
        ({"sizes": ((6, 256),)}, "width"), ({"layers": 3}, "multiple of the pattern"), ({"sizes": ()}, "sizes"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(CramError, match=message):
        ModelBenchConfig(**{**TINY, **kwargs})


def test_impossible_size_is_refused_before_allocating():
    with pytest.raises(CramError, match="GiB"):
        run(ModelBenchConfig(**{**TINY, "t_values": (2**20,), "batch": 4096}))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--t", "8"], "outside [16"), (["--t", "a"], "integers"), (["--rho", "0"], "rho must lie in"),
        (["--models", "gpt"], "unknown model"), (["--modes", "x"], "unknown mode"), (["--repeats", "0"], "repeats"),
        (["--pattern", "SX"], "pattern"), (["--batch", "0"], "batch"), (["--width", "30"], "multiple of 4"),
        (["--vocab", "1"], "outside [2"), (["--layers", "3"], "multiple of the pattern"),
        (["--width", "64", "--d-model", "64"], "not both"), (["--preset", "huge"], "preset"),
    ],
)
def test_cli_bad_options_exit_2_with_one_error_line(args, message):
    res = CliRunner().invoke(cli, ["bench", "model", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert sum(line.startswith("Error") for line in res.output.splitlines()) == 1


def test_cli_json(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "model", "--t", "16", "--rho", "1/4", "--models", "cram,dense,transformer",
                                   "--modes", "train,decode", "--repeats", "1", "--decode-steps", "2", "--d-model", "16",
                                   "--vocab", "32,40", "--layers", "4", "--threads", "1", "--no-memory", "--no-flops",
                                   "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {c["model"] for c in data["cases"]} == {"cram", "cram-rho1", "transformer"}  # dense is CRAM rho=1
    assert {(c["width"], c["vocab"], c["layers"]) for c in data["cases"]} == {(16, 32, 4), (16, 40, 4)}
    assert data["config"]["blocks"] == "SASA"
    assert all(c["peak_mb"] is None and c["flops_per_token"] is None for c in data["cases"])


def test_preset_real_sizes():
    from cramkit.gpu.bench.model import preset_config

    cfg = preset_config("real", "cpu", t_values=(4096,))
    assert cfg.sizes == ((512, 4096), (512, 32768), (1024, 4096), (1024, 32768))
    assert cfg.t_values == (4096,) and cfg.layers is None  # 12 layers on a GPU only
    with pytest.raises(CramError, match="preset"):
        preset_config("huge", "cpu")

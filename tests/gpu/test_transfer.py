"""cram transfer: R(s) against ORACLE-POS, s_eff, shared/new accuracy split, the CONFLICT control
and the R(0) guard, on checkpoints whose routers have known attention counts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.run import config as C
from cramkit.gpu.run.build import build_model
from cramkit.gpu.run.checkpoint import save_checkpoint
from cramkit.gpu.transfer import TransferConfig, TransferResult, _boot, run, transfer_report
from cramkit.sim.srcd import derive_world, make_world

FAST = TransferConfig(overlaps=(0.0, 0.5, 1.0), sequences=24, chunk=8, bootstrap=100)


def _ckpt(tmp_path, router: str, budget: float = -1.0, name: str = "m.safetensors"):
    cfg = C.load_config(
        preset="quick", overrides=[f"router.name={router}", f"router.budget={budget}"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path / name
    save_checkpoint(path, model, None, {"arch": "cram-hybrid", "config": cfg.to_dict(), "step": 7})
    return path, cfg


def test_oracle_pos_router_has_zero_reduction_and_passes_the_guard(tmp_path):
    path, cfg = _ckpt(tmp_path, "oracle-pos", budget=1.0)
    r = transfer_report(path, FAST)
    scfg = cfg.srcd_config()
    for row in r["transfer"]:
        assert row["R"] == pytest.approx(0.0, abs=1e-9)  # attends exactly the query slots
        assert row["R_q"] == pytest.approx(0.0, abs=1e-9)
        assert row["R_ci"] == pytest.approx([0.0, 0.0], abs=1e-9)
        # s_eff and the shared count come from the same derived world the evaluation used
        world = derive_world(
            make_world(scfg, seed=cfg.train.world_seed), scfg, "transfer", s=row["s"], seed=2
        )
        assert row["s_eff"] == pytest.approx(world.s_eff)
        assert row["n_shared_patterns"] == math.floor(row["s"] * scfg.P + 1e-9)
        assert row["R_pred_spec"] == pytest.approx(world.s_eff * scfg.m_r / scfg.n_q)
    s0, s1 = r["transfer"][0], r["transfer"][-1]
    assert s0["n_shared_queries"] == 0 and s0["acc_shared"] is None and s0["R_pred_slots"] == 0.0
    assert r["iid"]["n_shared_queries"] == 24 * scfg.m_r  # IID: the training pool itself
    assert s1["n_new_queries"] == 0 and s1["n_shared_queries"] == 24 * scfg.m_r
    assert r["guard"]["checked"] and r["guard"]["ok"]
    assert [c["s"] for c in r["conflict"]] == [0.5, 1.0]
    assert all(c["attend_shared"] == 1.0 and c["n_shared_skipped"] == 0 for c in r["conflict"])


def test_skip_all_router_fails_the_guard(tmp_path):
    path, _ = _ckpt(tmp_path, "skip-all")
    r = transfer_report(path, FAST)
    assert all(row["R"] == pytest.approx(1.0) for row in r["transfer"])
    assert not r["guard"]["ok"]
    assert any("shares nothing" in m for m in r["guard"]["messages"])
    # every conflicting query was skipped
    assert all(c["attend_shared"] == 0.0 and c["n_shared_skipped"] > 0 for c in r["conflict"])


def test_dense_router_counts_all_positions(tmp_path):
    path, cfg = _ckpt(tmp_path, "dense")
    r = transfer_report(
        path, TransferConfig(overlaps=(0.0,), sequences=8, chunk=4, bootstrap=0, conflict=False)
    )
    scfg = cfg.srcd_config()
    assert r["transfer"][0]["R"] == pytest.approx(1.0 - scfg.n / scfg.n_q)
    assert r["transfer"][0]["R_q"] == pytest.approx(0.0)
    assert not r["guard"]["ok"] and "more than ORACLE-POS" in r["guard"]["messages"][0]


def test_guard_unchecked_without_zero_overlap(tmp_path):
    path, _ = _ckpt(tmp_path, "oracle-pos", budget=1.0)
    r = transfer_report(
        path, TransferConfig(overlaps=(0.5,), sequences=8, chunk=4, bootstrap=0, conflict=False)
    )
    assert r["guard"]["checked"] is False and r["guard"]["ok"] is None


def test_block_bootstrap_ratio():
    num = np.array([1.0, 3.0, 2.0, 6.0])
    den = np.array([2.0, 4.0, 2.0, 8.0])
    point, ci = _boot(num, den, 500, 0)
    assert point == pytest.approx(12 / 16)
    assert ci[0] <= point <= ci[1] and ci[0] >= 0.5 and ci[1] <= 1.0


def test_config_and_checkpoint_errors(tmp_path):
    with pytest.raises(CramError, match="overlaps"):
        TransferConfig(overlaps=(0.5, 1.5))
    with pytest.raises(CramError, match="repeat"):
        TransferConfig(overlaps=(0.5, 0.5))
    with pytest.raises(CramError, match="does not exist"):
        transfer_report(tmp_path / "none.safetensors", FAST)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CramError, match="corrupt"):
        transfer_report(tmp_path / "junk.safetensors", FAST)


def test_cli_json_text_plot_and_bad_input(tmp_path):
    path, _ = _ckpt(tmp_path, "skip-all")
    plot = tmp_path / "t.png"
    base = ["transfer", str(path), "--overlap", "0,1", "--sequences", "8", "--chunk", "4", "--bootstrap", "50",
            "--quiet"]  # fmt: skip
    res = CliRunner().invoke(cli, [*base, "--json", "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert [row["s"] for row in r["transfer"]] == [0.0, 1.0] and r["guard"]["ok"] is False
    assert plot.stat().st_size > 1000
    text = CliRunner().invoke(cli, base)
    assert text.exit_code == 0 and "FAILED" in text.output and "CONFLICT(s)" in text.output
    bad = CliRunner().invoke(cli, ["transfer", str(path), "--overlap", "0,abc", "--quiet"])
    assert bad.exit_code == 2 and "comma-separated" in bad.output
    bad = CliRunner().invoke(cli, ["transfer", str(path), "--overlap", "2", "--quiet"])
    assert bad.exit_code == 2 and "[0, 1]" in bad.output and "Traceback" not in bad.output


def test_library_call_returns_a_result(tmp_path):
    """The command contract: run(TransferConfig) -> a Result (JSON, text, plot) with progress
    reported through the one progress type; transfer_report is its JSON."""
    path, _ = _ckpt(tmp_path, "oracle-pos", budget=1.0)
    cfg = TransferConfig(checkpoint=path, overlaps=(0.0, 1.0), sequences=8, chunk=4, bootstrap=0)
    seen = []
    r = run(cfg, lambda stage, done, total: seen.append((stage, done, total)))
    assert isinstance(r, TransferResult) and r.ok
    assert [s for s, d, t in seen if d == t] == ["IID", "TRANSFER(0)", "TRANSFER(1)", "CONFLICT(1)"]
    j = r.to_json()
    assert list(j) == ["checkpoint", "router", "step", "srcd", "cram_layers", "sequences", "reference", "iid",
                       "transfer", "conflict", "guard"]  # fmt: skip
    assert j == transfer_report(path, cfg)
    assert "guard R(0) ~ 0 with accuracy kept: OK" in r.report()
    r.plot(tmp_path / "t.pdf")
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(CramError, match="name the SRCD checkpoint"):
        run(TransferConfig())


def test_plot_to_a_folder_is_refused(tmp_path):
    path, _ = _ckpt(tmp_path, "skip-all")
    (tmp_path / "existing").mkdir()
    for target in (str(tmp_path / "newdir") + "/", str(tmp_path / "existing")):
        res = CliRunner().invoke(cli, ["transfer", str(path), "--overlap", "0", "--sequences", "8", "--quiet",
                                       "--plot", target])  # fmt: skip
        assert res.exit_code == 2 and "--plot" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "newdir").exists() and list((tmp_path / "existing").iterdir()) == []

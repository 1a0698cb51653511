"""``cram reproduce``'s orchestration with injected steps (fast): the cache, resuming after an
interruption, --only, the report files, and that every number of report.md comes from report.json.
The training-run resume goes through the real ``cram train`` at a tiny size."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from cramkit.errors import CramError
from cramkit.gpu.reproduce import ReproduceConfig, run
from cramkit.gpu.reproduce.claims import CLAIM_IDS
from cramkit.gpu.reproduce.steps import STEPS, Step

# ------------------------------------------------------------------------------------------------
# synthetic measured dicts, shaped like the adapters' output
# ------------------------------------------------------------------------------------------------


def _eval_row(router, acc, rho_q):
    return {"seed": 0, "router": router, "acc": acc, "acc_r": 1.0, "acc_e": acc, "rho_q": rho_q, "rho_all": rho_q / 8,
            "phi": 0.42, "phi_model": 1.058, "E_rec": 0.0, "rec_total": 6144, "epi_total": 2048, "n_sequences": 1024,
            "floor_rho_q": 0.25}  # fmt: skip


def fake_measured(cram_acc: float = 1.0) -> dict[str, dict]:
    return {
        "static-bound": {"criteria": {"P1": True, "P2": True, "P3": True, "P4": True, "P5": True}, "controls_pass": True,
                         "controls_matched": 5, "controls_total": 5, "static_held": 12, "static_passed": 12,
                         "example": {"router": "RAND_0.5", "slope": 0.05005, "ci": [0.04978, 0.05031], "bound": 0.05035},
                         "stream": {"K": 2, "cr_cum": 128.0, "oracle_cum": 260000.0, "T": 10000, "streams": 20}, "seeds": 20},
        "accuracy-budget": {"rows": {"iid": [_eval_row("cram", cram_acc, 0.25), _eval_row("random", 0.815, 0.246)],
                                     "fresh": [_eval_row("cram", 1.0, 1.0), _eval_row("random", 0.25, 0.246)]},
                            "seeds": [0], "baselines": ["random"], "eval_sequences": 1024},
        "attention-fall": {"curves": [{"seed": 0, "step": [0, 100, 1500], "E_rec": [1.0, 0.5, 0.0], "rho_all": [1.0, 0.5, 0.03125]}],
                           "reduction_rho_all": [32.0], "reduction_rho_q": [4.0], "transition_step": [137.9],
                           "task_ratio": 32.0, "task_ratio_q": 4.0,
                           "fit": {"t_c": 138.2, "W": 0.29, "W_model": "M6", "delta_aic_logistic_vs_power": 25.3,
                                   "sharp": True, "reason": "sharp"}, "seeds": [0]},
        "gamma": {"best_model": "M6", "primary_model": "M1", "gamma": 99.9, "gamma_ci": [3.2, 100.0], "gamma_at_bound": True,
                  "resamples": 300, "sharp": True, "human": [{"dataset": "a", "a": 0.093}, {"dataset": "b", "a": 0.167}],
                  "alpha": 1.0, "predicted_gamma": None, "seeds": [0]},
        "transfer": {"rows": [{"s": 0.0, "s_eff": 0.0, "R": 0.0, "R_ci": [0.0, 0.0], "R_pred_slots": 0.0, "acc": 1.0},
                              {"s": 0.5, "s_eff": 0.42, "R": 0.343, "R_ci": [0.334, 0.354], "R_pred_slots": 0.343, "acc": 1.0}],
                     "guard": {"ok": True, "R0": 0.0, "R0_ci": [0.0, 0.0], "acc0": 1.0, "acc_iid": 1.0},
                     "conflict": [{"s": 0.5, "acc_shared": 0.0}], "iid_R": 0.75, "sequences": 512, "splits": 5, "seeds": [0]},
        "redundancy": {"gpt2": {"measured": False, "reason": "no local GPT-2"},
                       "text_model": {"trajectory": [{"step": 100, "headline": 0.657, "headline_ci": [0.624, 0.688],
                                                      "mean_ablation_dnll": 0.009, "budget_binding": False}],
                                      "trend": -0.019, "bpb": 3.97}, "seeds": [0]},
        "compute": {"kernel": {"T": 4096, "rho": 0.015625, "ms": 40.4, "baseline_ms": 728.8, "speedup": 18.02},
                    "model_step": {"T": 2048, "rho": 0.015625, "ms": 165.3, "baseline_ms": 309.7, "speedup": 1.87},
                    "machine": {}, "bench_model": None, "bench_model_reason": "not measured: needs cram bench model"},
    }  # fmt: skip


class FakeSteps:
    """A step table whose adapters return :func:`fake_measured` and count their calls; ``fail``
    names a claim whose adapter raises once, after reporting some progress (an interruption)."""

    def __init__(self, fail: str | None = None, cram_acc: float = 1.0, version: int = 0):
        self.calls: list[str] = []
        self.fail, self.cram_acc, self.version = fail, cram_acc, version

    def table(self) -> dict[str, Step]:
        def make(cid):
            def adapter(ctx):
                ctx.tick(0, 2)
                if self.fail == cid:
                    self.fail = None
                    raise KeyboardInterrupt  # killed mid-step
                self.calls.append(cid)
                ctx.tick(2, 2)
                return fake_measured(self.cram_acc)[cid]

            return Step(cid, lambda scale, gpt2: {"v": self.version, "acc": self.cram_acc if cid == "accuracy-budget" else 0},
                        adapter)  # fmt: skip

        return {cid: make(cid) for cid in CLAIM_IDS}


@pytest.fixture(autouse=True)
def no_png(request, monkeypatch):
    """Skip drawing report.png (matplotlib costs seconds on a loaded machine) except where a test
    asks for it with the ``png`` marker name in its own name."""
    if "png" not in request.node.name:
        from cramkit.gpu.reproduce.report import ReproduceResult

        monkeypatch.setattr(ReproduceResult, "plot", lambda self, path: Path(path).write_bytes(b"png"))


def _cfg(tmp_path, **kw) -> ReproduceConfig:
    return ReproduceConfig(scale="tiny", out=str(tmp_path / "repro"), **kw)


# ------------------------------------------------------------------------------------------------


def test_every_claim_has_a_step():
    assert set(STEPS) == set(CLAIM_IDS)


def test_a_run_writes_the_report_png_and_a_second_run_does_no_work(tmp_path):
    fake = FakeSteps()
    seen = []
    first = run(_cfg(tmp_path), lambda stage, d, t: seen.append(stage), steps=fake.table())
    assert fake.calls == list(CLAIM_IDS)
    assert set(seen) == set(CLAIM_IDS)  # one progress stage per step
    out = tmp_path / "repro"
    for name in ("report.md", "report.json", "report.png", *(f"steps/{c}.json" for c in CLAIM_IDS)):
        assert (out / name).is_file(), name
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    second = run(_cfg(tmp_path), steps=fake.table())
    assert fake.calls == list(CLAIM_IDS), "the cached steps ran again"
    assert [o.cached for o in second.outcomes] == [True] * len(CLAIM_IDS)
    assert [o.verdict for o in second.outcomes] == [o.verdict for o in first.outcomes]


def test_verdicts_of_the_synthetic_run(tmp_path):
    res = run(_cfg(tmp_path), steps=FakeSteps().table())
    got = {o.claim.id: o.verdict.verdict for o in res.outcomes}
    assert got == {
        "static-bound": "holds",
        "accuracy-budget": "holds by construction of the task",
        "attention-fall": "holds by construction of the task",
        "gamma": "fails",
        "transfer": "holds by construction of the task",
        "redundancy": "not measured",
        "compute": "holds",
    }
    assert res.ok
    assert json.loads((tmp_path / "repro" / "report.json").read_text())["claims"][1]["verdict"] == got["accuracy-budget"]


def test_the_verdict_changes_when_the_numbers_do(tmp_path):
    good = run(_cfg(tmp_path), steps=FakeSteps(cram_acc=1.0).table())
    fake = FakeSteps(cram_acc=0.8)
    bad = run(_cfg(tmp_path), steps=fake.table())
    assert fake.calls == ["accuracy-budget"], "only the step whose settings changed reruns"
    pick = lambda r: next(o for o in r.outcomes if o.claim.id == "accuracy-budget").verdict.verdict  # noqa: E731
    assert (pick(good), pick(bad)) == ("holds by construction of the task", "fails")


def test_a_changed_setting_reruns_the_steps(tmp_path):
    run(_cfg(tmp_path), steps=FakeSteps(version=0).table())
    fake = FakeSteps(version=1)
    run(_cfg(tmp_path), steps=fake.table())
    assert fake.calls == list(CLAIM_IDS)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    fake = FakeSteps(fail="transfer")
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tmp_path), steps=fake.table())
    done = fake.calls[:]
    assert done == list(CLAIM_IDS[: CLAIM_IDS.index("transfer")])
    assert not (tmp_path / "repro" / "steps" / "transfer.json").exists()
    run(_cfg(tmp_path), steps=fake.table())
    assert fake.calls[len(done):] == list(CLAIM_IDS[CLAIM_IDS.index("transfer"):])


def test_a_corrupt_cache_file_is_rerun(tmp_path):
    run(_cfg(tmp_path), steps=FakeSteps().table())
    (tmp_path / "repro" / "steps" / "gamma.json").write_text('{"key": ')
    fake = FakeSteps()
    run(_cfg(tmp_path), steps=fake.table())
    assert fake.calls == ["gamma"]


def test_only_runs_the_named_claims_and_keeps_the_rest_from_the_cache(tmp_path):
    fake = FakeSteps()
    res = run(_cfg(tmp_path, only=("gamma", "compute")), steps=fake.table())
    assert fake.calls == ["gamma", "compute"]
    verdicts = {o.claim.id: o.verdict for o in res.outcomes}
    assert verdicts["static-bound"].verdict == "not measured" and "not run" in verdicts["static-bound"].reason
    run(_cfg(tmp_path, only=("static-bound",)), steps=fake.table())
    res = run(_cfg(tmp_path, only=("transfer",)), steps=fake.table())
    assert fake.calls == ["gamma", "compute", "static-bound", "transfer"]
    measured = {o.claim.id for o in res.outcomes if o.measured is not None}
    assert measured == {"gamma", "compute", "static-bound", "transfer"}


def test_a_second_reproduction_into_the_same_folder_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "repro"
    out.mkdir()
    with open(out / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process holds it
        with pytest.raises(CramError, match="another cram reproduce"):
            run(_cfg(tmp_path), steps=FakeSteps().table())
    run(_cfg(tmp_path), steps=FakeSteps().table())  # released: runs


@pytest.mark.parametrize("only", [("nope",), ("gamma", "gamma")])
def test_bad_only_is_one_error(tmp_path, only):
    with pytest.raises(CramError):
        _cfg(tmp_path, only=only)


def test_unknown_scale_is_one_error(tmp_path):
    with pytest.raises(CramError, match="quick, full"):
        ReproduceConfig(scale="huge", out=str(tmp_path))


# ------------------------------------------------------------------------------------------------
# every number in report.md's table comes from report.json
# ------------------------------------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])[-−]?\d+(?:\.\d+)?(?![\w])(?!\.\d)")
#: string fields of report.json that are quoted text (the paper's claims, definitions, commands)
TEXT_KEYS = {"paper", "definition", "commands", "command"}


def json_numbers(obj, key: str | None = None, out: list[float] | None = None) -> list[float]:
    """Every number value in ``obj``, plus the numbers written inside its quoted-text fields."""
    out = [] if out is None else out
    if isinstance(obj, bool) or obj is None:
        return out
    if isinstance(obj, (int, float)):
        out.append(float(obj))
    elif isinstance(obj, str):
        if key in TEXT_KEYS:
            out.extend(float(x.replace("−", "-")) for x in NUMBER.findall(obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            json_numbers(v, k, out)
    elif isinstance(obj, list):
        for v in obj:
            json_numbers(v, key, out)
    return out


def numbers_not_in_json(markdown: str, report: dict) -> list[str]:
    """The numbers of the markdown table rows that no number of ``report`` rounds to."""
    values = json_numbers(report)
    missing = []
    for line in markdown.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        for text in NUMBER.findall(line):
            x = float(text.replace("−", "-"))
            decimals = len(text.split(".")[1]) if "." in text else 0
            tol = 0.5 * 10**-decimals * (1 + 1e-9) + 1e-12
            if not any(abs(y - x) <= tol or abs(abs(y) - abs(x)) <= tol for y in values if math.isfinite(y)):
                missing.append(text)
    return missing


def test_every_number_in_report_md_comes_from_report_json(tmp_path):
    run(_cfg(tmp_path), steps=FakeSteps().table())
    md = (tmp_path / "repro" / "report.md").read_text()
    report = json.loads((tmp_path / "repro" / "report.json").read_text())
    assert md.count("\n| ") >= len(CLAIM_IDS) + 1
    assert numbers_not_in_json(md, report) == []


def test_the_number_check_catches_a_typed_number(tmp_path):
    run(_cfg(tmp_path), steps=FakeSteps().table())
    md = (tmp_path / "repro" / "report.md").read_text()
    report = json.loads((tmp_path / "repro" / "report.json").read_text())
    doctored = md.replace("acc 1.000 [", "acc 0.987 [", 1)
    assert doctored != md and numbers_not_in_json(doctored, report) == ["0.987"]


RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@pytest.mark.skipif(not (RESULTS / "report.json").is_file(), reason="docs/results/README.md is not generated by cram reproduce yet")
def test_docs_results_readme_numbers_come_from_its_report_json():
    md = (RESULTS / "README.md").read_text(encoding="utf-8")
    assert "cram reproduce" in md
    assert numbers_not_in_json(md, json.loads((RESULTS / "report.json").read_text(encoding="utf-8"))) == []


# ------------------------------------------------------------------------------------------------
# training runs: resumed, reused, or restarted on a changed configuration (real cram train, tiny)
# ------------------------------------------------------------------------------------------------


def test_ensure_run_resumes_an_interrupted_training_and_reuses_a_finished_one(tmp_path, monkeypatch):
    from cramkit.gpu.reproduce.scales import SCALES
    from cramkit.gpu.reproduce.steps import ensure_run, run_config
    from cramkit.gpu.run import train as T

    small = ("train.steps=8", "train.eval_every=4", "train.eval_log_points=0", "train.eval_sequences=8",
             "train.batch_size=4", "train.ckpt_every=4", "train.warmup_steps=1")  # fmt: skip
    cfg = run_config(SCALES["tiny"], router="cram", sets=small)
    run_dir = tmp_path / "runs" / "cram-seed0"
    T.train(cfg, run_dir, max_steps=4)  # "killed" after the checkpoint at step 4
    assert not (run_dir / "summary.json").exists()
    calls = []
    real = T.train

    def spy(*args, **kw):
        calls.append(kw.get("resume"))
        return real(*args, **kw)

    monkeypatch.setattr(T, "train", spy)
    ticks = []
    first = ensure_run(run_dir, cfg, lambda d, t: ticks.append((d, t)))
    assert calls == [run_dir], "it did not resume from the checkpoint"
    assert first["summary"]["step"] == cfg.train.steps
    assert [m["step"] for m in first["metrics"]] == [0, 4, 8]  # the evaluations before the kill are kept
    assert ticks[-1] == (cfg.train.steps, cfg.train.steps)
    again = ensure_run(run_dir, cfg, lambda d, t: None)
    assert calls == [run_dir], "a finished run was trained again"
    assert again["summary"] == first["summary"]
    other = run_config(SCALES["tiny"], router="random", sets=small)
    ensure_run(run_dir, other, lambda d, t: None)
    assert calls == [run_dir, None], "a run of another configuration was resumed instead of restarted"
    assert 'name = "random"' in (run_dir / "config.toml").read_text()


@pytest.mark.slow
def test_the_real_steps_at_the_tiny_scale_end_to_end_with_the_png(tmp_path, monkeypatch):
    """Every real adapter once (about a minute on 2 cores): cram train, eval, fit-gamma, transfer,
    bound, bench and redundancy at toy sizes; then a rerun is all cache."""
    from click.testing import CliRunner

    from cramkit.cli.main import cli

    monkeypatch.delenv("CRAM_GPT2_DIR", raising=False)
    out = tmp_path / "tiny"
    res = CliRunner().invoke(cli, ["reproduce", "--scale", "tiny", "--out", str(out), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [c["id"] for c in data["claims"]] == list(CLAIM_IDS)
    assert all(c["measured"] is not None for c in data["claims"])
    assert {c["id"]: c["verdict"] for c in data["claims"]}["redundancy"] == "not measured"
    assert numbers_not_in_json((out / "report.md").read_text(), data) == []
    again = CliRunner().invoke(cli, ["reproduce", "--scale", "tiny", "--out", str(out), "--json", "--quiet"])
    assert all(c["cached"] for c in json.loads(again.output)["claims"])


@pytest.mark.parametrize("name", ["tiny", "quick", "full"])
def test_every_scale_builds_valid_library_configs(name, tmp_path):
    """The full scale is not run in the tests: at least every config it would hand the library
    must validate (train, transfer, bound, redundancy), and bench's keywords must be known."""
    import inspect

    from cramkit.gpu.bench import bench_kernels
    from cramkit.gpu.redundancy import RedundancyConfig
    from cramkit.gpu.reproduce.scales import SCALES
    from cramkit.gpu.reproduce.steps import run_config
    from cramkit.gpu.transfer import TransferConfig
    from cramkit.sim.boundcheck import BoundConfig

    scale = SCALES[name]
    for router in ("cram", *scale.baselines):
        for seed in scale.seeds:
            cfg = run_config(scale, router=router, seed=seed)
            assert (cfg.router.name, cfg.train.seed, cfg.train.world_seed) == (router, seed, seed)
    assert run_config(scale).train.steps == {"tiny": 30, "quick": 1500, "full": 20000}[name]
    text = run_config(scale, preset="text", sets=(*scale.text_sets, f'text.data="{tmp_path}/x.txt"'))
    assert text.task == "text"
    TransferConfig(**scale.transfer)
    BoundConfig(**scale.bound)
    RedundancyConfig(**scale.redundancy)
    assert set(scale.bench) <= set(inspect.signature(bench_kernels).parameters)
    from cramkit.gpu.bench.model import ModelBenchConfig

    ModelBenchConfig(**scale.bench_model)
    real = ModelBenchConfig(**scale.bench_model_real)
    assert "hybrid" in real.models and "hybrid" in ModelBenchConfig(**scale.bench_model).models
    if name != "tiny":
        assert min(w for w, _ in real.sizes) >= 512  # a real width
    assert set(scale.fit["models"]) <= {f"M{i}" for i in range(1, 9)} and scale.fit["resamples"] >= 0

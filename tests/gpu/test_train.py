"""Training: strict configs, the metrics log, checkpoints, bit-identical resume, the NaN stop,
the CLI, the byte-level text task."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from cramkit.cli.main import cli
from cramkit.errors import CramError
from cramkit.gpu.run import config as C
from cramkit.gpu.run.checkpoint import read_checkpoint
from cramkit.gpu.run.schedule import lr_at
from cramkit.gpu.run.train import train
from cramkit.gpu.run.trainer import TrainingDiverged

TINY = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16",
        "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16", "train.batch_size=8",
        "train.eval_sequences=32", "train.warmup_steps=2", "train.threads=1", "train.eval_log_points=0"]  # fmt: skip
REQUIRED = {"step", "exposures", "loss", "acc_r", "acc_e", "acc", "rho_q", "rho_all", "phi",
            "train_attn_frac", "distill_err", "router_precision", "router_recall", "wall_s",
            "rec_attended", "rec_total", "epi_attended", "epi_total", "lr", "cum_lr"}  # fmt: skip


def tiny(*extra: str) -> C.RunConfig:
    return C.load_config(None, [*TINY, *extra])


# --- configuration -----------------------------------------------------------------------------


def test_presets_load_and_default_is_quick():
    assert {"quick", "paper", "text"} <= set(C.preset_names())
    assert C.load_config() == C.load_config(preset="quick")
    assert C.load_config(preset="paper").train.steps > C.load_config().train.steps


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.stepz=3", "unknown config key"),
        ("trian.steps=3", "unknown config key"),
        ("train.steps=1.5", "must be an integer"),
        ("train.steps=abc", "must be an integer"),
        ("router.name=oracle", "router.name must be one of"),
        ("train.lr=true", "must be a number"),
        ("srcd.n=20", "> n = 20"),
        ("nokey", "key=value"),
    ],
)
def test_bad_settings_are_clear_errors(override, fragment):
    with pytest.raises(CramError, match=fragment):
        C.load_config(None, [override])


def test_toml_file_unknown_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nsteps = 5\nbogus = 1\n")
    with pytest.raises(CramError, match="train.bogus"):
        C.load_config(p)
    p.write_text("[train\n")
    with pytest.raises(CramError, match="not valid TOML"):
        C.load_config(p)


def test_config_round_trips_through_toml(tmp_path):
    cfg = tiny("router.name=random", "train.lr=0.001")
    p = tmp_path / "c.toml"
    p.write_text(cfg.to_toml())
    assert C.load_config(p) == cfg


def test_lr_schedule_warmup_then_cosine_floor():
    t = C.TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_frac=0.1)
    assert lr_at(t, 0) == pytest.approx(0.1)
    assert lr_at(t, 9) == pytest.approx(1.0)
    assert lr_at(t, 99) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(t, s) >= lr_at(t, s + 1) for s in range(10, 99))


def test_eval_steps_add_log_spaced_points():
    from cramkit.gpu.run.schedule import eval_steps

    t = C.TrainConfig(steps=1000, eval_every=250, eval_log_points=4)
    assert eval_steps(t) == {1, 10, 100, 250, 500, 750, 1000}
    assert eval_steps(C.TrainConfig(steps=7, eval_every=5)) == {5, 7}


# --- a run -------------------------------------------------------------------------------------


def test_run_writes_log_config_checkpoints(tmp_path):
    cfg = tiny("train.steps=6", "train.eval_every=3", "train.ckpt_every=3")
    res = train(cfg, tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 3, 6]
    assert REQUIRED <= set(lines[-1])
    last = lines[-1]
    assert last["exposures"] == pytest.approx(6 * 8 * 6 / 64)  # step·B·m_r/P
    assert last["rec_total"] + last["epi_total"] == 32 * 8
    assert last["cum_lr"] == pytest.approx(sum(lr_at(cfg.train, s) for s in range(6)))
    assert C.load_config(tmp_path / "r" / "config.toml") == cfg
    for name in ("last.safetensors", "checkpoints/step_0000003.safetensors", "checkpoints/step_0000006.safetensors"):
        _, meta = read_checkpoint(tmp_path / "r" / name)
        assert meta["config"] == cfg.to_dict() and meta["world_seed"] == 0
        assert meta["srcd"]["n"] == cfg.srcd.n and "code_version" in meta
    _, meta = read_checkpoint(tmp_path / "r")
    assert meta["step"] == 6 and len(meta["metrics"]) == 3
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["step"] == 6
    assert res.summary["acc"] == last["acc"]


def _strip(ms):
    return [{k: v for k, v in m.items() if k != "wall_s"} for m in ms]


@pytest.mark.parametrize("router", ["cram", "random"])
def test_resume_is_bit_identical(tmp_path, router):
    cfg = tiny("train.steps=8", "train.eval_every=2", "train.ckpt_every=4", f"router.name={router}",
               "router.explore=0.2")  # fmt: skip
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", max_steps=5)  # checkpoint at 4 and at the stop (5)
    assert part.stopped_early and part.step == 5
    assert not (tmp_path / "part" / "summary.json").exists()
    # the run is killed after its last checkpoint: resuming from step 5 must not notice
    resumed = train(None, None, resume=tmp_path / "part")
    assert _strip(resumed.metrics) == _strip(full.metrics)
    on_disk = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert _strip(on_disk) == _strip(full.metrics)
    a, _ = read_checkpoint(tmp_path / "full")
    b, _ = read_checkpoint(tmp_path / "part")
    for k in a:
        if k.startswith(("model/", "optim/")):
            assert torch.equal(a[k], b[k]), k


def test_resume_from_an_older_checkpoint_truncates_the_log(tmp_path):
    cfg = tiny("train.steps=6", "train.eval_every=2", "train.ckpt_every=2")
    full = train(cfg, tmp_path / "r")
    resumed = train(None, None, resume=tmp_path / "r" / "checkpoints" / "step_0000002.safetensors")
    assert _strip(resumed.metrics) == _strip(full.metrics)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import cramkit.gpu.run.train as T

    cfg = tiny("train.steps=6", "train.eval_every=2", "train.ckpt_every=2")
    orig = T._Trainer.forward

    def poisoned(self, step, gen):
        out, frac, batch = orig(self, step, gen)
        if step == 3:
            out.loss = out.loss * float("nan")
        return out, frac, batch

    monkeypatch.setattr(T._Trainer, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="step 4.*last good checkpoint"):
        train(cfg, tmp_path / "r")
    _, meta = read_checkpoint(tmp_path / "r")
    assert meta["step"] == 2
    t, _ = read_checkpoint(tmp_path / "r")
    assert all(torch.isfinite(v).all() for k, v in t.items() if k.startswith("model/"))


@pytest.mark.parametrize("router", ["dense", "none", "skip-all", "stride", "oracle-pos", "learned-static"])
def test_every_router_trains(tmp_path, router):
    res = train(tiny("train.steps=4", "train.eval_every=4", f"router.name={router}"), None)
    m = res.metrics[-1]
    assert math.isfinite(m["loss"])
    if router in ("none", "skip-all"):
        assert m["rho_q"] == 0 and m["rho_all"] == 0
    if router == "dense":
        assert m["rho_q"] == 1 and m["rho_all"] == 1 and m["phi"] == pytest.approx(1)


def test_learned_static_router_is_frozen_after_its_phase(tmp_path):
    cfg = tiny("train.steps=6", "train.eval_every=3", "train.ckpt_every=3", "router.name=learned-static",
               "router.static_frac=0.5", "train.keep_checkpoints=true")  # fmt: skip
    train(cfg, tmp_path / "r")
    a, _ = read_checkpoint(tmp_path / "r" / "checkpoints" / "step_0000003.safetensors")
    b, _ = read_checkpoint(tmp_path / "r" / "checkpoints" / "step_0000006.safetensors")
    router_keys = [k for k in a if k.startswith("model/") and ".router." in k]
    assert router_keys and all(torch.equal(a[k], b[k]) for k in router_keys)
    moved = [k for k in a if k.startswith("model/") and ".memory." in k]
    assert any(not torch.equal(a[k], b[k]) for k in moved)


def test_router_open_steps_hold_the_router_then_train_it(tmp_path):
    """router.open_steps = 3: the router's parameters after steps 1, 2 and 3 are its initial ones
    (held at every update so far), the rest of the model moves; from step 4 it trains."""
    cfg = tiny("train.steps=5", "train.eval_every=5", "train.ckpt_every=1", "router.target=gain",
               "router.open_steps=3", "train.keep_checkpoints=true")  # fmt: skip
    train(cfg, tmp_path / "r")
    ck = [read_checkpoint(tmp_path / "r" / "checkpoints" / f"step_{k:07d}.safetensors")[0] for k in range(1, 5)]
    router_keys = [k for k in ck[0] if k.startswith("model/") and ".router." in k]
    assert router_keys
    assert all(torch.equal(ck[0][k], ck[i][k]) for k in router_keys for i in (1, 2))
    assert any(not torch.equal(ck[2][k], ck[3][k]) for k in router_keys)
    moved = [k for k in ck[0] if k.startswith("model/") and ".memory." in k]
    assert any(not torch.equal(ck[0][k], ck[1][k]) for k in moved)


# --- CLI ---------------------------------------------------------------------------------------


def _sets(*extra: str) -> list[str]:
    out = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def test_cli_train_json_and_resume(tmp_path):
    r = CliRunner().invoke(cli, ["train", *_sets("train.steps=4", "train.eval_every=2"), "--out", str(tmp_path / "r"),
                                 "--quiet", "--json", "--max-steps", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "r"), "--quiet", "--json",
                                 "--plot", str(tmp_path / "u.png")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "u.png").stat().st_size > 1000
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and summary["out"] == str(tmp_path / "r")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "train.nope=1"], "unknown config key"),
        (["--set", "train.steps=x"], "must be an integer"),
        (["--resume", "/nonexistent/run"], "does not exist"),
        (["--task", "text"], "--data"),
        (["--preset", "nosuch"], "unknown preset"),
    ],
)
def test_cli_train_bad_input_is_one_line(args, fragment):
    r = CliRunner().invoke(cli, ["train", *args, "--quiet"])
    assert r.exit_code != 0
    assert fragment in r.output
    assert "Traceback" not in r.output


def test_text_task_trains_and_checkpoints(tiny_text_run):
    _, meta = read_checkpoint(tiny_text_run / "r")
    assert meta["arch"] == "gpt-bytes" and meta["config"]["task"] == "text"
    assert meta["metrics"][-1]["bpb"] > 0


def test_blow_up_inside_the_model_is_reported_as_divergence(tmp_path):
    # With a huge learning rate the weights blow up after one step; the ops' input checks fail
    # in the next forward pass, before any loss exists. That must read as divergence.
    cfg = tiny("train.steps=4", "train.eval_every=1", "train.lr=1e12", "train.grad_clip=0")
    with pytest.raises(TrainingDiverged, match="training stopped"):
        train(cfg, tmp_path / "r")



def test_bad_data_after_a_step_is_not_reported_as_divergence(tmp_path, monkeypatch):
    # Only NaN reaching an op inside the model reads as divergence; a CramError from the data (a
    # corrupt corpus noticed at step 3, say) keeps its own message and its own (absent) hint.
    from cramkit.gpu.tasks.srcd import SRCDTask

    real = SRCDTask.batch

    def batch(self, step, *args, **kwargs):
        if step == 2:
            raise CramError("corpus.bin: checksum mismatch")
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(SRCDTask, "batch", batch)
    with pytest.raises(CramError, match="^corpus.bin: checksum mismatch$") as err:
        train(tiny("train.steps=4", "train.eval_every=2"), tmp_path / "r")
    assert not isinstance(err.value, TrainingDiverged)

def _rewrite_meta(path, edit):
    """Re-sign ``path`` with edited metadata (an atomic replace: last.safetensors is a hard link to
    the kept checkpoint, which stays as it was)."""
    from cramkit.gpu.run.checkpoint import write_checkpoint_file

    tensors, meta = read_checkpoint(path)
    edit(meta)
    write_checkpoint_file(path, tensors, meta)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda m: m.update(step="abc"), "corrupt training metadata"),
        (lambda m: m.pop("config"), "corrupt training metadata"),
        (lambda m: m.update(metrics=5), "corrupt training metadata"),
        (lambda m: m.update(tied={"x": "nope"}), "corrupt metadata"),
        (lambda m: m["config"]["model"].update(d_model=16), "differs from the run .* in model.d_model"),
    ],
)
def test_resume_of_a_tampered_checkpoint_is_one_clear_error(tmp_path, edit, fragment):
    train(tiny("train.steps=2", "train.eval_every=2"), tmp_path / "r")
    last = tmp_path / "r" / "last.safetensors"
    _rewrite_meta(last, edit)
    with pytest.raises(CramError, match=fragment):
        train(None, None, resume=last)


def test_resume_of_a_checkpoint_whose_config_does_not_fit_its_weights(tmp_path):
    train(tiny("train.steps=2", "train.eval_every=2"), tmp_path / "r")
    last = tmp_path / "r" / "last.safetensors"
    _rewrite_meta(last, lambda m: m["config"]["model"].update(d_model=16))
    (tmp_path / "r" / "config.toml").unlink()  # nothing else to compare with: the weights refuse it
    with pytest.raises(CramError, match="does not match its own config"):
        train(None, None, resume=last)


def test_resume_of_a_folder_skips_a_tampered_last_checkpoint(tmp_path, capsys):
    full = train(tiny("train.steps=4", "train.eval_every=2", "train.ckpt_every=2"), tmp_path / "full")
    train(tiny("train.steps=4", "train.eval_every=2", "train.ckpt_every=2"), tmp_path / "r", max_steps=3)
    _rewrite_meta(tmp_path / "r" / "last.safetensors", lambda m: m.update(step="abc"))
    resumed = train(None, None, resume=tmp_path / "r")  # from the kept step 2, with a warning
    assert "skipping" in capsys.readouterr().err
    assert _strip(resumed.metrics) == _strip(full.metrics)


# --- reliability leftovers (issue #12) ---------------------------------------------------------


def test_resume_with_max_steps_behind_the_run_is_refused(tmp_path):
    cfg = tiny("train.steps=6", "train.eval_every=2", "train.ckpt_every=2")
    train(cfg, tmp_path / "r", max_steps=4)
    with pytest.raises(CramError, match="already at step 4; --max-steps 2 is behind it"):
        train(None, None, resume=tmp_path / "r", max_steps=2)
    assert train(None, None, resume=tmp_path / "r", max_steps=4).step == 4  # at the step: nothing to do


def test_absurd_eval_log_points_are_refused_and_eval_steps_are_tested_one_by_one():
    from cramkit.gpu.run.schedule import eval_steps, is_eval_step, log_eval_steps

    with pytest.raises(CramError, match="eval_log_points must be in"):
        C.load_config(None, ["train.eval_log_points=1000000000000"])
    t = C.TrainConfig(steps=1000, eval_every=250, eval_log_points=4)
    logs = log_eval_steps(t)
    assert {s for s in range(1, 1001) if is_eval_step(t, s, logs)} == eval_steps(t)
    huge = C.TrainConfig(steps=10**15, eval_every=1, eval_log_points=10_000)
    assert is_eval_step(huge, 7, log_eval_steps(huge))  # no set of 10^15 steps is built


@pytest.mark.parametrize("override, fragment", [("model.d_model=1048576", "training this model"),
                                                ("train.eval_sequences=1000000000000", "the probe set")])
def test_sizes_that_cannot_fit_are_refused_before_allocating(tmp_path, override, fragment):
    with pytest.raises(CramError, match=f"{fragment}.*needs at least"):
        train(tiny("train.steps=2", override), tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before the run folder was taken


def test_resume_of_a_checkpoint_with_nan_weights_names_the_file(tmp_path):
    from cramkit.gpu.run.checkpoint import write_checkpoint_file

    train(tiny("train.steps=2", "train.eval_every=2"), tmp_path / "r")
    last = tmp_path / "r" / "last.safetensors"
    tensors, meta = read_checkpoint(last)
    name = next(k for k, t in tensors.items() if k.startswith("model/") and t.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    write_checkpoint_file(last, tensors, meta)  # signed: only the NaN is wrong
    with pytest.raises(CramError, match=f"{last}: tensor {name} holds NaN") as err:
        train(None, None, resume=last)
    assert not isinstance(err.value, TrainingDiverged)

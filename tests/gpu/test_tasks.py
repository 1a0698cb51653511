"""The public task API (docs/tasks.md): a task written here, trained through public names only;
build_model's checks; the run config's sections; weights of another vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from cramkit.errors import CramError
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.run.build import build_model, load_weights
from cramkit.gpu.run.checkpoint import read_checkpoint
from cramkit.gpu.run.config import SRCDConfig, load_config
from cramkit.gpu.run.train import train
from cramkit.gpu.tasks import Task, TaskBatch, check_token_range

SMALL = ModelConfig(pattern="SA", d_model=32, n_heads=2, ssm_heads=2, ssm_head_dim=16, d_state=8,
                    memory_hidden=32, router_hidden=16)  # fmt: skip
RUN = ["model.d_model=32", "model.n_heads=2", "model.ssm_heads=2", "model.ssm_head_dim=16", "model.d_state=8",
       "model.memory_hidden=32", "model.router_hidden=16", "train.batch_size=8", "train.warmup_steps=1",
       "train.threads=1", "train.eval_log_points=0", "train.steps=6", "train.eval_every=3", "train.ckpt_every=3"]  # fmt: skip


class CopyTask:
    """Recall the first token at the last position; ``empty_every`` steps give no targets at all."""

    name = "copy"
    vocab_size = 12
    target_range = None
    n_targets = 1
    default_budget = 0.5

    def __init__(self, length: int = 10, empty_every: int = 0):
        self.length, self.empty_every = length, empty_every

    def _make(self, gen: torch.Generator, b: int) -> TaskBatch:
        tokens = torch.randint(1, self.vocab_size, (b, self.length), generator=gen)
        targets = torch.full_like(tokens, -1)
        targets[:, -1] = tokens[:, 0]
        return TaskBatch(tokens, targets)

    def batch(self, step, batch_size, *, generator, rank=0, world_size=1) -> TaskBatch:
        b = self._make(generator, batch_size // world_size)
        if self.empty_every and step % self.empty_every == 1:
            b.targets[:] = -1
        return b

    def evaluate(self, model, *, step=0) -> dict:
        b = self._make(torch.Generator().manual_seed(5), 32)
        with torch.no_grad():
            out = model(b.tokens, b.targets)
        return {"acc": float((out.logits.argmax(-1) == b.targets[:, -1]).float().mean())}


def test_a_task_of_your_own_trains_through_the_public_api(tmp_path):
    task = CopyTask()
    assert isinstance(task, Task)
    res = train(load_config(None, RUN), tmp_path / "r", task=task)
    assert [m["step"] for m in res.metrics] == [0, 3, 6]
    assert all(0 <= m["acc"] <= 1 for m in res.metrics) and math.isfinite(res.metrics[-1]["loss"])
    _, meta = read_checkpoint(tmp_path / "r")
    assert (meta["vocab_size"], meta["n_q"], meta["task"]) == (12, 1, "copy")
    assert meta["budget"] == 0.5  # router.budget < 0: the task's default
    resumed = train(None, None, resume=tmp_path / "r" / "checkpoints" / "step_0000003.safetensors", task=task)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "wall_s"} for m in ms]  # noqa: E731
    assert strip(resumed.metrics) == strip(res.metrics)


def test_a_batch_without_targets_is_skipped_not_divergence():
    res = train(load_config(None, RUN), None, task=CopyTask(empty_every=2))
    losses = [m["loss"] for m in res.metrics[1:]]
    assert all(v is not None and math.isfinite(v) for v in losses)


def test_not_a_task_is_one_line():
    with pytest.raises(CramError, match="is not a task: it has no"):
        train(load_config(None, RUN), None, task=object())


def test_build_model_from_a_model_config_and_a_vocabulary():
    m = build_model(SMALL, RouterConfig(name="random", budget=0.25), 100, n_targets=4)
    assert m.vocab_size == 100 and m.budget == 0.25 and m.n_q == 4
    out = m(torch.randint(0, 100, (2, 16)), torch.randint(-1, 100, (2, 16)))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"router_cfg": RouterConfig(name="cramm")}, "router.name must be one of"),
        ({"model_cfg": ModelConfig(d_model=30, n_heads=4)}, "must be divisible by model.n_heads"),
        ({"model_cfg": ModelConfig(pattern="SX")}, "model.pattern must be"),
        ({"vocab_size": 0}, "vocab_size must be an integer >= 1"),
        ({"target_range": (5, 200)}, "target_range"),
        ({"router_cfg": RouterConfig(name="learned-static", budget=0.125), "n_targets": 1}, "rounds to 0"),
        ({"router_cfg": RouterConfig(explore=2.0)}, r"router.explore must be in \[0.0, 1.0\]"),
    ],
)
def test_build_model_errors_are_one_line(kwargs, fragment):
    args = {"model_cfg": SMALL, "router_cfg": RouterConfig(), "vocab_size": 100} | kwargs
    with pytest.raises(CramError, match=fragment) as e:
        build_model(args.pop("model_cfg"), args.pop("router_cfg"), args.pop("vocab_size"), **args)
    assert "\n" not in str(e.value)


def test_weights_of_another_vocabulary_name_the_cause(tmp_path):
    train(load_config(None, RUN), tmp_path / "r", task=CopyTask())
    other = build_model(SMALL, RouterConfig(), 512)
    with pytest.raises(CramError, match="checkpoint vocabulary 12 != model vocabulary 512"):
        load_weights(other, tmp_path / "r")
    same = build_model(SMALL, RouterConfig(), 12, n_targets=1)
    assert load_weights(same, tmp_path / "r")["step"] == 6


def test_token_id_past_the_vocabulary_is_one_line():
    with pytest.raises(CramError, match="token id 9 >= vocabulary size 8"):
        check_token_range(torch.tensor([[1, 9]]), 8, "here")


# --- the run config ----------------------------------------------------------------------------


def test_srcd_section_is_the_generators_config_and_world_seed_moved():
    cfg = load_config()
    assert type(cfg.srcd) is SRCDConfig and cfg.srcd_config() is cfg.srcd
    assert load_config(None, ["srcd.world_seed=3"]).train.world_seed == 3  # the old key still works
    assert "world_seed" not in cfg.to_dict()["srcd"] and cfg.to_dict()["train"]["world_seed"] == 0


def test_old_run_folders_config_loads(tmp_path):
    p = tmp_path / "config.toml"
    p.write_text('task = "srcd"\n[srcd]\nn = 64\nm_r = 6\nm_e = 2\nP = 64\nU = 256\nv = 256\nd = 8\nworld_seed = 2\n')
    cfg = load_config(p)
    assert cfg.train.world_seed == 2 and cfg.srcd.n == 64
    p.write_text('[srcd]\nworld_seed = 2\n[train]\nworld_seed = 3\n')
    with pytest.raises(CramError, match="same setting"):
        load_config(p)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("srcd.bogus=1", "srcd.bogus"),
        ("srcd.alpha=true", "config key srcd.alpha must be a number"),
        ("train.lr=0", r"train.lr must be > 0.0"),
        ("train.world_seed=-1", "train.world_seed must be >= 0"),
        ("tokens.val_frac=1.5", r"tokens.val_frac must be in \(0.0, 1.0\)"),
        ("task=\"vision\"", "task must be one of"),
    ],
)
def test_every_section_checks_the_same_way(override, fragment):
    with pytest.raises(CramError, match=fragment):
        load_config(None, [override])


def test_text_task_may_use_cram_blocks(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    cfg = load_config(None, [*RUN, 'task="text"', f'text.data="{data}"', "text.seq_len=32", "text.eval_batches=1",
                             "train.steps=3", 'router.name="cram"'])  # fmt: skip
    res = train(cfg, None)
    m = res.metrics[-1]
    assert math.isfinite(m["loss"]) and m["bpb"] > 0 and 0 <= m["rho_all"] <= 1
    assert "loss_router" in m  # the CRAM losses are defined when every position is a target


def test_train_and_eval_follow_the_command_contract(tmp_path):
    from cramkit.gpu.run.eval_report import EvalReport, EvalSettings
    from cramkit.gpu.run.eval_report import run as run_eval
    from cramkit.gpu.run.train import TrainResult, TrainSettings
    from cramkit.gpu.run.train import run as run_train
    from cramkit.result import Result

    ticks = []
    cfg = load_config(None, [*RUN, "train.steps=2", "train.eval_every=2", "train.eval_sequences=8"])
    res = run_train(TrainSettings(cfg, tmp_path / "r"), lambda *a: ticks.append(a))
    assert isinstance(res, TrainResult) and isinstance(res, Result) and res.ok
    assert ticks[-1] == ("train", 2, 2)
    assert res.to_json()["out"] == str(tmp_path / "r") and res.to_json()["step"] == 2
    assert "final evaluation" in res.report() and "acc_r" in res.report()
    res.plot(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    ev = run_eval(EvalSettings((str(tmp_path / "r"),), "iid", 8))
    assert isinstance(ev, EvalReport) and ev.to_json()["rows"][0]["step"] == 2 and "rho_q" in ev.report()
    with pytest.raises(CramError, match="--max-steps must be >= 1"):
        TrainSettings(cfg, None, max_steps=0)

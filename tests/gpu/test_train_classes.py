"""Loss and attention use on recall hits and on the rest of every training batch (issue 18 part 4;
gpu/tasks/recall.py batch_class_sums, the trainer's train_* fields): equal to a direct computation,
consistent with the batch's own loss, and kept across a resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cramkit.gpu.run import config as C
from cramkit.gpu.run.resume import RunState
from cramkit.gpu.run.schedule import step_generator
from cramkit.gpu.run.train import train
from cramkit.gpu.run.trainer import _Trainer
from cramkit.gpu.tasks.recall import TRAIN_FIELDS, recall_hits_reference

CORPUS = Path(__file__).resolve().parents[2] / "gpu" / "redundancy" / "default_corpus.txt"
TINY = ["task=text", "model.pattern=SA", "model.d_model=32", "model.n_heads=2", "model.ssm_heads=2",
        "model.ssm_head_dim=16", "model.d_state=8", "model.memory_hidden=32", "model.router_hidden=16",
        "train.batch_size=4", "train.warmup_steps=2", "train.threads=1", "train.eval_log_points=0",
        "text.seq_len=48", "text.eval_batches=1", "router.explore=0.2"]  # fmt: skip


def tiny(*extra: str) -> C.RunConfig:
    return C.load_config(None, [*TINY, f"text.data={CORPUS}", *extra])


def test_the_class_fields_of_a_step_equal_a_direct_computation():
    cfg = tiny("train.steps=2")
    task = cfg.build_task()
    trainer = _Trainer(cfg, task, RunState(), None, rank=0, world_size=1, device=torch.device("cpu"), on_eval=None)
    with torch.no_grad():  # the batch of step 0 through the untrained model, as step(0) will see it
        trainer.model.train()
        fout, _, tb = trainer.forward(0, step_generator(cfg.train.seed, 0, 0))
    x, y = tb.tokens.tolist(), tb.targets.tolist()
    hits = recall_hits_reference(x, y)
    logp = torch.log_softmax(fout.logits.double(), -1)
    route = sum(tr.route.double() for tr in fout.traces) / len(fout.traces)
    by = {True: [], False: []}
    i = 0
    for b in range(len(x)):
        for t in range(len(x[b])):
            by[hits[b][t]].append((-float(logp[i, y[b][t]]), float(route[b, t])))
            i += 1
    assert by[True] and by[False]  # the corpus repeats bigrams inside a window
    trainer.step(0)
    got = trainer.train_stats(None)
    n = len(by[True]) + len(by[False])
    assert got["train_recall_share"] == pytest.approx(len(by[True]) / n, rel=1e-12)
    for name, h in (("recall", True), ("other", False)):
        assert got[f"train_loss_{name}"] == pytest.approx(sum(v[0] for v in by[h]) / len(by[h]), rel=1e-5)
        assert got[f"train_rho_{name}"] == pytest.approx(sum(v[1] for v in by[h]) / len(by[h]), rel=1e-9)
    # the two classes make up the batch: the task loss and the training attention use
    share = got["train_recall_share"]
    assert share * got["train_loss_recall"] + (1 - share) * got["train_loss_other"] == pytest.approx(
        fout.parts["task"], rel=1e-5)
    assert share * got["train_rho_recall"] + (1 - share) * got["train_rho_other"] == pytest.approx(
        got["train_attn_frac"], rel=1e-9)


def test_every_record_has_the_class_fields_and_resume_is_bit_identical(tmp_path):
    cfg = tiny("train.steps=6", "train.eval_every=2", "train.ckpt_every=3")
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", max_steps=3)  # stops between two evaluations: sums pending
    resumed = train(None, None, resume=tmp_path / "part")
    strip = lambda ms: [{k: v for k, v in m.items() if k != "wall_s"} for m in ms]  # noqa: E731
    assert part.stopped_early and strip(resumed.metrics) == strip(full.metrics)
    for rec in full.metrics[1:]:
        assert set(TRAIN_FIELDS) <= set(rec)
        assert 0 < rec["train_recall_share"] < 1 and math.isfinite(rec["train_loss_recall"])
        assert 0 <= rec["train_rho_recall"] <= 1 and 0 <= rec["train_rho_other"] <= 1
    assert not set(TRAIN_FIELDS) & set(full.metrics[0])  # step 0: no training batch yet


def test_a_dense_text_model_logs_losses_by_class_but_no_route():
    cfg = tiny("train.steps=1", "model.pattern=SG")
    rec = train(cfg, None).metrics[-1]
    assert rec["train_loss_recall"] is not None and "train_rho_recall" not in rec


def test_the_class_fields_follow_the_tasks_capability_not_its_name():
    """A task of the user's own (another name) that says ``recall_classes`` gets the fields; a text
    task that turns it off and SRCD (no such capability) do not."""
    cfg = tiny("train.steps=1")

    def by_class(task):
        return _Trainer(cfg, task, RunState(), None, rank=0, world_size=1, device=torch.device("cpu"),
                        on_eval=None).by_class  # fmt: skip

    task = cfg.build_task()
    assert by_class(task)
    task.name = "my-corpus"
    assert by_class(task)
    task.recall_classes = False
    assert not by_class(task)
    srcd = C.load_config(None, ["model.d_model=32", "model.n_heads=2", "train.threads=1"])
    assert not by_class(srcd.build_task())


def test_class_sums_from_the_batch_mean_equal_the_full_per_position_loss():
    """The trainer scores only the hits' rows and takes the rest from the batch's mean task loss."""
    import torch.nn.functional as F

    from cramkit.gpu.tasks.recall import batch_class_sums

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (3, 40), generator=g)
    y = torch.cat([x[:, 1:], torch.randint(0, 5, (3, 1), generator=g)], 1)
    y[0, :7] = -1  # positions without a target are neither class
    logits = torch.randn(int((y >= 0).sum()), 5, generator=g) * 3
    route = torch.rand(3, 40, generator=g)
    mean = float(F.cross_entropy(logits, y[y >= 0]))
    full = batch_class_sums(x, y, logits, route)
    fast = batch_class_sums(x, y, logits, route, mean)
    assert full[1] > 0 and full[3] > 0 and full[1] + full[3] == int((y >= 0).sum())
    assert torch.allclose(full, fast, rtol=1e-6)
    none = batch_class_sums(x, y, logits, None, mean)
    assert none[4] == 0 and none[5] == 0 and torch.allclose(none[:4], full[:4], rtol=1e-6)

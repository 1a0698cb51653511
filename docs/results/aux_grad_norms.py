"""Gradient norms of a CRAM checkpoint's training batch, split into the task loss's and the
layer's own losses' parts (docs/results/language.md, "The layer's own losses").

    python docs/results/aux_grad_norms.py runs/k0_dense_own25/checkpoints/step_0000200.safetensors ...

For each checkpoint: the batch the run trains on next (its step generator), the gradient
of the task loss alone, of the full loss, their difference (the own losses' part), and those
restricted to attention's output projection ``o``; the full loss's norm is what train.grad_clip
clips against.
"""

from __future__ import annotations

import sys

import torch

from cramkit.gpu.run.load import load_checkpoint
from cramkit.gpu.run.schedule import step_generator

OFF = {"epi": 0.0, "sem": 0.0, "distill": 0.0, "router": 0.0}


def norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    for path in paths:
        ck = load_checkpoint(path)
        model, cfg, step = ck.model.train(), ck.cfg, int(ck.meta["step"])
        task = cfg.build_task()
        tb = task.batch(step, cfg.train.batch_size, generator=step_generator(cfg.train.seed, step, 0), rank=0,
                        world_size=1)  # fmt: skip
        grads = {}
        for name, weights in (("task", OFF), ("all", None)):
            model.zero_grad(set_to_none=True)
            out = model(tb.tokens, tb.targets, generator=step_generator(cfg.train.seed, step, 0), weights=weights)
            out.loss.backward()
            grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        own = {n: g - grads["task"].get(n, torch.zeros_like(g)) for n, g in grads["all"].items()}
        o = [n for n in own if ".mixer.o." in n]
        print(f"{path}: aux_grad {cfg.router.aux_grad}, share {cfg.router.aux_share}, step {step}: "
              f"|g_task| {norm(grads['task']):.3f}, |g_all| {norm(grads['all']):.3f}, |g_own losses| {norm(own):.3f}; "
              f"on o: task {norm({n: grads['task'][n] for n in o}):.4f}, own losses {norm({n: own[n] for n in o}):.4f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])

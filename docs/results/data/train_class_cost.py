"""What the per-class training fields cost (issue 18 part 4; docs/results/text-pipeline.md). Not a test.

    flock /tmp/cram-core0.lock taskset -c 0 python docs/results/data/train_class_cost.py kjv.txt

Trains the ``lm`` preset (batch 16 x context 256) on the corpus with ``--tokenizer`` and times
optimizer steps with the per-class sums on and off, alternating in blocks of ``--block`` steps
(so the two see the same model and machine), after ``--warmup`` steps; also times
``batch_class_sums`` alone on one step's output (as the trainer calls it, scoring the hits' rows,
and scoring every row). One torch thread. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--tokenizer", default="bpe:4096")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    from cramkit.gpu.run import config as C
    from cramkit.gpu.run.resume import RunState
    from cramkit.gpu.run.schedule import step_generator
    from cramkit.gpu.run.trainer import _Trainer
    from cramkit.gpu.tasks.recall import batch_class_sums, recall_hits, route_per_position

    torch.set_num_threads(1)
    cfg = C.load_config(preset="lm", overrides=[f"text.data={args.corpus}", f"text.tokenizer={args.tokenizer}",
                                                "train.threads=1", "train.steps=1000"])  # fmt: skip
    task = cfg.build_task()
    tr = _Trainer(cfg, task, RunState(), None, rank=0, world_size=1, device=torch.device("cpu"), on_eval=None)
    step = 0
    for _ in range(args.warmup):
        tr.step(step)
        step += 1
    times: dict[bool, list[float]] = {True: [], False: []}
    for b in range(2 * args.blocks):
        tr.by_class = b % 2 == 0
        for _ in range(args.block):
            t0 = time.perf_counter()
            tr.step(step)
            times[tr.by_class].append(time.perf_counter() - t0)
            step += 1
    fout, _, tb = tr.forward(step, step_generator(cfg.train.seed, step, 0))
    route = route_per_position(fout.traces)
    sums_s = {}
    for name, mean in (("hits_rows", fout.parts["task"]), ("every_row", None)):  # as the trainer does; all rows
        t0 = time.perf_counter()
        for _ in range(10):
            batch_class_sums(tb.tokens, tb.targets, fout.logits, route, mean)
        sums_s[name] = (time.perf_counter() - t0) / 10
    share = float(recall_hits(tb.tokens, tb.targets).float().mean())
    on, off = (sum(times[k]) / len(times[k]) for k in (True, False))
    print(json.dumps({
        "corpus": args.corpus, "tokenizer": args.tokenizer, "vocab": task.vocab_size,
        "batch": [cfg.train.batch_size, cfg.text.seq_len], "model": cfg.model.pattern, "d_model": cfg.model.d_model,
        "step_s_with": on, "step_s_without": off, "ratio": on / off, "batch_class_sums_s": sums_s, "recall_share": share,
        "steps_each": len(times[True]),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

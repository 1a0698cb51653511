"""Router targets error, utility and gain compared (issue 18 part 5; docs/results/language.md,
"Router targets: error, utility, gain"). Not a test.

    python docs/results/data/router_targets.py RUNS_DIR > docs/results/data/router-targets.json

RUNS_DIR holds ``srcd-<target>-s<seed>`` (the quick preset) and ``text-<target>-s<seed>`` (BPE on
the KJV) run folders. For each run, from its last checkpoint:

* SRCD: accuracy (all, recurring, episodic), ``rho_q`` / ``rho_all`` (the task's own evaluation,
  512 sequences), and the share of the attention spent where the task needs it: the episodic
  query slots (their binding exists only in the context; the recurring ones the memory can learn),
  ``epi_attended / routed positions``;
* text: ``cram eval``'s row on the validation split (``--sequences`` windows): bpb, ``rho_all``,
  attention on recall tokens and the rest, and the counterfactual gain of attention at every
  position (loss with attention off minus on) with ``need_share`` / ``gain_precision`` /
  ``gain_recall`` (delta = the run's ``router.delta``);
* both: ``train_probe_frac`` (the gain target's probe, last logged step) and the probe's FLOPs: one
  training step (forward + backward) of the checkpoint counted by ``gpu/bench/flops.py`` with its
  own target and with ``router.target = "error"`` (no probe), on the same batch and draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from cramkit.gpu.bench.flops import count_flops
from cramkit.gpu.run.eval_text import evaluate_text_checkpoint
from cramkit.gpu.run.load import load_checkpoint
from cramkit.gpu.run.schedule import step_generator


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def step_flops(ck, task, target: str, batch_size: int) -> float:
    """FLOPs of one training step of ``ck``'s model with ``router.target = target``."""
    model = ck.model
    model.rcfg = dataclasses.replace(model.rcfg, target=target)
    for layer in model.cram_layers:
        layer.rcfg = model.rcfg
    model.train()
    gen = step_generator(0, 1, 0)
    tb = task.batch(1, batch_size, generator=gen)
    explore = torch.rand(tb.tokens.shape, generator=gen) < model.rcfg.explore

    def step():
        out = model(tb.tokens, tb.targets, query_mask=tb.query_mask, explore=explore, generator=gen)
        out.loss.backward()

    flops = count_flops(model, step).total
    model.zero_grad(set_to_none=True)
    return flops


def probe_cost(ck, batch_size: int) -> dict:
    task = ck.cfg.build_task()
    own = step_flops(ck, task, ck.cfg.router.target, batch_size)
    base = step_flops(ck, task, "error", batch_size)
    return {"step_flops": own, "step_flops_no_probe": base, "probe_flops_ratio": own / base - 1.0}


def srcd_row(run: Path) -> dict:
    ck = load_checkpoint(run)
    task = ck.cfg.build_task()
    m = task.evaluate(ck.model)
    n_seq, n = m["n_sequences"], ck.cfg.srcd.n
    routed = m["rho_all"] * n_seq * n * max(1, len(ck.model.cram_layers))
    log = _metrics(run)
    probe = [r["train_probe_frac"] for r in log if r.get("train_probe_frac") is not None]
    return {"task": "srcd", "run": run.name, "target": ck.cfg.router.target, "seed": ck.cfg.train.seed,
            "step": ck.meta.get("step"), "acc": m["acc"], "acc_r": m["acc_r"], "acc_e": m["acc_e"],
            "rho_q": m["rho_q"], "rho_all": m["rho_all"], "floor_rho_q": m["floor_rho_q"],
            "epi_attended": m["epi_attended"], "epi_total": m["epi_total"], "rec_attended": m["rec_attended"],
            "rec_total": m["rec_total"], "attn_share_needed": m["epi_attended"] / routed if routed else None,
            "needed_covered": m["epi_attended"] / m["epi_total"],
            "train_probe_frac_last": probe[-1] if probe else None,
            "curve": [{k: r.get(k) for k in ("step", "acc", "rho_q", "rho_all", "epi_attended", "rec_attended")}
                      for r in log],
            "wall_s": log[-1].get("wall_s"), **probe_cost(ck, ck.cfg.train.batch_size)}  # fmt: skip


def text_row(run: Path, sequences: int) -> dict:
    row = evaluate_text_checkpoint(run, sequences=sequences)[0]
    ck = load_checkpoint(run)
    log = _metrics(run)
    probe = [r["train_probe_frac"] for r in log if r.get("train_probe_frac") is not None]
    keep = ("corpus", "tokenizer", "windows", "tokens", "val_loss", "bpb", "rho_all", "recall_share", "bpb_recall",
            "bpb_other", "rho_recall", "rho_other", "attn_share_recall", "need_share", "gain_mean", "gain_precision",
            "gain_recall", "gain_attended", "gain_skipped", "need_share_recall", "need_share_other")  # fmt: skip
    return {"task": "text", "run": run.name, "target": ck.cfg.router.target, "seed": ck.cfg.train.seed,
            "step": ck.meta.get("step"), "delta": ck.cfg.router.delta, **{k: row.get(k) for k in keep},
            "train_probe_frac_last": probe[-1] if probe else None,
            "curve": [{k: r.get(k) for k in ("step", "bpb", "rho_all", "rho_recall", "rho_other")} for r in log],
            "wall_s": log[-1].get("wall_s"), **probe_cost(ck, ck.cfg.train.batch_size)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("--sequences", type=int, default=64, help="text: validation windows scored")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for run in sorted(p for p in args.runs.iterdir() if (p / "summary.json").exists()):
        t0 = time.perf_counter()
        if run.name.startswith("srcd-"):
            rows.append(srcd_row(run))
        elif run.name.startswith("text-"):
            rows.append(text_row(run, args.sequences))
        print(f"{run.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    load1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": "2-core CPU sandbox, 1 thread",
               "uptime_start": load0, "uptime_end": load1, "rows": rows}, sys.stdout, indent=1)  # fmt: skip
    print()


if __name__ == "__main__":
    main()

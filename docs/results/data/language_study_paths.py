"""Per-position losses of a CRAM text run's two paths on its validation windows, by recall class.

    python docs/results/data/language_study_paths.py RUN [--q 0.5 0.7 0.8 0.9]

Loads the run's last checkpoint, runs it over the fixed validation windows every evaluation used
(cramkit.gpu.tasks.text.TextTask.eval_windows), and prints, for recall tokens and the rest
(cramkit.gpu.tasks.recall), the mean and quantiles of the semantic memory's readout loss l_m,
of the episodic readout's l_a (where attention ran) and of the gain l_m - l_a. The quantiles of
l_m are what the error target's tau is chosen from: z = 1[l_m > tau] is 1 at the share of
positions above tau (docs/results/language.md, "Subword study").
"""

from __future__ import annotations

import argparse

import torch

from cramkit.gpu.run.load import load_checkpoint
from cramkit.gpu.tasks.recall import recall_hits
from cramkit.gpu.tasks.text import TextTask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--q", nargs="+", type=float, default=[0.5, 0.6, 0.7, 0.8, 0.9])
    a = ap.parse_args()
    torch.set_num_threads(1)
    ck = load_checkpoint(a.run)
    t = ck.cfg.text
    task = TextTask.from_config(ck.cfg)
    gen = torch.Generator().manual_seed(12345)
    lm, la, hit = [], [], []
    with torch.no_grad():
        for x, y in task.eval_windows():
            out = ck.model(x, y, generator=gen)
            tr = out.traces[0]
            lm.append(tr.loss_m.float())
            la.append(tr.loss_a.float())
            hit.append(recall_hits(x, y).reshape(-1))
    lm, la, hit = torch.cat(lm), torch.cat(la), torch.cat(hit)
    q = torch.tensor(a.q)
    print(f"{a.run}: {ck.cfg.router.name}, {t.tokenizer}, T {t.seq_len}; {lm.numel()} positions, "
          f"recall share {hit.float().mean():.3f}")  # fmt: skip
    for name, sel in (("all", torch.ones_like(hit)), ("recall", hit), ("other", ~hit)):
        m, ok = lm[sel], ~torch.isnan(la[sel])
        g = (lm[sel] - la[sel])[ok]
        print(f"{name:>6}: l_m mean {m.mean():.3f}, quantiles {a.q}: {[round(v, 3) for v in m.quantile(q).tolist()]}; "
              f"l_a mean {la[sel][ok].mean():.3f}; gain mean {g.mean():.3f}, share gain > 0 {(g > 0).float().mean():.3f}")  # fmt: skip
    for tau in sorted({round(v, 1) for v in lm.quantile(q).tolist()}):
        z = lm > tau
        print(f"tau {tau}: z share {z.float().mean():.3f}, on recall {z[hit].float().mean():.3f}, "
              f"on other {z[~hit].float().mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""FLOPs of one CRAM training step against its own forward path trained on the task loss alone
(issue 24; docs/results/language.md, "The layer's own losses").

The model is the `lm` preset's `SA` network at width d (4 heads, SSM 4 heads of d/4, state 16,
memory MLP 2d, router MLP 32), batch 2 of T positions, every position a target. CRAM attends at
1/64 of the positions: the learned router is closed (output weight 0, bias -4) and the
exploration mask opens every 64th position, so the router is still trained by its BCE. FLOPs are
torch.utils.flop_counter.FlopCounterMode's count of forward + backward (matrix products; the
routed-attention and scan kernels are the same in both and not counted, which only raises the
ratio). "task loss alone" is the same model and route with every auxiliary weight 0, which
computes none of the auxiliary losses.

    python docs/results/aux_flops.py            # with this tree's cramkit
"""

from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from cramkit.gpu.model import CramModel
from cramkit.gpu.model.config import ModelConfig, RouterConfig

OFF = {"epi": 0.0, "sem": 0.0, "distill": 0.0, "router": 0.0}


def step_flops(d: int, vocab: int, t_len: int, weights: dict | None, **router: object) -> float:
    mcfg = ModelConfig(pattern="SA", d_model=d, n_heads=4, ssm_heads=4, ssm_head_dim=d // 4, d_state=16,
                       memory_hidden=2 * d, router_hidden=32)  # fmt: skip
    rcfg = RouterConfig(name="cram", init_bias=-4.0, **router)
    torch.manual_seed(0)
    model = CramModel(mcfg, rcfg, vocab).train()
    for layer in model.cram_layers:
        torch.nn.init.zeros_(layer.router[-1].weight)
    tokens = torch.randint(0, vocab, (2, t_len), generator=torch.Generator().manual_seed(0))
    explore = torch.zeros_like(tokens, dtype=torch.bool)
    explore[:, 63::64] = True
    gen = torch.Generator().manual_seed(1)
    with FlopCounterMode(display=False) as fc:
        out = model(tokens, torch.roll(tokens, -1, 1), explore=explore, generator=gen, weights=weights)
        out.loss.backward()
    return float(fc.get_total_flops())


def main() -> None:
    torch.set_num_threads(1)
    variants = [("isolated, share 0.25 (text default)", {"aux_grad": "isolated"}),
                ("isolated, share 1", {"aux_grad": "isolated", "aux_share": 1.0}),
                ("own, share 0.25", {"aux_grad": "own"}),
                ("shared, share 1", {"aux_grad": "shared", "aux_share": 1.0})]  # fmt: skip
    for d, vocab, t_len in ((64, 256, 256), (512, 4096, 256), (512, 4096, 1024)):
        base = step_flops(d, vocab, t_len, OFF)
        cells = [f"{name}: {step_flops(d, vocab, t_len, None, **kw) / base:.3f}" for name, kw in variants]
        print(f"d={d} V={vocab} T={t_len}: task loss alone {base:.4g} FLOPs; ratio " + "; ".join(cells))
        sys.stdout.flush()


if __name__ == "__main__":
    main()

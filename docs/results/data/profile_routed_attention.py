"""Where CPU routed attention spends its time (issue 22): torch.profiler over forward + backward
at T = 4096, rho = 1/64 (B = 1, H = 4, D = 64, float32, the kernel benchmark's default CPU case),
one thread, for the gathered path (the old choice at this shape), the key-block path (the new
one) and dense causal SDPA. Prints, for each, the median wall time of 7 interleaved repeats and
the profiler's top operators (self CPU time over 3 further steps).

    flock /tmp/cram-core0.lock taskset -c 0 .venv/bin/python docs/results/data/profile_routed_attention.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import profile

from cramkit.gpu.bench import routed_mask
from cramkit.gpu.ops.routed_attention.cpu import (
    choose_cpu_algorithm,
    routed_attention_gathered,
    routed_attention_keyblock,
)

torch.set_num_threads(1)
B, T, H, D, RHO = 1, 4096, 4, 64, 1 / 64
gen = torch.Generator().manual_seed(0)
q, k, v, g = (torch.randn(B, T, H, D, generator=gen) for _ in range(4))
for t in (q, k, v):
    t.requires_grad_()
mask = routed_mask(B, T, RHO, gen)
algo, width = choose_cpu_algorithm(mask, H, D)


def step(fn):
    def run() -> None:
        for t in (q, k, v):
            t.grad = None
        fn().backward(g)

    return run


fns = {
    "sdpa_dense": step(lambda: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)),  # fmt: skip
    "gathered": step(lambda: routed_attention_gathered(q, k, v, mask, scale=D**-0.5)),
    f"keyblock-w{width}": step(lambda: routed_attention_keyblock(q, k, v, mask, scale=D**-0.5, block=width)),
}
times = {name: [] for name in fns}
for fn in fns.values():
    fn()
for _ in range(7):
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
print(f"B={B} T={T} H={H} D={D} rho=1/64, 1 thread; cost model: {algo} w{width}")
for name, ms in med.items():
    print(f"{name:16s} {ms:8.2f} ms   dense / this = {med['sdpa_dense'] / ms:6.2f}x")
for name in list(fns)[1:]:
    with profile() as prof:
        for _ in range(3):
            fns[name]()
    print(f"\n== {name}: top operators over 3 steps (self CPU)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))

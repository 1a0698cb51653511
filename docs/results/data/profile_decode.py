"""Profile the cram model's decode step (T=16384 context, rho=1/64 vs dense), CPU, 1 thread.
Wall time per step vs time spent inside aten ops (torch.profiler), and op counts per step."""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from cramkit.gpu.bench.common import routed_mask
from cramkit.gpu.bench.model import VOCAB, ModelBenchConfig, build_models

torch.set_num_threads(1)
T, STEPS = 16384, 64
cfg = ModelBenchConfig(t_values=(T,), models=("cram", "dense"), decode_steps=STEPS)
models = build_models(cfg, "cpu")
gen = torch.Generator().manual_seed(0)
tokens = torch.randint(0, VOCAB, (1, T + STEPS), generator=gen)
route = routed_mask(1, T + STEPS, 1 / 64, gen)
for name, model in models.items():
    model.eval()
    r = route if name == "cram" else None
    st = model.init_state(1, T + STEPS)
    with torch.no_grad():
        model.prefill(tokens[:, :T - 1], st, **({} if r is None else {"route": r[:, :T - 1]}))
        def steps(a, b):
            for i in range(a, b):
                model.step(tokens[:, i], st, **({} if r is None else {"route": r[:, i]}))
        steps(T - 1, T + 7)  # warm
        t0 = time.perf_counter(); steps(T + 7, T + 39); wall = (time.perf_counter() - t0) / 32
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            steps(T + 39, T + 39 + 24)
    ev = prof.key_averages()
    n = 24
    # top-level ops only: self time of all aten ops = time inside the C++ op library
    inside = sum(e.self_cpu_time_total for e in ev) / n
    calls = sum(e.count for e in ev) / n
    print(f"== {name}: wall {wall*1e6:.0f} us/step (unprofiled); inside torch ops {inside:.0f} us/step "
          f"({100*inside/(wall*1e6):.0f}% of wall); {calls:.0f} op calls/step")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))

"""Calibration: wall time of one tiny torch op (64 floats) on this machine, 1 thread, no grad."""
import time

import torch

torch.set_num_threads(1)
a = torch.randn(1, 1, 64); b = torch.randn(1, 1, 64); w = torch.randn(64, 64)
res = {}
with torch.no_grad():
    for name, fn in (("add", lambda: a + b), ("unsqueeze", lambda: a.unsqueeze(0)), ("linear 64x64", lambda: torch.nn.functional.linear(a, w))):
        for _ in range(200): fn()
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(2000): fn()
            ts.append((time.perf_counter() - t0) / 2000 * 1e6)
        res[name] = sorted(ts)[3]
print("median us per call:", {k: round(v, 2) for k, v in res.items()})

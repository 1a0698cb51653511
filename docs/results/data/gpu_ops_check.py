"""GPU check: the CUDA (Triton) paths of the ops against their float64 references."""
import json
import math
import sys
import time

import torch

from cramkit.gpu.ops.routed_attention import routed_attention
from cramkit.gpu.ops.routed_attention.reference import routed_attention_reference
from cramkit.gpu.ops.ssm_scan import ssm_scan
from cramkit.gpu.ops.ssm_scan.reference import ssm_scan_reference

dev = "cuda"
print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
g = torch.Generator(device="cpu").manual_seed(0)
fails = 0
def rel(a, b):
    return float((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-12))
t0 = time.time()
for (B, T, H, D, rho, dt) in [(2, 63, 2, 40, 0.3, torch.float32), (1, 1024, 4, 64, 1/16, torch.float32), (1, 777, 4, 64, 1.0, torch.bfloat16), (2, 300, 3, 32, 0.0, torch.float32)]:
    q, k, v = (torch.randn(B, T, H, D, generator=g).to(dev, dt).requires_grad_() for _ in range(3))
    route = (torch.rand(B, T, generator=g) < rho).to(dev)
    out = routed_attention(q, k, v, route, backend="triton")  # this check is of the Triton kernels
    go = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), go)
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = routed_attention_reference(q2, k2, v2, route, scale=1 / math.sqrt(D))
    rq, rk, rv = torch.autograd.grad(ref, (q2, k2, v2), go.double())
    errs = [rel(out, ref), rel(dq, rq), rel(dk, rk), rel(dv, rv)]
    tol = 2e-2 if dt == torch.bfloat16 else 2e-3
    ok = all(e <= tol or math.isnan(e) is False and e <= tol for e in errs) and all(math.isfinite(e) for e in errs)
    fails += not ok
    print(f"routed_attention B{B} T{T} H{H} D{D} rho{rho:.3f} {dt}: rel err out/dq/dk/dv {['%.1e' % e for e in errs]} {'OK' if ok else 'FAIL'} t={time.time()-t0:.1f}s", flush=True)
for (B, T, H, P, N, dt, init) in [(2, 63, 2, 16, 8, torch.float32, False), (1, 2048, 4, 64, 16, torch.float32, True), (1, 500, 4, 64, 16, torch.bfloat16, False)]:
    x = torch.randn(B, T, H, P, generator=g).to(dev, dt).requires_grad_()
    la = (-torch.rand(B, T, H, generator=g) * 0.5).to(dev, dt).requires_grad_()
    b = (torch.randn(B, T, H, N, generator=g) * 0.3).to(dev, dt).requires_grad_()
    c = (torch.randn(B, T, H, N, generator=g) * 0.3).to(dev, dt).requires_grad_()
    s0 = (torch.randn(B, H, N, P, generator=g).to(dev, dt).requires_grad_()) if init else None
    y, s = ssm_scan(x, la, b, c, initial_state=s0)
    gy, gs = torch.randn_like(y), torch.randn_like(s)
    leaves = [x, la, b, c] + ([s0] if init else [])
    grads = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), leaves)
    dl = [t.detach().double().requires_grad_() for t in leaves]
    yr, sr = ssm_scan_reference(*dl[:4], initial_state=dl[4] if init else None)
    rgrads = torch.autograd.grad((yr * gy.double()).sum() + (sr * gs.double()).sum(), dl)
    errs = [rel(y, yr), rel(s, sr)] + [rel(a, b_) for a, b_ in zip(grads, rgrads)]
    tol = 3e-2 if dt == torch.bfloat16 else 2e-3
    ok = all(math.isfinite(e) and e <= tol for e in errs)
    fails += not ok
    print(f"ssm_scan B{B} T{T} H{H} P{P} N{N} {dt} init={init}: rel errs {['%.1e' % e for e in errs]} {'OK' if ok else 'FAIL'} t={time.time()-t0:.1f}s", flush=True)
print("FAILS", fails)
sys.exit(1 if fails else 0)

"""Issue 22's GPU check of routed attention, in one run of a few minutes (no Triton autotuning).

1. Correctness: every backend (triton, flex, gathered, and auto) against the float64 reference,
   output and dq, dk, dv under a random upstream gradient, at awkward sizes.
2. Timing: routed fwd+bwd at rho = 1/64 against dense causal SDPA at T = 4096 and 16384
   (B = 4, H = 16, D = 64, bfloat16), each backend its own row, interleaved, through the kernel
   benchmark (`cram bench kernels --backends ...`).

    python3 docs/results/data/gpu_routed_attention.py OUT.json      # on a GPU machine
    python3 docs/results/data/gpu_routed_attention.py OUT.json --dry  # CPU fallback: tiny sizes

Without CUDA (or with --dry) it runs the same steps on the CPU at tiny sizes with the CPU's
backends (cpu, gathered; flex forward only: torch has no CPU FlexAttention backward), so the
script itself is exercised before a GPU is lent. Prints one line per step; writes the JSON.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

os.environ.setdefault("CRAM_TRITON_AUTOTUNE", "0")  # before the kernels are imported

import torch  # noqa: E402

from cramkit.gpu.bench import bench_kernels  # noqa: E402
from cramkit.gpu.ops.routed_attention import routed_attention  # noqa: E402
from cramkit.gpu.ops.routed_attention.reference import routed_attention_reference  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / (b.abs().max() + 1e-12)) if a.numel() else 0.0


def check(device: str, backends: list[str], with_grad: dict[str, bool]) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    shapes = [(2, 63, 2, 40, 0.3, torch.float32), (1, 1024, 4, 64, 1 / 16, torch.float32),
              (1, 777, 4, 64, 1.0, torch.bfloat16), (2, 300, 3, 32, 0.0, torch.float32)]  # fmt: skip
    for bsz, t_len, h, d, rho, dt in shapes:
        route = (torch.rand(bsz, t_len, generator=gen) < rho).to(device)
        base = [torch.randn(bsz, t_len, h, d, generator=gen) for _ in range(4)]
        ref_leaves = [x.double().requires_grad_() for x in base[:3]]
        ref = routed_attention_reference(*ref_leaves, route.cpu(), scale=d**-0.5)  # float64 on the CPU
        ref_grads = torch.autograd.grad(ref, ref_leaves, base[3].double())
        for backend in backends:
            grad = with_grad[backend]
            leaves = [x.to(device, dt).requires_grad_(grad) for x in base[:3]]
            start = time.time()
            try:
                with torch.set_grad_enabled(grad):
                    out = routed_attention(*leaves, route, backend=backend)
                    grads = torch.autograd.grad(out, leaves, base[3].to(device, dt), allow_unused=True) if grad else []
            except Exception as exc:  # noqa: BLE001 - report and go on
                rows.append({"backend": backend, "shape": [bsz, t_len, h, d], "rho": rho, "error": repr(exc)[:300]})
                print(f"check {backend} B{bsz} T{t_len} rho{rho:.3f} {dt}: ERROR {exc!r}"[:300], flush=True)
                continue
            grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
            errs = [rel(out, ref)] + [rel(g, r) for g, r in zip(grads, ref_grads)]
            tol = 2e-2 if dt == torch.bfloat16 else 2e-3
            ok = all(math.isfinite(e) and e <= tol for e in errs)
            rows.append({"backend": backend, "shape": [bsz, t_len, h, d], "rho": rho, "dtype": str(dt),
                         "rel_err_out_dq_dk_dv": errs, "ok": ok})  # fmt: skip
            print(f"check {backend} B{bsz} T{t_len} H{h} D{d} rho{rho:.3f} {dt}: rel err "
                  f"{[f'{e:.1e}' for e in errs]} {'OK' if ok else 'FAIL'} ({time.time() - start:.1f}s)", flush=True)  # fmt: skip
    return rows


def main(argv: list[str]) -> int:
    out_path = argv[0] if argv and not argv[0].startswith("--") else "gpu-routed-attention.json"
    dry = "--dry" in argv or not torch.cuda.is_available()
    device = "cpu" if dry else "cuda"
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0) if not dry else 'cpu (dry run)'}", flush=True)
    if dry:
        backends, grads = ["auto", "cpu", "gathered", "flex"], {"auto": True, "cpu": True, "gathered": True, "flex": False}
        bench = dict(t_values=[256, 512], batch=1, heads=2, head_dim=16, repeats=2, device="cpu",
                     backends=["auto", "gathered"], threads=1)  # fmt: skip
    else:
        backends = ["auto", "triton", "flex", "gathered"]
        grads = dict.fromkeys(backends, True)
        bench = dict(t_values=[4096, 16384], batch=4, heads=16, head_dim=64, repeats=10, device="cuda",
                     backends=["auto", "triton", "flex", "gathered"])  # fmt: skip
    start = time.time()
    result = {"checks": check(device, backends, grads)}
    print(f"checks done in {time.time() - start:.0f}s", flush=True)
    with open(out_path, "w") as fh:  # keep the checks even if the timing is cut short
        json.dump(result, fh, indent=1, default=str)
    for t_len in bench.pop("t_values"):  # one T at a time, each written as soon as it is measured
        res = bench_kernels(ops=["routed_attention"], rhos=[1 / 64], t_values=[t_len], **bench)
        result.setdefault("machine", res["machine"])
        result.setdefault("cases", []).extend(res["cases"])
        for c in res["cases"]:
            if c["baseline"] == "sdpa_dense":
                print(f"T={c['T']} rho=1/64 {c['backend']:9s} ({c['algorithm']}): {c['ms']:.3f} ms vs SDPA "
                      f"{c['baseline_ms']:.3f} ms = {c['speedup']:.2f}x ({time.time() - start:.0f}s)", flush=True)  # fmt: skip
        with open(out_path, "w") as fh:
            json.dump(result, fh, indent=1, default=str)
    failed = [r for r in result["checks"] if not r.get("ok")]
    print(f"FAILS {len(failed)}; wrote {out_path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

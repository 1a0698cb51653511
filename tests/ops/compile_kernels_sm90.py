"""Compile every Triton kernel of the ops for an H100 (sm_90) without a GPU; prints one line per
kernel. Run in a fresh process: Triton must be imported without ``TRITON_INTERPRET``."""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import cramkit.gpu.ops.routed_attention.triton as ra  # noqa: E402
import cramkit.gpu.ops.ssm_scan.triton as ssm  # noqa: E402


def compile_one(kernel, signature: dict, constexprs: dict) -> None:
    sig = dict(signature)
    sig.update({name: "constexpr" for name in constexprs})
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
    assert "cubin" in compiled.asm
    print("compiled", kernel.__name__, flush=True)


def attention_sig(names, dt):
    types = {"LSE": "*fp32", "DELTA": "*fp32", "IDX": "*i32", "CNT": "*i32", "qk_scale": "fp32", "sm_scale": "fp32", "T": "i32", "H": "i32", "M": "i32"}
    return {n: types.get(n, "*" + dt) for n in names}


def main() -> int:
    for dt in ("bf16", "fp32"):
        blocks = {"D": 64, "BLOCK_D": 64, "BLOCK_M": 64, "BLOCK_N": 64, "PRECISION": "ieee" if dt == "fp32" else "tf32"}
        compile_one(ra._fwd_kernel, attention_sig(["Q", "K", "V", "Out", "LSE", "IDX", "CNT", "qk_scale", "T", "H", "M"], dt), blocks)
        names = ["Q", "K", "V", "DO", "DQ", "LSE", "DELTA", "IDX", "CNT", "qk_scale", "sm_scale", "T", "H", "M"]
        compile_one(ra._dq_kernel, attention_sig(names, dt), blocks)
        names = ["Q", "K", "V", "DO", "DK", "DV", "LSE", "DELTA", "IDX", "CNT", "qk_scale", "sm_scale", "T", "H", "M"]
        compile_one(ra._dkdv_kernel, attention_sig(names, dt), dict(blocks, SEARCH_STEPS=24))
    compile_one(ra._delta_kernel, attention_sig(["Out", "DO", "DELTA", "IDX", "CNT", "T", "H", "M"], "bf16"), {"D": 64, "BLOCK_D": 64, "BLOCK_M": 16})
    ints = {"T", "H", "P", "N", "N_CHUNKS", "BH"}
    f32 = {"CKPT", "WS", "DB", "DC", "DA", "DS0"}

    def sig(names):
        return {n: "i32" if n in ints else ("*fp32" if n in f32 else "*bf16") for n in names}

    compile_one(
        ssm._scan_fwd_kernel,
        sig(["X", "A", "Bp", "C", "S0", "Y", "SF", "CKPT", "T", "H", "P", "N", "N_CHUNKS"]),
        {"CHUNK": 64, "HAS_S0": True, "BLOCK_N": 16, "BLOCK_P": 64},
    )
    names = ["X", "A", "Bp", "C", "DY", "DSF", "CKPT", "WS", "DX", "DB", "DC", "DA", "DS0", "T", "H", "P", "N", "N_CHUNKS", "BH"]
    compile_one(ssm._scan_bwd_kernel, sig(names), {"CHUNK": 64, "BLOCK_N": 16, "BLOCK_P": 64})
    return 0


if __name__ == "__main__":
    sys.exit(main())

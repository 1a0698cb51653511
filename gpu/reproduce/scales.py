"""The sizes of a reproduction: ``quick`` (≤ 30 min on a 2-core CPU), ``full`` (the paper preset,
several seeds, a GPU when present) and ``tiny`` (hidden; for tests, seconds).

Each scale is a :class:`Scale`: plain JSON-able settings per step. A step's cache key is the hash
of the settings it reads (:func:`cramkit.gpu.reproduce.runner.step_key`), so changing a scale
reruns exactly the steps it touches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cramkit.errors import CramError


@dataclass(frozen=True)
class Scale:
    name: str
    #: ``cram train`` preset and --set overrides of every SRCD run
    preset: str
    train_sets: tuple[str, ...]
    #: training seeds of the cram router (train.seed = srcd.world_seed = seed)
    seeds: tuple[int, ...]
    #: static baselines trained at the matched budget (router.name values)
    baselines: tuple[str, ...]
    #: probe sequences of `cram eval`
    eval_sequences: int
    #: `cram fit-gamma` settings
    fit: dict[str, Any] = field(default_factory=dict)
    #: `cram transfer` settings (TransferConfig fields)
    transfer: dict[str, Any] = field(default_factory=dict)
    #: `cram bound` settings (BoundConfig fields; empty = its defaults)
    bound: dict[str, Any] = field(default_factory=dict)
    #: `cram bench kernels` settings (bench_kernels keywords)
    bench: dict[str, Any] = field(default_factory=dict)
    #: `cram bench model` settings (ModelBenchConfig fields; empty = do not run it): width 64
    bench_model: dict[str, Any] = field(default_factory=dict)
    #: `cram bench model` at a real width (ModelBenchConfig fields with ``sizes``; empty = do not run it)
    bench_model_real: dict[str, Any] = field(default_factory=dict)
    #: the small text model of the redundancy step: train --set overrides, and RedundancyConfig fields
    text_sets: tuple[str, ...] = ()
    redundancy: dict[str, Any] = field(default_factory=dict)


_QUICK_TEXT = ("model.d_model=64", "model.n_heads=4", 'model.pattern="GGG"', "train.steps=300",
               "train.ckpt_every=100", "train.eval_every=100", "train.batch_size=16", "train.threads=1")  # fmt: skip

SCALES: dict[str, Scale] = {
    "tiny": Scale(
        name="tiny",
        preset="quick",
        train_sets=("train.steps=30", "train.eval_every=10", "train.eval_log_points=4", "train.eval_sequences=32",
                    "train.batch_size=16", "train.ckpt_every=10", "train.warmup_steps=5"),  # fmt: skip
        seeds=(0,),
        baselines=("random",),
        eval_sequences=32,
        fit={"resamples": 20, "models": ("M1", "M2", "M5", "M6")},
        transfer={"overlaps": (0.0, 1.0), "sequences": 32, "chunk": 8, "bootstrap": 50, "conflict": False},
        bound={"freq": 0.1, "f_e": 0.03, "P": 64, "n_min": 128, "n_max": 256, "batch": 2, "T": 300,
               "stream_P": 16, "Ks": (2,), "n_boot": 200},  # fmt: skip
        bench={"t_values": (256,), "rhos": (1 / 16, 1.0), "repeats": 1, "model_t": 128,
               "ops": ("routed_attention", "model_step")},  # fmt: skip
        bench_model={"t_values": (64,), "rhos": (1 / 16,), "models": ("cram", "hybrid", "cram-rho1", "none"),
                     "modes": ("train", "decode"), "repeats": 1, "decode_steps": 2, "memory": False, "threads": 1},
        bench_model_real={"t_values": (64,), "rhos": (1 / 16,), "sizes": ((32, 512),), "models": ("cram", "hybrid"),
                          "modes": ("train", "decode"), "repeats": 1, "decode_steps": 2, "memory": False, "threads": 1},
        text_sets=("model.d_model=32", "model.n_heads=2", 'model.pattern="GG"', "train.steps=10",
                   "train.ckpt_every=5", "train.eval_every=5", "train.batch_size=4", "text.seq_len=64",
                   "model.max_len=64", "train.threads=1"),  # fmt: skip
        redundancy={"max_tokens": 600, "bootstrap": 20, "gate": False, "context_swap": False,
                    "predictors": ("p0", "p1"), "min_pos": 8, "sweep_taus": (0.1, 0.3)},  # fmt: skip
    ),
    "quick": Scale(
        name="quick",
        preset="quick",
        train_sets=(),
        seeds=(0,),
        baselines=("random", "oracle-pos"),
        eval_sequences=1024,
        fit={"resamples": 300, "models": ("M1", "M2", "M3", "M4", "M5", "M6", "M7", "M8")},
        transfer={"overlaps": (0.0, 0.5, 1.0), "sequences": 512, "bootstrap": 1000, "conflict": True},
        bound={},
        bench={"ops": ("routed_attention", "ssm_scan", "model_step")},
        bench_model={"t_values": (4096,), "rhos": (1 / 64,),
                     "models": ("cram", "hybrid", "cram-rho1", "none", "transformer"),
                     "repeats": 5, "decode_steps": 16, "memory": False, "threads": 1},
        bench_model_real={"t_values": (2048,), "rhos": (1 / 64,), "sizes": ((512, 4096),),
                          "models": ("cram", "hybrid", "transformer"), "modes": ("train", "decode"), "repeats": 2,
                          "decode_steps": 8, "memory": False, "threads": 1},
        text_sets=_QUICK_TEXT,
        redundancy={"max_tokens": 3000, "bootstrap": 300, "gate": False, "context_swap": False},
    ),
    "full": Scale(
        name="full",
        preset="paper",
        train_sets=(),
        seeds=(0, 1, 2),
        baselines=("random", "stride", "oracle-pos", "learned-static"),
        eval_sequences=4096,
        fit={"resamples": 2000, "models": ("M1", "M2", "M3", "M4", "M5", "M6", "M7", "M8")},
        transfer={"overlaps": (0.0, 0.25, 0.5, 0.75, 1.0), "sequences": 2048, "bootstrap": 1000, "conflict": True},
        bound={},
        bench={"ops": ("routed_attention", "ssm_scan", "model_step"), "repeats": 5},
        bench_model={"t_values": (4096, 16384), "rhos": (1.0, 1 / 16, 1 / 64), "repeats": 3},
        bench_model_real={"t_values": (4096, 16384), "rhos": (1 / 16, 1 / 64), "sizes": ((512, 4096), (1024, 32768)),
                          "models": ("cram", "hybrid", "cram-rho1", "transformer"), "repeats": 3},
        text_sets=("train.steps=2000", "train.ckpt_every=250", "train.eval_every=250"),
        redundancy={"max_tokens": 30000, "bootstrap": 1000},
    ),
}

#: scales a user may choose (``tiny`` is for tests)
PUBLIC_SCALES = ("quick", "full")


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise CramError(f"unknown scale {name!r}; choose one of {', '.join(PUBLIC_SCALES)}") from None

"""Pieces every runner of ``cram bound`` shares: the numba warm-up, the timer that counts router
decisions, LEARNED-STATIC's fitting, and log-spaced grids and slopes."""

from __future__ import annotations

import time

import numpy as np

from cramkit.sim.routers import LearnedRouter, OraclePosRouter, Router, fit_learned, parse_router
from cramkit.sim.simulate import Counts, run_cr, simulate_static
from cramkit.sim.srcd import Batch, SRCDConfig, generate, make_world, split_seeds
from cramkit.theory.stats import ols_line

#: world seeds of LEARNED-STATIC's training pools (evaluation worlds use 0, 1, ...)
TRAIN_WORLD_SEED = 1 << 30


def warm_up() -> float:
    """Compile (or load from the numba cache) every kernel on a tiny input; returns seconds."""
    t0 = time.perf_counter()
    cfg = SRCDConfig(n=64, m_r=2, m_e=2, P=4, U=64, v=8, d=1)
    world = make_world(cfg, 0)
    batch = generate(cfg, world, split_seeds("iid", 2))
    for r in (parse_router("RAND_0.5"), OraclePosRouter(), parse_router("STRIDE_2")):
        simulate_static(cfg, batch, r.decide(cfg, batch), w=1, memory=world)
    fit_learned(cfg, [world], rec_budget=4).decide(cfg, batch)
    run_cr(cfg, batch, 2)
    return time.perf_counter() - t0


class Timer:
    """Runs the simulator and counts the router decisions it scored and the seconds it took."""

    def __init__(self) -> None:
        self.decisions = 0
        self.seconds = 0.0

    def static(
        self, cfg: SRCDConfig, batch: Batch, router: Router, *, w: int, memory, world=None
    ) -> Counts:
        t0 = time.perf_counter()
        c = simulate_static(cfg, batch, router.decide(cfg, batch, world), w=w, memory=memory)
        self.seconds += time.perf_counter() - t0
        self.decisions += batch.tokens.size
        return c

    def cr(self, cfg: SRCDConfig, batch: Batch, K: int, state=None):
        t0 = time.perf_counter()
        run = run_cr(cfg, batch, K, state)
        self.seconds += time.perf_counter() - t0
        self.decisions += batch.query_key.size  # CR_K decides at query slots only
        return run


def fit_static(scfg: SRCDConfig, base_seed: int, i: int, cover: bool = False) -> LearnedRouter:
    """LEARNED-STATIC at the i-th n: fitted on one pool, its tables selected on another; both
    drawn from the prior independently of the evaluation pools (world seeds from
    TRAIN_WORLD_SEED on). ``cover`` (used for the leaky layouts of F3) fits until every key of the
    fitting pool was seen: with leak="key_range" every pool has the same keys, so the key table
    then covers them all."""
    fit_world = make_world(scfg, TRAIN_WORLD_SEED + 2 * base_seed)
    val_world = make_world(scfg, TRAIN_WORLD_SEED + 2 * base_seed + 1)
    return fit_learned(
        scfg, [fit_world], validate=[val_world], seed_start=i << 24, cover_pool=cover, max_seqs=5000
    )


def sweep_batch(scfg: SRCDConfig, world, base_seed: int, s: int, batch: int) -> Batch:
    """The ``batch`` IID sequences of seed ``s`` in the sweep (the same seeds at every n)."""
    return generate(scfg, world, split_seeds("iid", batch, start=(base_seed + s) * batch))


def log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """OLS slope of log y against log x."""
    return ols_line(np.log(x), np.log(y))[0]


def log_grid(lo: int, hi: int, per_decade: int = 20) -> np.ndarray:
    """Integer points log-spaced in [lo, hi] (1-based T values), unique."""
    pts = np.unique(
        np.round(
            np.logspace(np.log10(lo), np.log10(hi), max(2, int(per_decade * np.log10(hi / lo)) + 1))
        )
    )
    return pts.astype(np.int64)

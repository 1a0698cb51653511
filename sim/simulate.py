"""The exact L1 routing-cost simulator (docs/theory.md §7, level L1): model (R) with a w-slot cache.

Model (R): an attended query slot returns the value bound to its key in the context, so an
attended prediction is always right. A skipped query slot is answered, in this order, from

1. the state: a cache of the last ``w`` context bindings (chosen by position, so independently of
   the query types; S = w·(⌈log₂U⌉ + ⌈log₂v⌉) bits);
2. the semantic memory M (a key -> value table fixed given the pool; ``memory=None`` for none);
3. otherwise the simulator predicts null, which is wrong. It never guesses, so every count is exact.

CR_K (Theorem 2) is simulated separately over a *stream* of sequences with a persistent table:
:func:`run_cr`. Both kernels are numba-compiled over whole batches from :func:`cramkit.sim.srcd.generate`.

Per-sequence counts (all exact integers): A (attended positions), A_q, A_rec, A_epi, Π_A
(Σ of 1-based attended positions), correct_rec, correct_epi, C_skip (skipped episodic slots answered
correctly), m_r, m_e; φ follows from A and Π_A by the FLOP model of ``cramkit.theory.bounds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from cramkit.errors import CramError
from cramkit.sim.srcd import Batch, SRCDConfig, World

COUNT_FIELDS = ("A", "A_q", "A_rec", "A_epi", "Pi_A", "correct_rec", "correct_epi", "C_skip")


@dataclass
class Counts:
    """Exact per-sequence counts of one router on a batch: each field has shape (B,)."""

    A: np.ndarray
    A_q: np.ndarray
    A_rec: np.ndarray
    A_epi: np.ndarray
    Pi_A: np.ndarray
    correct_rec: np.ndarray
    correct_epi: np.ndarray
    C_skip: np.ndarray
    m_r: np.ndarray
    m_e: np.ndarray
    n: int

    @classmethod
    def from_array(cls, out: np.ndarray, m_r: np.ndarray, m_e: np.ndarray, n: int) -> Counts:
        return cls(*(out[:, i].copy() for i in range(len(COUNT_FIELDS))), m_r=m_r, m_e=m_e, n=n)

    def __len__(self) -> int:
        return int(self.A.size)

    @property
    def acc_r(self) -> np.ndarray:
        """Per-sequence recurring accuracy (NaN where m_r = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.m_r > 0, self.correct_rec / np.maximum(self.m_r, 1), np.nan)

    @property
    def acc_e(self) -> np.ndarray:
        """Per-sequence episodic accuracy (NaN where m_e = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.m_e > 0, self.correct_epi / np.maximum(self.m_e, 1), np.nan)

    @property
    def acc(self) -> np.ndarray:
        """Per-sequence micro accuracy over all query slots."""
        return (self.correct_rec + self.correct_epi) / (self.m_r + self.m_e)

    @property
    def skip_e(self) -> np.ndarray:
        """Per-sequence fraction of episodic slots skipped (NaN where m_e = 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.m_e > 0, 1 - self.A_epi / np.maximum(self.m_e, 1), np.nan)

    @property
    def rho_q(self) -> np.ndarray:
        return self.A_q / (self.m_r + self.m_e)

    @property
    def rho_all(self) -> np.ndarray:
        return self.A / self.n

    def phi(self, d_model: int) -> np.ndarray:
        """Attention-FLOP fraction F_route/F_all of one layer of width ``d_model`` (docs/theory.md §1)."""
        d = float(d_model)
        n = float(self.n)
        f_all = 8 * d * d * n + 2 * d * n * (n + 1)
        return (4 * d * d * n + 4 * d * d * self.A + 4 * d * self.Pi_A) / f_all

    def total(self, name: str) -> int:
        return int(getattr(self, name).sum())


# ----------------------------------------------------------------------------------------------
# static routers: score a decision matrix
# ----------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _score_kernel(tokens, r, qpos, qkey, qtarget, qrec, bpos, w, mem, stamp, cval, out):
    B, n = tokens.shape
    n_q = qpos.shape[1]
    nb = bpos.shape[1]
    for b in range(B):
        a = 0
        pia = 0
        for t in range(n):
            if r[b, t]:
                a += 1
                pia += t + 1
        # the state at SEP: the last w context bindings (by position, type-blind)
        mark = b + 1
        lo = nb - w if w < nb else 0
        for i in range(lo, nb):
            p = bpos[b, i]
            k = tokens[b, p]
            stamp[k] = mark
            cval[k] = tokens[b, p + 1]
        aq = 0
        arec = 0
        aepi = 0
        crec = 0
        cepi = 0
        cskip = 0
        for i in range(n_q):
            p = qpos[b, i]
            k = qkey[b, i]
            y = qtarget[b, i]
            rec = qrec[b, i]
            if r[b, p]:
                aq += 1
                if rec:
                    arec += 1
                    crec += 1
                else:
                    aepi += 1
                    cepi += 1
                continue
            if stamp[k] == mark:
                pred = cval[k]
            else:
                pred = mem[k]  # -1 when the memory does not know k: a null prediction
            if pred == y:
                if rec:
                    crec += 1
                else:
                    cepi += 1
                    cskip += 1
        out[b, 0] = a
        out[b, 1] = aq
        out[b, 2] = arec
        out[b, 3] = aepi
        out[b, 4] = pia
        out[b, 5] = crec
        out[b, 6] = cepi
        out[b, 7] = cskip


def memory_table(cfg: SRCDConfig, world: World | None) -> np.ndarray:
    """The semantic memory M as a dense key-token -> value-token table (-1 = unknown key)."""
    mem = np.full(cfg.vocab_size, -1, dtype=np.int64)
    if world is not None:
        mem[world.keys] = world.values
    return mem


def _check_batch(cfg: SRCDConfig, batch: Batch) -> None:
    if batch.tokens.ndim != 2 or batch.tokens.shape[1] != cfg.n:
        raise CramError(f"batch tokens must have shape (B, {cfg.n}), got {batch.tokens.shape}")
    if batch.query_pos.shape[1] != cfg.n_q:
        raise CramError(
            f"batch has {batch.query_pos.shape[1]} query slots, the config says {cfg.n_q}"
        )


def simulate_static(
    cfg: SRCDConfig,
    batch: Batch,
    decisions: np.ndarray,
    *,
    w: int,
    memory: World | None = None,
) -> Counts:
    """Exact counts of a decision matrix ``decisions`` (B, n) on ``batch`` under model (R).

    ``w``: cache slots (the last w context bindings); ``memory``: the world whose pool the
    semantic memory knows (None: no memory).
    """
    _check_batch(cfg, batch)
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0:
        raise CramError(f"cache size w must be a non-negative integer, got {w!r}")
    r = np.ascontiguousarray(decisions, dtype=np.uint8)
    if r.shape != batch.tokens.shape:
        raise CramError(f"decisions must have shape {batch.tokens.shape}, got {r.shape}")
    B = len(batch)
    out = np.zeros((B, len(COUNT_FIELDS)), dtype=np.int64)
    stamp = np.zeros(cfg.vocab_size, dtype=np.int64)
    cval = np.zeros(cfg.vocab_size, dtype=np.int64)
    _score_kernel(
        batch.tokens, r, batch.query_pos, batch.query_key, batch.query_target,
        batch.query_recurring, batch.binding_pos, int(w), memory_table(cfg, memory),
        stamp, cval, out,
    )  # fmt: skip
    m_r = batch.query_recurring.sum(axis=1).astype(np.int64)
    m_e = cfg.n_q - m_r
    return Counts.from_array(out, m_r, m_e, cfg.n)


# ----------------------------------------------------------------------------------------------
# CR_K over a stream
# ----------------------------------------------------------------------------------------------


@dataclass
class CRState:
    """CR_K's consolidation table: per key token, the stored value token and its count."""

    value: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls, cfg: SRCDConfig) -> CRState:
        return cls(np.full(cfg.vocab_size, -1, np.int64), np.zeros(cfg.vocab_size, np.int64))

    def copy(self) -> CRState:
        return CRState(self.value.copy(), self.count.copy())

    def consolidated(self, K: int) -> np.ndarray:
        """Key tokens whose count has reached K (they are skipped)."""
        return np.flatnonzero(self.count >= K)


@numba.njit(cache=True)
def _cr_kernel(qpos, qkey, qtarget, qrec, K, verify, value, count, attend, correct, out):
    B, n_q = qkey.shape
    for b in range(B):
        arec = 0
        aepi = 0
        pia = 0
        crec = 0
        cepi = 0
        cskip = 0
        for i in range(n_q):
            k = qkey[b, i]
            y = qtarget[b, i]
            rec = qrec[b, i]
            if count[k] >= K:
                attend[b, i] = 0
                correct[b, i] = value[k] == y
                if value[k] == y:
                    if rec:
                        crec += 1
                    else:
                        cepi += 1
                        cskip += 1
                elif verify:
                    # teacher forcing shows the true value after the prediction: restart the count
                    value[k] = y
                    count[k] = 1
            else:
                attend[b, i] = 1
                correct[b, i] = 1
                pia += qpos[b, i] + 1
                if rec:
                    arec += 1
                    crec += 1
                else:
                    aepi += 1
                    cepi += 1
                if count[k] > 0 and value[k] == y:
                    count[k] += 1
                else:
                    value[k] = y
                    count[k] = 1
        out[b, 0] = arec + aepi
        out[b, 1] = arec + aepi
        out[b, 2] = arec
        out[b, 3] = aepi
        out[b, 4] = pia
        out[b, 5] = crec
        out[b, 6] = cepi
        out[b, 7] = cskip


@dataclass
class CRRun:
    """CR_K on a stream: per-sequence counts, per-slot attend and correct flags (T, n_q), the
    final table."""

    K: int
    counts: Counts
    attend: np.ndarray
    correct: np.ndarray
    state: CRState = field(repr=False)

    def decisions(self, batch: Batch, n: int) -> np.ndarray:
        """The (B, n) decision matrix (CR attends only at query slots)."""
        r = np.zeros((self.attend.shape[0], n), dtype=np.uint8)
        np.put_along_axis(r, batch.query_pos, self.attend, axis=1)
        return r


def run_cr(
    cfg: SRCDConfig, batch: Batch, K: int, state: CRState | None = None, *, verify: bool = False
) -> CRRun:
    """Run CR_K over the sequences of ``batch`` in order (a stream), from ``state`` (empty if None).

    The state passed in is not modified; the final state is returned in the result. With
    ``verify`` (the verifying variant of H11), a skipped prediction that the teacher-forced next
    token shows to be wrong resets the key's entry to (true value, 1), so it is attended again.
    """
    _check_batch(cfg, batch)
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise CramError(f"CR_K needs an integer K >= 1, got {K!r}")
    st = CRState.empty(cfg) if state is None else state.copy()
    B = len(batch)
    out = np.zeros((B, len(COUNT_FIELDS)), dtype=np.int64)
    attend = np.zeros((B, cfg.n_q), dtype=np.uint8)
    correct = np.zeros((B, cfg.n_q), dtype=np.uint8)
    _cr_kernel(
        batch.query_pos, batch.query_key, batch.query_target, batch.query_recurring,
        int(K), bool(verify), st.value, st.count, attend, correct, out,
    )  # fmt: skip
    m_r = batch.query_recurring.sum(axis=1).astype(np.int64)
    return CRRun(
        int(K), Counts.from_array(out, m_r, cfg.n_q - m_r, cfg.n), attend, correct.astype(bool), st
    )


def distinct_patterns_cum(batch: Batch) -> np.ndarray:
    """D_T: the number of distinct pool patterns queried in sequences 0..T-1, for every T."""
    ranks = batch.query_rank
    B = ranks.shape[0]
    rows = np.broadcast_to(np.arange(B)[:, None], ranks.shape)
    sel = ranks >= 0
    r, first_row = ranks[sel], rows[sel]  # row-major: the first occurrence comes first
    _, first = np.unique(r, return_index=True)
    return np.cumsum(np.bincount(first_row[first], minlength=B))


def max_episodic_multiplicity(batch: Batch) -> int:
    """R: the largest number of times one episodic key is queried in the stream."""
    keys = batch.query_key[~batch.query_recurring]
    if keys.size == 0:
        return 0
    return int(np.unique(keys, return_counts=True)[1].max())


def concat_batches(batches: list[Batch]) -> Batch:
    """One batch from several (a stream in order)."""
    if not batches:
        raise CramError("no batches to concatenate")
    names = [f for f in Batch.__dataclass_fields__]
    return Batch(**{k: np.concatenate([getattr(b, k) for b in batches]) for k in names})


def relabel(
    cfg: SRCDConfig, batch: Batch, b: int, recurring: tuple[int, ...] | list[int], *, seed: int = 0
) -> tuple[SRCDConfig, Batch, World]:
    """Another pool consistent with sequence ``b``: the queries ``recurring`` (indices in query
    order) recur, the others are episodic (docs/theory.md §6, H3/H4/H6).

    Returns (config, one-sequence batch with the same tokens and the new labels, world). The pool
    holds the chosen queried keys with their in-context values and is filled up to P with keys
    that do not occur in the sequence (random values); ranks are in the order given.
    """
    rec = sorted({int(i) for i in recurring})
    n_q = cfg.n_q
    if any(i < 0 or i >= n_q for i in rec):
        raise CramError(f"query indices must lie in [0, {n_q}), got {rec}")
    if len(rec) > cfg.P:
        raise CramError(f"{len(rec)} recurring queries do not fit a pool of P = {cfg.P}")
    new_cfg = cfg.replace(m_r=len(rec), m_e=n_q - len(rec))
    rng = np.random.default_rng(seed)
    qkey = batch.query_key[b]
    qtarget = batch.query_target[b]
    used = set((batch.tokens[b][batch.binding_pos[b]] - cfg.key_offset).tolist())
    free = np.setdiff1d(np.arange(cfg.U, dtype=np.int64), np.fromiter(used, np.int64, len(used)))
    fill = rng.choice(free, size=cfg.P - len(rec), replace=False)
    keys = np.concatenate([qkey[rec] - cfg.key_offset, fill]).astype(np.int64)
    values = np.concatenate(
        [qtarget[rec] - cfg.value_offset, rng.integers(0, cfg.v, size=cfg.P - len(rec))]
    ).astype(np.int64)
    w = np.arange(1, cfg.P + 1, dtype=np.float64) ** (-float(cfg.alpha))
    world = World(
        keys=keys + cfg.key_offset,
        values=values + cfg.value_offset,
        probs=w / w.sum(),
        seed=int(seed),
        shared=np.zeros(cfg.P, dtype=bool),
        reserved=np.sort(keys),
        kind="relabelled",
    )
    mask = np.zeros(n_q, dtype=bool)
    mask[rec] = True
    rank = np.full(n_q, -1, dtype=np.int64)
    rank[rec] = np.arange(len(rec))
    one = Batch(
        tokens=batch.tokens[b : b + 1].copy(),
        query_pos=batch.query_pos[b : b + 1].copy(),
        query_key=batch.query_key[b : b + 1].copy(),
        query_target=batch.query_target[b : b + 1].copy(),
        query_recurring=mask[None, :],
        query_rank=rank[None, :],
        query_overridden=np.zeros((1, n_q), dtype=bool),
        binding_pos=batch.binding_pos[b : b + 1].copy(),
        binding_query=batch.binding_query[b : b + 1].copy(),
        seeds=batch.seeds[b : b + 1].copy(),
    )
    return new_cfg, one, world


def take(batch: Batch, idx) -> Batch:
    """The sequences ``idx`` (an index, slice or index array) of ``batch`` as a new batch."""
    sel = np.atleast_1d(np.arange(len(batch))[idx])
    return Batch(**{k: getattr(batch, k)[sel] for k in Batch.__dataclass_fields__})

"""Simulated routers (docs/theory.md §1): decision matrices r[b, t] ∈ {0, 1} over whole SRCD batches.

Static (pool-oblivious) routers compute ``decide(cfg, batch)`` from the tokens, the position and
independent randomness only; they never read the world. The family:

- ``ALL`` (r ≡ 1), ``STRIDE_s`` (r_t = 1[s | t], t 1-based), ``RAND_p`` (Bernoulli(p), from a hash
  of the sequence seed and the position), ``ORACLE-POS`` (r_t = 1[x_{t-1} = ASK]: it knows the
  layout, not the types), ``SKIP-ALL+M`` (r ≡ 0; answers from the semantic memory),
- ``LEARNED-STATIC``: a learned threshold/lookup router on the token and the query position,
  fitted on *other* pools and then frozen (:func:`fit_learned`),
- test-only families for the properties: ``HashRouter`` (a threshold on a hash of x_t) and
  ``MaskRouter`` (a fixed position mask).

Pool-aware routers (``static = False``) may read the world: :class:`PoolKeyRouter` (attends
query slots whose key is not in the pool — the "static" scheme that secretly knows the pool) and a
LEARNED router fitted on the evaluation pool (control F2). CR_K is simulated by
:func:`cramkit.sim.simulate.run_cr`; :class:`CRRouter` names it in the registry.
"""

from __future__ import annotations

import abc
import math
import re
from dataclasses import dataclass, field

import numba
import numpy as np

from cramkit.errors import CramError
from cramkit.sim.srcd import Batch, SRCDConfig, World, generate, split_seeds

# ----------------------------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------------------------

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True, inline="always")
def _splitmix(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(cache=True)
def _rand_kernel(seeds, n, threshold, salt, r):
    for b in range(seeds.shape[0]):
        h0 = _splitmix(np.uint64(seeds[b]) ^ salt)
        for t in range(n):
            h = _splitmix(h0 ^ np.uint64(t))
            r[b, t] = (h >> np.uint64(11)) < threshold


@numba.njit(cache=True)
def _hash_kernel(tokens, threshold, salt, r):
    B, n = tokens.shape
    for b in range(B):
        for t in range(n):
            h = _splitmix(np.uint64(tokens[b, t]) ^ salt)
            r[b, t] = (h >> np.uint64(11)) < threshold


@numba.njit(cache=True)
def _oracle_kernel(tokens, ask, r):
    B, n = tokens.shape
    for b in range(B):
        for t in range(1, n):
            r[b, t] = tokens[b, t - 1] == ask


@numba.njit(cache=True)
def _learned_kernel(tokens, ask, key_offset, skip_key, skip_bucket, shift, skip_q, r):
    B, n = tokens.shape
    U = skip_key.shape[0]
    nq = skip_q.shape[0]
    for b in range(B):
        q = 0
        for t in range(1, n):
            if tokens[b, t - 1] != ask:
                continue
            k = tokens[b, t] - key_offset
            skip = False
            if 0 <= k < U:
                skip = skip_key[k] or skip_bucket[k >> shift]
            if q < nq and skip_q[q]:
                skip = True
            r[b, t] = not skip
            q += 1


def _threshold(p: float) -> np.uint64:
    """A 53-bit integer threshold: a uniform 53-bit draw is below it with probability p."""
    return np.uint64(int(round(p * (1 << 53))))


# ----------------------------------------------------------------------------------------------
# routers
# ----------------------------------------------------------------------------------------------


class Router(abc.ABC):
    """Base class: ``decide(cfg, batch, world=None)`` returns a (B, n) uint8 decision matrix.

    ``static`` is True for pool-oblivious routers, which must not read ``world``.
    """

    name: str = "router"
    static: bool = True

    @abc.abstractmethod
    def decide(self, cfg: SRCDConfig, batch: Batch, world: World | None = None) -> np.ndarray:
        """The (B, n) uint8 decision matrix of this router on ``batch``."""

    def __repr__(self) -> str:
        return f"<{self.name}>"


@dataclass(frozen=True, repr=False)
class AllRouter(Router):
    name: str = "ALL"

    def decide(self, cfg, batch, world=None):
        return np.ones(batch.tokens.shape, dtype=np.uint8)


@dataclass(frozen=True, repr=False)
class SkipAllRouter(Router):
    """r ≡ 0; with the semantic memory M it answers recurring slots from M (SKIP-ALL+M)."""

    name: str = "SKIP-ALL+M"

    def decide(self, cfg, batch, world=None):
        return np.zeros(batch.tokens.shape, dtype=np.uint8)


@dataclass(frozen=True, repr=False)
class StrideRouter(Router):
    s: int = 2
    name: str = field(default="", init=False)

    def __post_init__(self):
        if isinstance(self.s, bool) or not isinstance(self.s, (int, np.integer)) or self.s < 1:
            raise CramError(f"STRIDE_s needs an integer s >= 1, got {self.s!r}")
        object.__setattr__(self, "name", f"STRIDE_{self.s}")

    def decide(self, cfg, batch, world=None):
        t = np.arange(1, batch.tokens.shape[1] + 1)
        row = (t % self.s == 0).astype(np.uint8)
        return np.broadcast_to(row, batch.tokens.shape).copy()


@dataclass(frozen=True, repr=False)
class RandRouter(Router):
    """Bernoulli(p) at every position; the randomness ξ is a hash of (sequence seed, t, salt),
    independent of the contents."""

    p: float = 0.5
    salt: int = 0x52414E44
    name: str = field(default="", init=False)

    def __post_init__(self):
        if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and 0 <= self.p <= 1):
            raise CramError(f"RAND_p needs p in [0, 1], got {self.p!r}")
        object.__setattr__(self, "name", f"RAND_{_fmt(self.p)}")

    def decide(self, cfg, batch, world=None):
        r = np.zeros(batch.tokens.shape, dtype=np.uint8)
        _rand_kernel(
            batch.seeds, batch.tokens.shape[1], _threshold(self.p), np.uint64(self.salt), r
        )
        return r


@dataclass(frozen=True, repr=False)
class OraclePosRouter(Router):
    """Attends exactly the query slots (it knows the layout, not the query types)."""

    name: str = "ORACLE-POS"

    def decide(self, cfg, batch, world=None):
        r = np.zeros(batch.tokens.shape, dtype=np.uint8)
        _oracle_kernel(batch.tokens, cfg.ASK, r)
        return r


@dataclass(frozen=True, repr=False)
class HashRouter(Router):
    """Attends position t iff a hash of the token x_t falls below a threshold (probability p)."""

    p: float = 0.5
    salt: int = 0x48415348
    name: str = field(default="", init=False)

    def __post_init__(self):
        object.__setattr__(self, "name", f"HASH_{_fmt(self.p)}")

    def decide(self, cfg, batch, world=None):
        r = np.zeros(batch.tokens.shape, dtype=np.uint8)
        _hash_kernel(batch.tokens, _threshold(self.p), np.uint64(self.salt), r)
        return r


@dataclass(frozen=True, repr=False)
class MaskRouter(Router):
    """Attends the positions of a fixed 0/1 mask over 0..n-1."""

    mask: tuple[int, ...] = ()
    name: str = "MASK"

    def decide(self, cfg, batch, world=None):
        m = np.asarray(self.mask, dtype=np.uint8)
        if m.size != batch.tokens.shape[1]:
            raise CramError(
                f"mask has length {m.size}, the sequences have length {batch.tokens.shape[1]}"
            )
        return np.broadcast_to(m, batch.tokens.shape).copy()


@dataclass(frozen=True, repr=False)
class PoolKeyRouter(Router):
    """NOT static: attends a query slot iff its key is outside the pool. It reads the world, so it
    breaks (N)/pool-obliviousness; the property tests use it to show that H3 and H6 can fail."""

    name: str = "POOL-KEY"
    static: bool = False

    def decide(self, cfg, batch, world=None):
        if world is None:
            raise CramError("POOL-KEY reads the pool: pass the world")
        r = np.zeros(batch.tokens.shape, dtype=np.uint8)
        _oracle_kernel(batch.tokens, cfg.ASK, r)
        in_pool = np.isin(batch.tokens, world.keys)
        r[in_pool] = 0
        return r


@dataclass(frozen=True)
class CRRouter:
    """CR_K: consolidating; its decisions depend on the stream seen so far, so it is simulated
    by :func:`cramkit.sim.simulate.run_cr` rather than by a decision matrix."""

    K: int = 2
    name: str = field(default="", init=False)
    static: bool = False

    def __post_init__(self):
        if isinstance(self.K, bool) or not isinstance(self.K, (int, np.integer)) or self.K < 1:
            raise CramError(f"CR_K needs an integer K >= 1, got {self.K!r}")
        object.__setattr__(self, "name", f"CR_{self.K}")


# ----------------------------------------------------------------------------------------------
# LEARNED-STATIC
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class LearnedRouter(Router):
    """A learned threshold/lookup router on (token, query position), frozen after fitting.

    It only acts at query slots (x_{t-1} = ASK). It skips a slot when any of three learned
    tables says the slot's feature value was, in training, seen only at recurring slots:
    ``skip_key`` (exact key id, seen recurring and never episodic), ``skip_bucket`` (key id >>
    ``shift``) and ``skip_q`` (index of the slot in the query block); the last two only when
    the training evidence rules out chance (see :func:`fit_learned`). ``static`` is True when it
    was fitted on pools other than the evaluation pool.
    """

    skip_key: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    skip_bucket: np.ndarray = field(default_factory=lambda: np.zeros(1, bool))
    shift: int = 0
    skip_q: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    trained_on: tuple[int, ...] = ()
    name: str = "LEARNED-STATIC"
    static: bool = True

    def decide(self, cfg, batch, world=None):
        if self.skip_key.size != cfg.U:
            raise CramError(
                f"this router was fitted for U = {self.skip_key.size}, the config has U = {cfg.U}"
            )
        r = np.zeros(batch.tokens.shape, dtype=np.uint8)
        _learned_kernel(
            batch.tokens, cfg.ASK, cfg.key_offset, self.skip_key, self.skip_bucket,
            self.shift, self.skip_q, r,
        )  # fmt: skip
        return r


def purity_count(m_r: int, n_q: int, delta: float) -> int:
    """Observations needed before 'only recurring so far' is evidence: the smallest c with
    (m_r/n_q)^c <= delta, i.e. all-recurring by chance has probability <= delta."""
    if m_r >= n_q:
        return 1 << 62
    if m_r == 0:
        return 1
    return int(math.ceil(math.log(delta) / math.log(m_r / n_q)))


def _slot_counts(
    cfg: SRCDConfig, world: World, n_seqs: int, start: int, tables, cover_pool: bool, max_seqs: int
):
    """Add the (key, query index) label counts of ``n_seqs`` TRAIN sequences of ``world``."""
    rec_key, epi_key, rec_q, epi_q = tables
    todo, seen = n_seqs, 0
    while todo > 0:
        chunk = min(todo, 512)
        batch = generate(cfg, world, split_seeds("train", chunk, start))
        start += chunk
        seen += chunk
        k = batch.query_key - cfg.key_offset
        rec = batch.query_recurring
        np.add.at(rec_key, k[rec], 1)
        np.add.at(epi_key, k[~rec], 1)
        rec_q += rec.sum(axis=0)
        epi_q += (~rec).sum(axis=0)
        todo -= chunk
        if todo == 0 and cover_pool and seen < max_seqs:
            if (rec_key[world.keys - cfg.key_offset] == 0).any():
                todo = min(512, max_seqs - seen)
    return start


def fit_learned(
    cfg: SRCDConfig,
    worlds: list[World],
    *,
    validate: list[World] | None = None,
    rec_budget: int = 4096,
    delta: float = 1e-6,
    cover_pool: bool = False,
    max_seqs: int = 20000,
    seed_start: int = 0,
    static: bool = True,
    name: str = "LEARNED-STATIC",
    n_buckets: int = 256,
) -> LearnedRouter:
    """Fit a :class:`LearnedRouter` on TRAIN sequences from ``worlds``, select its tables on
    ``validate`` (default: the training worlds), and freeze it.

    Each world contributes max(⌈rec_budget/m_r⌉, c + 1) sequences, c = :func:`purity_count`, so
    every query index is seen often enough to be tested. A key-id bucket or query index enters a
    skip table only if it was seen ≥ c times and never at an episodic slot (all-recurring by chance
    has probability ≤ delta); a key enters the key table if it was seen recurring and never
    episodic. Validation: a table is dropped if it would skip any episodic slot of the validation
    sequences, or skips fewer than c recurring ones there (a rule that does not carry over to other
    pools, or is not seen to, is not kept). With ``cover_pool``
    (control F2: fitting on the evaluation pool) sequences are added until every pool key has been
    seen or ``max_seqs`` is reached.
    """
    if not worlds:
        raise CramError("fit_learned needs at least one training world")
    if not 0 < delta < 1:
        raise CramError(f"delta must be in (0, 1), got {delta}")
    c_need = purity_count(cfg.m_r, cfg.n_q, delta)
    shift = max(0, (cfg.U - 1).bit_length() - int(math.log2(n_buckets)))
    nb = ((cfg.U - 1) >> shift) + 1
    per_world = max(int(math.ceil(rec_budget / max(cfg.m_r, 1))), min(c_need + 1, max_seqs))
    tables = (
        np.zeros(cfg.U, np.int64),
        np.zeros(cfg.U, np.int64),
        np.zeros(cfg.n_q, np.int64),
        np.zeros(cfg.n_q, np.int64),
    )
    start = seed_start
    for world in worlds:
        start = _slot_counts(cfg, world, per_world, start, tables, cover_pool, max_seqs)
    rec_key, epi_key, rec_q, epi_q = tables
    bucket_of = np.arange(cfg.U) >> shift
    rec_b = np.bincount(bucket_of, weights=rec_key, minlength=nb)
    epi_b = np.bincount(bucket_of, weights=epi_key, minlength=nb)
    skip_key = (rec_key > 0) & (epi_key == 0)
    skip_bucket = (rec_b >= c_need) & (epi_b == 0)
    skip_q = (rec_q >= c_need) & (epi_q == 0)
    # validation: a table is kept only if, on the validation pools, it skips no episodic slot and
    # at least c recurring ones (so that "no episodic slot" is evidence, not chance)
    vt = (
        np.zeros(cfg.U, np.int64),
        np.zeros(cfg.U, np.int64),
        np.zeros(cfg.n_q, np.int64),
        np.zeros(cfg.n_q, np.int64),
    )
    for world in validate if validate is not None else worlds:
        start = _slot_counts(cfg, world, per_world, start, vt, False, max_seqs)
    v_rec_key, v_epi_key, v_rec_q, v_epi_q = vt
    v_rec_b = np.bincount(bucket_of, weights=v_rec_key, minlength=nb)
    v_epi_b = np.bincount(bucket_of, weights=v_epi_key, minlength=nb)

    def keep(table, rec, epi):
        return (
            table if epi[table].sum() == 0 and rec[table].sum() >= c_need else np.zeros_like(table)
        )

    skip_key = keep(skip_key, v_rec_key, v_epi_key)
    skip_bucket = keep(skip_bucket, v_rec_b, v_epi_b)
    skip_q = keep(skip_q, v_rec_q, v_epi_q)
    return LearnedRouter(
        skip_key=skip_key,
        skip_bucket=skip_bucket,
        shift=shift,
        skip_q=skip_q,
        trained_on=tuple(int(wd.seed) for wd in worlds),
        name=name,
        static=static,
    )


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

DEFAULT_STATIC = (
    "ALL", "STRIDE_2", "STRIDE_4", "STRIDE_8",
    "RAND_0.1", "RAND_0.3", "RAND_0.5", "RAND_0.7", "RAND_0.9", "RAND_1",
    "ORACLE-POS", "LEARNED-STATIC", "SKIP-ALL+M",
)  # fmt: skip

_PATTERNS = "ALL, STRIDE_<s>, RAND_<p>, ORACLE-POS, LEARNED-STATIC, SKIP-ALL+M, CR_<K>"


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_router(name: str) -> Router | CRRouter:
    """A router from its name (LEARNED-STATIC is returned unfitted: fit it with :func:`fit_learned`)."""
    if not isinstance(name, str):
        raise CramError(f"a router name must be a string, got {name!r}")
    key = name.strip().upper()
    fixed = {
        "ALL": AllRouter,
        "ORACLE-POS": OraclePosRouter,
        "SKIP-ALL+M": SkipAllRouter,
        "LEARNED-STATIC": LearnedRouter,
    }
    if key in fixed:
        return fixed[key]()
    m = re.fullmatch(r"STRIDE_(\d+)", key)
    if m and int(m.group(1)) >= 1:
        return StrideRouter(int(m.group(1)))
    m = re.fullmatch(r"RAND_(\d*\.?\d+)", key)
    if m and float(m.group(1)) <= 1:
        return RandRouter(float(m.group(1)))
    m = re.fullmatch(r"CR_(\d+)", key)
    if m and int(m.group(1)) >= 1:
        return CRRouter(int(m.group(1)))
    raise CramError(
        f"unknown router {name!r}; known forms: {_PATTERNS} (s, K >= 1 integers, p in [0, 1])"
    )

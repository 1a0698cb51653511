"""SRCD: the Synthetic Recurring-Context Dictionary benchmark (the one generator of cram).

A *world* is a pool of P recurring key->value patterns with Zipf(alpha) recurrence weights. A
*sequence* is ``BOS``, a context block of bindings ``k y`` (in random order, with filler tokens at
random gaps), ``SEP``, and a query block of ``ASK k y`` triples in random order. Of the n_q queried
keys, m_r come from the pool (recurring: their value is the pool's unless overridden with
probability chi) and m_e are fresh keys with fresh values (episodic). d distractor bindings are
never queried.

The layout rule (what the static lower bound needs): the token-class layout and the query order are
drawn from a random stream seeded by (sequence seed, n, n_q, d) only, so they are identical for
every (m_r, m_e) split and carry no information about which queries recur. Contents (which slots
recur, keys, values) come from a second stream.

Everything is deterministic in (config, world, seeds). The hot loop is numba-compiled.

Example::

    cfg = SRCDConfig(n=256, m_r=8, m_e=8, P=64)
    world = make_world(cfg, seed=0)
    batch = generate(cfg, world, split_seeds("train", 1024))
    batch.tokens.shape            # (1024, 256)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from cramkit.errors import CramError

LEAKS = ("none", "key_range", "position")
SPLITS = ("train", "iid", "fresh", "transfer", "conflict", "struct")
_SPLIT_ID = {name: i for i, name in enumerate(SPLITS)}
_SEED_BITS = 40  # each split owns the seed range [id << 40, (id + 1) << 40)


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SRCDConfig:
    """Parameters of the SRCD task family (docs/srcd.md). Validated on construction.

    n: sequence length; m_r / m_e: recurring / episodic query slots per sequence; P: pool size;
    alpha: Zipf exponent of pattern recurrence (0 = uniform); U: number of key tokens; v: number of
    value tokens; d: distractor bindings (never queried); chi: probability that a recurring value
    is overridden in a sequence; n_filler: number of filler token types; leak: "none", or a
    deliberately type-leaking variant used as a negative control ("key_range": pool keys occupy the
    lowest key ids; "position": the first m_r queries are the recurring ones).
    """

    n: int = 256
    m_r: int = 8
    m_e: int = 8
    P: int = 64
    alpha: float = 1.0
    U: int = 2**14
    v: int = 2**10
    d: int = 0
    chi: float = 0.0
    n_filler: int = 16
    leak: str = "none"

    # token ids
    BOS = 0
    SEP = 1
    ASK = 2
    key_offset = 3

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_freq(cls, n: int, f: float, f_e: float, **kw: Any) -> SRCDConfig:
        """Build from frequencies: m_r = round(f·n), m_e = round(f_e·n)."""
        for name, val in (("f", f), ("f_e", f_e)):
            if not (isinstance(val, (int, float)) and math.isfinite(val) and 0 <= val < 1):
                raise CramError(f"{name} must be a number in [0, 1), got {val!r}")
        return cls(n=n, m_r=int(round(f * n)), m_e=int(round(f_e * n)), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SRCDConfig:
        """Strict loader: unknown keys are an error (a misspelled key is never silently dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CramError(f"unknown SRCD parameter(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SRCDConfig:
        """A copy with ``changes`` applied (re-validated). The STRUCT split uses this."""
        return dataclasses.replace(self, **changes)

    # derived quantities -----------------------------------------------------------------------
    @property
    def n_q(self) -> int:
        return self.m_r + self.m_e

    @property
    def f(self) -> float:
        return self.m_r / self.n

    @property
    def f_e(self) -> float:
        return self.m_e / self.n

    @property
    def value_offset(self) -> int:
        return self.key_offset + self.U

    @property
    def filler_offset(self) -> int:
        return self.value_offset + self.v

    @property
    def vocab_size(self) -> int:
        return self.filler_offset + self.n_filler

    def validate(self) -> None:
        """Raise :class:`CramError` naming the first violated constraint."""
        for name in ("n", "m_r", "m_e", "P", "U", "v", "d", "n_filler"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise CramError(f"SRCD parameter {name} must be an integer, got {val!r}")
        for name in ("alpha", "chi"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                raise CramError(f"SRCD parameter {name} must be a finite number, got {val!r}")
        if self.m_r < 0 or self.m_e < 0 or self.d < 0:
            raise CramError(
                f"m_r, m_e and d must be >= 0 (got m_r={self.m_r}, m_e={self.m_e}, d={self.d})"
            )
        if self.n_q < 1:
            raise CramError("a sequence needs at least one query slot (m_r + m_e >= 1)")
        if self.P < 1:
            raise CramError(f"pool size P must be >= 1, got {self.P}")
        if self.alpha < 0:
            raise CramError(f"Zipf exponent alpha must be >= 0, got {self.alpha}")
        if self.v < 2:
            raise CramError(f"need at least 2 value tokens (v >= 2), got v={self.v}")
        if self.n_filler < 1:
            raise CramError(f"need at least one filler token type, got n_filler={self.n_filler}")
        if not 0 <= self.chi <= 1:
            raise CramError(f"override probability chi must be in [0, 1], got {self.chi}")
        if self.leak not in LEAKS:
            raise CramError(f"leak must be one of {LEAKS}, got {self.leak!r}")
        need = 5 * self.n_q + 2 * self.d + 2
        if need > self.n:
            raise CramError(
                f"constraint 5·n_q + 2·d + 2 <= n violated: 5·{self.n_q} + 2·{self.d} + 2 = {need} > n = {self.n}"
            )
        if self.m_r > self.P:
            raise CramError(f"constraint m_r <= P violated: m_r = {self.m_r} > P = {self.P}")
        if self.U < self.P + self.n_q + self.d:
            raise CramError(
                f"constraint U >= P + n_q + d violated: U = {self.U} < {self.P} + {self.n_q} + {self.d}"
            )


# ----------------------------------------------------------------------------------------------
# worlds (pools of recurring patterns)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A pool of P recurring patterns. Index j is rank j+1 (0 = most frequent).

    keys / values are token ids; probs ∝ (j+1)^-alpha; shared marks patterns taken over (same key)
    from a parent world (TRANSFER / CONFLICT); reserved lists every key id (0-based key index)
    that episodic and distractor keys must avoid: this world's keys and its parent's.
    """

    keys: np.ndarray
    values: np.ndarray
    probs: np.ndarray
    seed: int
    shared: np.ndarray
    reserved: np.ndarray = field(repr=False)
    kind: str = "base"

    @property
    def P(self) -> int:
        return int(self.keys.size)

    @property
    def s_eff(self) -> float:
        """Effective overlap with the parent world: Σ_{j shared} p_j."""
        return float(self.probs[self.shared].sum())


def zipf_probs(P: int, alpha: float) -> np.ndarray:
    """p_j ∝ j^-alpha for j = 1..P, normalised."""
    w = np.arange(1, P + 1, dtype=np.float64) ** (-float(alpha))
    return w / w.sum()


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(e) & 0xFFFFFFFFFFFFFFFF for e in entropy])
    )


def make_world(cfg: SRCDConfig, seed: int) -> World:
    """Draw a pool under the uniform pool prior: keys uniform without replacement from the key
    set (ranks by a uniform permutation), values i.i.d. uniform. With leak="key_range" the pool
    keys are the P lowest key ids (a deliberate type leak)."""
    seed = _check_seed(seed, "world seed")
    rng = _rng(seed, 0x5EED)
    if cfg.leak == "key_range":
        idx = rng.permutation(cfg.P)
    else:
        idx = rng.choice(cfg.U, size=cfg.P, replace=False)
    idx = idx.astype(np.int64)
    values = rng.integers(0, cfg.v, size=cfg.P).astype(np.int64)
    return World(
        keys=idx + cfg.key_offset,
        values=values + cfg.value_offset,
        probs=zipf_probs(cfg.P, cfg.alpha),
        seed=seed,
        shared=np.zeros(cfg.P, dtype=bool),
        reserved=np.sort(idx),
        kind="base",
    )


def derive_world(
    parent: World, cfg: SRCDConfig, kind: str, *, s: float = 0.0, seed: int = 1
) -> World:
    """A world related to ``parent`` (the splits of docs/srcd.md).

    - "fresh": P new patterns whose keys are disjoint from the parent's.
    - "transfer": floor(s·P) of the parent's patterns (same key and value) plus new ones, with
      ranks reassigned by a uniform permutation; ``World.s_eff`` gives Σ p'_j over shared patterns.
    - "conflict": as "transfer", but the shared keys are bound to new values (never the old one).
    """
    if kind not in ("fresh", "transfer", "conflict"):
        raise CramError(
            f"derive_world kind must be 'fresh', 'transfer' or 'conflict', got {kind!r}"
        )
    if not (isinstance(s, (int, float)) and math.isfinite(s) and 0 <= s <= 1):
        raise CramError(f"overlap s must be in [0, 1], got {s!r}")
    if parent.P != cfg.P:
        raise CramError(f"parent world has P = {parent.P} but the config says P = {cfg.P}")
    seed = _check_seed(seed, "world seed")
    rng = _rng(parent.seed, seed, {"fresh": 1, "transfer": 2, "conflict": 3}[kind], 0xD1FF)
    n_shared = 0 if kind == "fresh" else int(math.floor(s * cfg.P + 1e-9))
    parent_idx = parent.keys - cfg.key_offset
    free = np.setdiff1d(np.arange(cfg.U, dtype=np.int64), parent.reserved, assume_unique=True)
    n_new = cfg.P - n_shared
    if free.size < n_new:
        raise CramError(
            f"not enough unused keys for a {kind} world: need {n_new}, have {free.size} (increase U)"
        )
    if cfg.leak == "key_range":
        new_idx = free[rng.permutation(n_new)] if n_new else free[:0]
    else:
        new_idx = rng.choice(free, size=n_new, replace=False)
    shared_sel = rng.choice(cfg.P, size=n_shared, replace=False)
    shared_keys = parent_idx[shared_sel]
    shared_vals = parent.values[shared_sel] - cfg.value_offset
    if kind == "conflict" and n_shared:
        r = rng.integers(0, cfg.v - 1, size=n_shared)
        shared_vals = r + (r >= shared_vals)  # uniform over the other v-1 values
    keys = np.concatenate([shared_keys, new_idx]).astype(np.int64)
    values = np.concatenate([shared_vals, rng.integers(0, cfg.v, size=n_new)]).astype(np.int64)
    shared = np.concatenate([np.ones(n_shared, bool), np.zeros(n_new, bool)])
    perm = rng.permutation(cfg.P)  # ranks reassigned at random
    keys, values, shared = keys[perm], values[perm], shared[perm]
    return World(
        keys=keys + cfg.key_offset,
        values=values + cfg.value_offset,
        probs=zipf_probs(cfg.P, cfg.alpha),
        seed=seed,
        shared=shared,
        reserved=np.union1d(parent.reserved, keys),
        kind=kind,
    )


# ----------------------------------------------------------------------------------------------
# seeds
# ----------------------------------------------------------------------------------------------


def _check_seed(seed: Any, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CramError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def split_seeds(split: str, count: int, start: int = 0) -> np.ndarray:
    """Sequence seeds for a split; every split owns a disjoint range ``[id·2^40, (id+1)·2^40)``."""
    if split not in _SPLIT_ID:
        raise CramError(f"unknown split {split!r}; choose one of {SPLITS}")
    count = _check_seed(count, "count")
    start = _check_seed(start, "start")
    if start + count > (1 << _SEED_BITS):
        raise CramError(f"start + count must be < 2^{_SEED_BITS}")
    return (np.int64(_SPLIT_ID[split]) << _SEED_BITS) + start + np.arange(count, dtype=np.int64)


def split_of_seed(seed: int) -> str:
    """The split a sequence seed belongs to."""
    return SPLITS[int(seed) >> _SEED_BITS]


def _mix(*parts: np.ndarray | int) -> np.ndarray:
    """SplitMix64-style hash of integer parts -> uint32 seeds (vectorised)."""
    with np.errstate(over="ignore"):
        h = np.zeros(np.broadcast(*[np.asarray(p) for p in parts]).shape, dtype=np.uint64)
        for p in parts:
            h = h ^ np.asarray(p, dtype=np.int64).astype(np.uint64)
            h = h + np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return (h & np.uint64(0xFFFFFFFF)).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A batch of SRCD sequences (numpy arrays; B sequences of length n).

    tokens (B, n); per query (in query order) query_pos (the position of the key token in the query
    block; the target is the next token), query_key, query_target, query_recurring (type label —
    for scoring and analysis only, never for training), query_rank (pool index, -1 if episodic),
    query_overridden; per context binding (in context order) binding_pos (position of its key
    token; the value follows) and binding_query (index of the query that asks it, -1 for a
    distractor). seeds: the sequence seeds.
    """

    tokens: np.ndarray
    query_pos: np.ndarray
    query_key: np.ndarray
    query_target: np.ndarray
    query_recurring: np.ndarray
    query_rank: np.ndarray
    query_overridden: np.ndarray
    binding_pos: np.ndarray
    binding_query: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@numba.njit(cache=True)
def _generate_kernel(
    tokens, qpos, qkey, qtarget, qrec, qrank, qover, bpos, bquery,
    layout_seeds, content_seeds, pool_keys, pool_values, log_probs, free_keys,
    n, m_r, m_e, d, chi, v, n_filler, key_offset, value_offset, filler_offset, leak_position,
):  # fmt: skip
    B = tokens.shape[0]
    n_q = m_r + m_e
    nb = n_q + d
    n_fill = n - 2 - 3 * n_q - 2 * nb
    units = nb + n_fill
    P = pool_keys.shape[0]
    F = free_keys.shape[0]
    n_fresh = m_e + d
    unit_is_binding = np.zeros(units, dtype=np.bool_)
    ctx_slot = np.empty(nb, dtype=np.int64)
    qorder = np.empty(n_q, dtype=np.int64)
    slot_query = np.empty(nb, dtype=np.int64)
    fillers = np.empty(max(n_fill, 1), dtype=np.int64)
    slot_key = np.empty(nb, dtype=np.int64)
    slot_val = np.empty(nb, dtype=np.int64)
    slot_rec = np.zeros(nb, dtype=np.bool_)
    slot_rank = np.empty(nb, dtype=np.int64)
    slot_over = np.zeros(nb, dtype=np.bool_)
    gumbel = np.empty(P, dtype=np.float64)
    mark = np.zeros(F, dtype=np.bool_)
    scratch = np.empty(F, dtype=np.int64)
    fresh = np.empty(max(n_fresh, 1), dtype=np.int64)
    for b in range(B):
        # ---- layout stream: depends only on (seed, n, n_q, d) --------------------------------
        np.random.seed(layout_seeds[b])
        for i in range(units):
            unit_is_binding[i] = i < nb
        np.random.shuffle(unit_is_binding)
        for i in range(nb):
            ctx_slot[i] = i
        np.random.shuffle(ctx_slot)
        for i in range(n_q):
            qorder[i] = i
        np.random.shuffle(qorder)
        for i in range(n_fill):
            fillers[i] = np.random.randint(0, n_filler)
        for s in range(nb):
            slot_query[s] = -1
        for i in range(n_q):
            slot_query[qorder[i]] = i
        # ---- content stream -----------------------------------------------------------------
        np.random.seed(content_seeds[b])
        for s in range(nb):
            slot_rec[s] = False
            slot_over[s] = False
            slot_rank[s] = -1
        if leak_position:
            for i in range(m_r):
                slot_rec[qorder[i]] = True
        else:
            perm = np.random.permutation(n_q)
            for i in range(m_r):
                slot_rec[perm[i]] = True
        # pool ranks by successive sampling ∝ p_j (Gumbel top-m_r)
        if m_r > 0:
            for j in range(P):
                u = np.random.random()
                while u <= 0.0:
                    u = np.random.random()
                gumbel[j] = -(log_probs[j] - np.log(-np.log(u)))
            order = np.argsort(gumbel)
            r = 0
            for s in range(n_q):
                if slot_rec[s]:
                    j = order[r]
                    r += 1
                    slot_rank[s] = j
                    slot_key[s] = pool_keys[j]
                    val = pool_values[j]
                    if chi > 0.0 and np.random.random() < chi:
                        o = np.random.randint(0, v - 1)
                        if o >= val:
                            o += 1
                        val = o
                        slot_over[s] = True
                    slot_val[s] = val
        # fresh distinct keys for episodic and distractor slots
        if n_fresh > 0:
            if 4 * n_fresh <= F:  # rejection with a mark array
                c = 0
                while c < n_fresh:
                    i = np.random.randint(0, F)
                    if not mark[i]:
                        mark[i] = True
                        fresh[c] = i
                        c += 1
                for c in range(n_fresh):
                    mark[fresh[c]] = False
            else:  # partial Fisher-Yates
                for i in range(F):
                    scratch[i] = i
                for c in range(n_fresh):
                    i = np.random.randint(c, F)
                    t = scratch[c]
                    scratch[c] = scratch[i]
                    scratch[i] = t
                    fresh[c] = scratch[c]
            c = 0
            for s in range(nb):
                if not slot_rec[s]:
                    slot_key[s] = free_keys[fresh[c]]
                    slot_val[s] = np.random.randint(0, v)
                    c += 1
        # ---- emit ----------------------------------------------------------------------------
        tokens[b, 0] = 0  # BOS
        pos = 1
        bi = 0
        fi = 0
        for u_ in range(units):
            if unit_is_binding[u_]:
                s = ctx_slot[bi]
                tokens[b, pos] = key_offset + slot_key[s]
                tokens[b, pos + 1] = value_offset + slot_val[s]
                bpos[b, bi] = pos
                bquery[b, bi] = slot_query[s]
                bi += 1
                pos += 2
            else:
                tokens[b, pos] = filler_offset + fillers[fi]
                fi += 1
                pos += 1
        tokens[b, pos] = 1  # SEP
        pos += 1
        for i in range(n_q):
            s = qorder[i]
            tokens[b, pos] = 2  # ASK
            tokens[b, pos + 1] = key_offset + slot_key[s]
            tokens[b, pos + 2] = value_offset + slot_val[s]
            qpos[b, i] = pos + 1
            qkey[b, i] = key_offset + slot_key[s]
            qtarget[b, i] = value_offset + slot_val[s]
            qrec[b, i] = slot_rec[s]
            qrank[b, i] = slot_rank[s]
            qover[b, i] = slot_over[s]
            pos += 3


def generate(cfg: SRCDConfig, world: World, seeds: np.ndarray | list[int]) -> Batch:
    """Generate one sequence per seed from ``world`` (deterministic in cfg, world and seeds)."""
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or (seeds.size and not np.issubdtype(seeds.dtype, np.integer)):
        raise CramError("seeds must be a 1-D array of non-negative integers")
    seeds = seeds.astype(np.int64)
    if seeds.size and seeds.min() < 0:
        raise CramError("seeds must be non-negative")
    if world.P != cfg.P:
        raise CramError(f"world has P = {world.P} patterns but the config says P = {cfg.P}")
    free = np.setdiff1d(np.arange(cfg.U, dtype=np.int64), world.reserved, assume_unique=True)
    if free.size < cfg.m_e + cfg.d:
        raise CramError(
            f"only {free.size} keys are outside the pool(s); need m_e + d = {cfg.m_e + cfg.d} (increase U)"
        )
    B, n, n_q, nb = seeds.size, cfg.n, cfg.n_q, cfg.n_q + cfg.d
    out = Batch(
        tokens=np.empty((B, n), np.int64),
        query_pos=np.empty((B, n_q), np.int64),
        query_key=np.empty((B, n_q), np.int64),
        query_target=np.empty((B, n_q), np.int64),
        query_recurring=np.empty((B, n_q), np.bool_),
        query_rank=np.empty((B, n_q), np.int64),
        query_overridden=np.empty((B, n_q), np.bool_),
        binding_pos=np.empty((B, nb), np.int64),
        binding_query=np.empty((B, nb), np.int64),
        seeds=seeds.copy(),
    )
    if B == 0:
        return out
    layout_seeds = _mix(seeds, n, n_q, cfg.d, 0x1A70)
    content_seeds = _mix(
        seeds, n, cfg.m_r, cfg.m_e, cfg.d, cfg.P, world.seed,
        _float_bits(cfg.alpha), _float_bits(cfg.chi), 0xC0A7,
    )  # fmt: skip
    _generate_kernel(
        out.tokens, out.query_pos, out.query_key, out.query_target, out.query_recurring,
        out.query_rank, out.query_overridden, out.binding_pos, out.binding_query,
        layout_seeds, content_seeds,
        world.keys - cfg.key_offset, world.values - cfg.value_offset,
        np.log(world.probs), free,
        cfg.n, cfg.m_r, cfg.m_e, cfg.d, float(cfg.chi), cfg.v, cfg.n_filler,
        cfg.key_offset, cfg.value_offset, cfg.filler_offset, cfg.leak == "position",
    )  # fmt: skip
    return out


def _float_bits(x: float) -> int:
    return int(np.float64(x).view(np.int64))


def token_classes(cfg: SRCDConfig, tokens: np.ndarray) -> np.ndarray:
    """Token class per position: 0 BOS, 1 SEP, 2 ASK, 3 key, 4 value, 5 filler."""
    t = np.asarray(tokens)
    cls = np.full(t.shape, 5, dtype=np.int8)
    cls[t < cfg.filler_offset] = 4
    cls[t < cfg.value_offset] = 3
    cls[t == cfg.ASK] = 2
    cls[t == cfg.SEP] = 1
    cls[t == cfg.BOS] = 0
    return cls

"""The SRCD generator's guarantees (docs/srcd.md and property H2 of docs/theory.md §6)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cramkit.errors import CramError
from cramkit.sim.srcd import (
    SPLITS,
    SRCDConfig,
    derive_world,
    generate,
    make_world,
    split_of_seed,
    split_seeds,
    token_classes,
)


@st.composite
def configs(draw, max_n=1024):
    n = draw(st.integers(64, max_n))
    d = draw(st.integers(0, 4))
    n_q_max = (n - 2 - 2 * d) // 5
    n_q = draw(st.integers(1, max(1, min(n_q_max, 40))))
    m_r = draw(st.integers(0, n_q))
    m_e = n_q - m_r
    P = draw(st.integers(max(m_r, 1), 300))
    U = draw(st.integers(P + n_q + d, P + n_q + d + 500))
    return SRCDConfig(
        n=n, m_r=m_r, m_e=m_e, P=P, U=U,
        alpha=draw(st.floats(0, 3)), v=draw(st.integers(4, 4096)), d=d,
        chi=draw(st.sampled_from([0.0, 0.0, 0.3, 1.0])), n_filler=draw(st.integers(1, 8)),
    )  # fmt: skip


def _check_sequence(cfg, world, batch, b):
    x = batch.tokens[b]
    assert x.shape == (cfg.n,)
    cls = token_classes(cfg, x)
    sep = int(np.flatnonzero(x == cfg.SEP)[0])
    assert x[0] == cfg.BOS and (x == cfg.SEP).sum() == 1 and (x == cfg.BOS).sum() == 1
    assert (x == cfg.ASK).sum() == cfg.n_q
    qp = batch.query_pos[b]
    assert np.all(qp > sep) and np.all(x[qp - 1] == cfg.ASK) and np.all(cls[qp] == 3)
    assert np.array_equal(x[qp + 1], batch.query_target[b])
    # context: bindings (key then value) and fillers only
    ctx_cls = cls[1:sep]
    assert set(np.unique(ctx_cls)) <= {3, 4, 5}
    bp = batch.binding_pos[b]
    assert np.all(np.diff(bp) > 0) and np.all(bp < sep)
    assert (ctx_cls == 3).sum() == cfg.n_q + cfg.d
    ctx_keys = x[bp]
    assert np.unique(ctx_keys).size == ctx_keys.size, "keys within a sequence are distinct"
    # every queried key is bound exactly once before SEP, to the target value
    for i in range(cfg.n_q):
        k = batch.query_key[b, i]
        where = np.flatnonzero(ctx_keys == k)
        assert where.size == 1
        assert x[bp[where[0]] + 1] == batch.query_target[b, i]
        assert batch.binding_query[b, where[0]] == i
    assert (batch.binding_query[b] == -1).sum() == cfg.d
    assert batch.query_recurring[b].sum() == cfg.m_r
    pool = set(world.keys.tolist())
    for i in range(cfg.n_q):
        k = int(batch.query_key[b, i])
        if batch.query_recurring[b, i]:
            j = batch.query_rank[b, i]
            assert world.keys[j] == k
            if not batch.query_overridden[b, i]:
                assert batch.query_target[b, i] == world.values[j]
            else:
                assert batch.query_target[b, i] != world.values[j]
        else:
            assert k not in pool and batch.query_rank[b, i] == -1
    ranks = batch.query_rank[b][batch.query_recurring[b]]
    assert np.unique(ranks).size == ranks.size, "distinct pool ranks per sequence"


@given(cfg=configs(), seed=st.integers(0, 2**30), wseed=st.integers(0, 100))
def test_generator_structure(cfg, seed, wseed):
    world = make_world(cfg, wseed)
    batch = generate(cfg, world, split_seeds("train", 3, start=seed))
    for b in range(3):
        _check_sequence(cfg, world, batch, b)
    if cfg.chi == 0:
        assert not batch.query_overridden.any()


@given(cfg=configs(), seed=st.integers(0, 2**30), m_r2=st.integers(0, 40))
def test_layout_independent_of_type_split(cfg, seed, m_r2):
    """H2: with (n, n_q, d, seed) fixed, layout and query order are identical for every split."""
    m_r2 = min(m_r2, cfg.n_q)
    cfg2 = cfg.replace(m_r=m_r2, m_e=cfg.n_q - m_r2, P=max(cfg.P, m_r2), U=cfg.U + m_r2)
    seeds = split_seeds("iid", 4, start=seed)
    a = generate(cfg, make_world(cfg, 0), seeds)
    b = generate(cfg2, make_world(cfg2, 5), seeds)
    assert np.array_equal(token_classes(cfg, a.tokens), token_classes(cfg2, b.tokens))
    assert np.array_equal(a.query_pos, b.query_pos)
    assert np.array_equal(a.binding_pos, b.binding_pos)
    assert np.array_equal(a.binding_query, b.binding_query)


def test_layout_rule_can_fail():
    """The layout test above is not vacuous: the 'position' leak ties type to query order."""
    cfg = SRCDConfig(n=256, m_r=4, m_e=4, P=16, U=64, leak="position")
    batch = generate(cfg, make_world(cfg, 0), split_seeds("train", 50))
    assert batch.query_recurring[:, :4].all() and not batch.query_recurring[:, 4:].any()
    honest = cfg.replace(leak="none")
    hb = generate(honest, make_world(honest, 0), split_seeds("train", 50))
    assert not hb.query_recurring[:, :4].all()


def test_key_range_leak_separates_types():
    cfg = SRCDConfig(n=256, m_r=4, m_e=4, P=16, U=256, leak="key_range")
    world = make_world(cfg, 0)
    assert np.all(world.keys - cfg.key_offset < cfg.P)
    batch = generate(cfg, world, split_seeds("train", 20))
    low = (batch.query_key - cfg.key_offset) < cfg.P
    assert np.array_equal(low, batch.query_recurring)


def test_deterministic_and_seed_sensitive():
    cfg = SRCDConfig(n=512, m_r=10, m_e=5, P=64, d=3, chi=0.2)
    world = make_world(cfg, 7)
    seeds = split_seeds("train", 16)
    a, b = generate(cfg, world, seeds), generate(cfg, world, seeds)
    for name in a.__dataclass_fields__:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = generate(cfg, world, split_seeds("train", 16, start=16))
    assert not np.array_equal(a.tokens, c.tokens)
    assert not np.array_equal(make_world(cfg, 7).keys, make_world(cfg, 8).keys)


def test_split_seeds_are_disjoint():
    sets = {s: set(split_seeds(s, 1000).tolist()) for s in SPLITS}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1 :]:
            assert not sets[s] & sets[t]
        assert {split_of_seed(x) for x in list(sets[s])[:10]} == {s}


def test_successive_sampling_follows_zipf():
    cfg = SRCDConfig(n=64, m_r=1, m_e=1, P=4, alpha=1.0, U=64)
    batch = generate(cfg, make_world(cfg, 0), split_seeds("train", 20000))
    ranks = batch.query_rank[batch.query_recurring]
    freq = np.bincount(ranks, minlength=4) / ranks.size
    p = np.array([1, 1 / 2, 1 / 3, 1 / 4])
    p /= p.sum()
    # 20000 draws: binomial s.e. < 0.0035; allow 4 s.e.
    np.testing.assert_allclose(freq, p, atol=0.014)


def test_overrides_and_types_are_exactly_counted():
    cfg = SRCDConfig(n=256, m_r=6, m_e=3, P=6, U=100, chi=1.0)
    world = make_world(cfg, 1)
    batch = generate(cfg, world, split_seeds("iid", 10))
    assert batch.query_overridden.sum() == 60
    assert np.all(batch.query_target[batch.query_recurring] != world.values[batch.query_rank[batch.query_recurring]])


@pytest.mark.parametrize("kind", ["fresh", "transfer", "conflict"])
@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 1.0])
def test_derived_worlds(kind, s):
    cfg = SRCDConfig(n=256, m_r=8, m_e=8, P=40, U=500)
    base = make_world(cfg, 0)
    w = derive_world(base, cfg, kind, s=s, seed=3)
    n_shared = 0 if kind == "fresh" else int(np.floor(s * cfg.P))
    assert w.shared.sum() == n_shared
    base_map = dict(zip(base.keys.tolist(), base.values.tolist()))
    for k, val, sh in zip(w.keys.tolist(), w.values.tolist(), w.shared.tolist()):
        if sh:
            assert k in base_map
            if kind == "transfer":
                assert val == base_map[k]
            else:
                assert val != base_map[k]
        else:
            assert k not in base_map
    assert np.unique(w.keys).size == cfg.P
    assert w.s_eff == pytest.approx(w.probs[w.shared].sum())
    # episodic keys avoid both the new pool and the parent pool
    batch = generate(cfg, w, split_seeds(kind, 30))
    epi = batch.query_key[~batch.query_recurring]
    assert not set(epi.tolist()) & (set(w.keys.tolist()) | set(base.keys.tolist()))


def test_transfer_one_is_a_rank_permutation_of_the_pool():
    cfg = SRCDConfig(n=256, m_r=8, m_e=8, P=40, U=500)
    base = make_world(cfg, 0)
    w = derive_world(base, cfg, "transfer", s=1.0, seed=9)
    assert sorted(zip(w.keys, w.values)) == sorted(zip(base.keys, base.values))
    assert w.s_eff == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(n=40, m_r=4, m_e=4), "5·n_q + 2·d + 2 <= n"),
        (dict(m_r=10, P=5), "m_r <= P"),
        (dict(U=70, P=64), "U >= P + n_q + d"),
        (dict(chi=1.5), "chi"),
        (dict(alpha=-1.0), "alpha"),
        (dict(leak="oops"), "leak"),
        (dict(m_r=0, m_e=0), "at least one query"),
        (dict(n=256.5), "integer"),
        (dict(alpha=float("nan")), "finite"),
    ],
)
def test_bad_configs_name_the_violated_constraint(kw, fragment):
    with pytest.raises(CramError, match=None) as exc:
        SRCDConfig(**kw)
    assert fragment in str(exc.value)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(CramError, match="unknown SRCD parameter"):
        SRCDConfig.from_dict({"n": 256, "m_rr": 3})
    assert SRCDConfig.from_dict({"n": 300}).n == 300


def test_from_freq():
    cfg = SRCDConfig.from_freq(n=1000, f=0.1, f_e=0.02, P=256)
    assert (cfg.m_r, cfg.m_e) == (100, 20)
    with pytest.raises(CramError):
        SRCDConfig.from_freq(n=1000, f=1.2, f_e=0.02)


def test_bad_seeds():
    cfg = SRCDConfig()
    with pytest.raises(CramError):
        generate(cfg, make_world(cfg, 0), [-1])
    with pytest.raises(CramError):
        split_seeds("dev", 3)
    with pytest.raises(CramError):
        make_world(cfg, -3)


def test_generation_speed():
    cfg = SRCDConfig.from_freq(n=1024, f=0.1, f_e=0.02, P=256, d=4)
    world = make_world(cfg, 0)
    generate(cfg, world, split_seeds("train", 4))  # JIT warm-up (cached on disk)
    t0 = time.perf_counter()
    generate(cfg, world, split_seeds("train", 1024))
    assert time.perf_counter() - t0 < 1.0

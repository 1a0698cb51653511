"""Property-based tests of docs/theory.md §6: H1 and H3–H11 (H2 is the generator's, tests/sim/test_srcd.py; H12
belongs to the curve tools).

Each property that could be broken has a companion test that breaks it on purpose — a pool-aware
"static" router, a leaky layout, CR_K itself — and shows that the check then fails.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cramkit.sim.routers import (
    AllRouter,
    HashRouter,
    MaskRouter,
    OraclePosRouter,
    PoolKeyRouter,
    RandRouter,
    SkipAllRouter,
    StrideRouter,
    fit_learned,
)
from cramkit.sim.simulate import (
    CRState,
    distinct_patterns_cum,
    relabel,
    run_cr,
    simulate_static,
    take,
)
from cramkit.sim.srcd import SRCDConfig, derive_world, generate, make_world, split_seeds
from cramkit.theory import bounds as tb

# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------


@st.composite
def instances(draw, max_nq=7, max_n=512):
    """A small SRCD config, its world and one sequence X (n_q small enough to enumerate labellings)."""
    n = draw(st.integers(64, max_n))
    n_q = draw(st.integers(2, max_nq))
    m_r = draw(st.integers(1, n_q - 1))
    d = draw(st.integers(0, 3))
    P = draw(st.integers(m_r, 64))
    U = P + n_q + d + draw(st.integers(0, 300))
    cfg = SRCDConfig(
        n=n, m_r=m_r, m_e=n_q - m_r, P=P, U=U, d=d,
        alpha=draw(st.floats(0, 3)), v=draw(st.integers(4, 4096)),
    )  # fmt: skip
    world = make_world(cfg, draw(st.integers(0, 10**6)))
    batch = generate(cfg, world, split_seeds("iid", 1, draw(st.integers(0, 10**6))))
    return cfg, world, batch


@st.composite
def static_routers(draw, n):
    """The parametrized static registry: RAND_p, STRIDE_s, a hash-of-x_t threshold, position masks."""
    kind = draw(st.sampled_from(["rand", "stride", "hash", "mask", "oracle", "all", "skip"]))
    if kind == "rand":
        return RandRouter(draw(st.floats(0, 1)), salt=draw(st.integers(0, 2**32)))
    if kind == "stride":
        return StrideRouter(draw(st.integers(1, 9)))
    if kind == "hash":
        return HashRouter(draw(st.floats(0, 1)), salt=draw(st.integers(0, 2**32)))
    if kind == "mask":
        rng = np.random.default_rng(draw(st.integers(0, 2**32)))
        return MaskRouter(tuple(int(b) for b in rng.random(n) < draw(st.floats(0, 1))))
    return {"oracle": OraclePosRouter(), "all": AllRouter(), "skip": SkipAllRouter()}[kind]


def labellings(n_q, m_r):
    return list(itertools.combinations(range(n_q), m_r))


def label_average(router, cfg, batch, w, world_for_memory=True):
    """Exact averages over every labelling τ (a uniform m_r-subset of the queries) of X = batch[0],
    each run with a pool Π_τ consistent with X: returns E_τ[A_rec], E_τ[A_epi], E_τ[correct_epi], A_q set."""
    taus = labellings(cfg.n_q, cfg.m_r)
    arec = aepi = cepi = Fraction(0)
    aq = set()
    for j, tau in enumerate(taus):
        c2, b2, w2 = relabel(cfg, batch, 0, tau, seed=j)
        c = simulate_static(
            c2, b2, router.decide(c2, b2, w2), w=w, memory=w2 if world_for_memory else None
        )
        arec += int(c.A_rec[0])
        aepi += int(c.A_epi[0])
        cepi += int(c.correct_epi[0])
        aq.add(int(c.A_q[0]))
    k = len(taus)
    assert k == comb(cfg.n_q, cfg.m_r)
    return arec / k, aepi / k, cepi / k, aq


# ----------------------------------------------------------------------------------------------
# H1 budget
# ----------------------------------------------------------------------------------------------


@given(data=st.data(), inst=instances(), w=st.integers(0, 8), d_model=st.integers(1, 256))
@settings(max_examples=60)
def test_h1_budget(data, inst, w, d_model):
    cfg, world, batch = inst
    router = data.draw(static_routers(cfg.n))
    r = router.decide(cfg, batch)
    c = simulate_static(cfg, batch, r, w=w, memory=world)
    A, Aq, Ar, Ae, pia = (int(getattr(c, f)[0]) for f in ("A", "A_q", "A_rec", "A_epi", "Pi_A"))
    assert 0 <= Ar and 0 <= Ae and Ar + Ae == Aq <= min(A, cfg.n_q) and A <= cfg.n
    assert pia <= cfg.n * (cfg.n + 1) // 2
    phi = tb.flop_fraction(cfg.n, d_model, A, pia)
    assert tb.flop_fraction_min(cfg.n, d_model) <= phi <= 1
    assert c.phi(d_model)[0] == pytest.approx(float(phi), rel=1e-12)
    off = np.flatnonzero(r[0] == 0)
    if off.size:  # attending one more position strictly increases phi
        t = int(data.draw(st.sampled_from(off.tolist())))
        r2 = r.copy()
        r2[0, t] = 1
        c2 = simulate_static(cfg, batch, r2, w=w, memory=world)
        assert tb.flop_fraction(cfg.n, d_model, int(c2.A[0]), int(c2.Pi_A[0])) > phi


# ----------------------------------------------------------------------------------------------
# H3 pool-obliviousness (metamorphic)
# ----------------------------------------------------------------------------------------------


def decisions_unchanged_under_relabelling(router, cfg, batch, world, n_pools, seed):
    """H3's check: the router's decisions on X are the same with Π and with other pools Π' that are
    consistent with X (another choice of which queried keys recur)."""
    base = router.decide(cfg, batch, world)
    rng = np.random.default_rng(seed)
    for j in range(n_pools):
        m = int(rng.integers(0, cfg.n_q + 1))
        m = min(m, cfg.P)
        tau = tuple(sorted(rng.choice(cfg.n_q, size=m, replace=False).tolist()))
        c2, b2, w2 = relabel(cfg, batch, 0, tau, seed=j)
        if not np.array_equal(router.decide(c2, b2, w2), base):
            return False
    return True


@given(data=st.data(), inst=instances(), seed=st.integers(0, 2**32))
@settings(max_examples=40)
def test_h3_static_routers_are_pool_oblivious(data, inst, seed):
    cfg, world, batch = inst
    router = data.draw(static_routers(cfg.n))
    assert decisions_unchanged_under_relabelling(router, cfg, batch, world, 6, seed)


def test_h3_learned_static_is_pool_oblivious():
    cfg = SRCDConfig(n=256, m_r=8, m_e=4, P=32, d=12)
    router = fit_learned(cfg, [make_world(cfg, 50)], validate=[make_world(cfg, 51)])
    world = make_world(cfg, 3)
    batch = generate(cfg, world, split_seeds("iid", 1))
    assert decisions_unchanged_under_relabelling(router, cfg, batch, world, 10, 0)


def test_h3_fails_for_a_pool_aware_router():
    cfg = SRCDConfig(n=128, m_r=4, m_e=3, P=16, d=2)
    world = make_world(cfg, 1)
    batch = generate(cfg, world, split_seeds("iid", 1))
    assert not decisions_unchanged_under_relabelling(PoolKeyRouter(), cfg, batch, world, 6, 0)


def test_h3_fails_for_learned_fitted_on_the_evaluation_pool():
    # LEARNED fitted on Π, then "run with Π'" means fitted on Π': the decisions change
    cfg = SRCDConfig(n=256, m_r=8, m_e=4, P=16, d=12)
    world = make_world(cfg, 2)
    batch = generate(cfg, world, split_seeds("iid", 1, 77))
    c2, b2, w2 = relabel(cfg, batch, 0, (0, 1, 2, 3, 4, 5, 6, 7), seed=3)
    c3, b3, w3 = relabel(cfg, batch, 0, (4, 5, 6, 7, 8, 9, 10, 11), seed=4)
    own2 = fit_learned(c2, [w2], cover_pool=True, static=False)
    own3 = fit_learned(c3, [w3], cover_pool=True, static=False)
    assert np.array_equal(b2.tokens, b3.tokens)
    d2, d3 = own2.decide(c2, b2), own3.decide(c3, b3)
    assert not np.array_equal(d2, d3)
    # each skips exactly the queries that recur in the pool it was fitted on
    assert d2[0, b2.query_pos[0]].tolist() == [0] * 8 + [1] * 4
    assert d3[0, b3.query_pos[0]].tolist() == [1] * 4 + [0] * 8


def test_h3_companion_cr_decisions_depend_on_the_pool():
    # CR_K consolidated on a stream from Π vs from Π' (consistent with X): decisions on X differ
    cfg = SRCDConfig(n=128, m_r=4, m_e=4, P=8, d=0)
    world = make_world(cfg, 0)
    X = generate(cfg, world, split_seeds("iid", 1, 999))
    c2, b2, w2 = relabel(cfg, X, 0, (4, 5, 6, 7), seed=1)  # the episodic keys of X now recur
    runs = []
    for cc, ww in ((cfg, world), (c2, w2)):
        stream = generate(cc, ww, split_seeds("train", 200))
        state = run_cr(cc, stream, 2).state
        runs.append(run_cr(cc, X if cc is cfg else b2, 2, state).attend)
    assert not np.array_equal(runs[0], runs[1])


# ----------------------------------------------------------------------------------------------
# H4 label-averaged identity, H5 capacity, H6 exact lower bound
# ----------------------------------------------------------------------------------------------


def h4_holds(router, cfg, batch, w=2):
    arec, aepi, _, aq = label_average(router, cfg, batch, w)
    if len(aq) != 1:
        return False
    (a_q,) = aq
    return arec == Fraction(cfg.m_r, cfg.n_q) * a_q and aepi == Fraction(cfg.m_e, cfg.n_q) * a_q


@given(data=st.data(), inst=instances(max_nq=6, max_n=256))
@settings(max_examples=25)
def test_h4_label_averaged_identity(data, inst):
    cfg, world, batch = inst
    assert h4_holds(data.draw(static_routers(cfg.n)), cfg, batch)


def test_h4_fails_for_a_pool_aware_router():
    cfg = SRCDConfig(n=128, m_r=3, m_e=3, P=8, d=1)
    world = make_world(cfg, 4)
    batch = generate(cfg, world, split_seeds("iid", 1))
    assert not h4_holds(PoolKeyRouter(), cfg, batch)


@given(data=st.data(), inst=instances(), w=st.integers(0, 10))
@settings(max_examples=50)
def test_h5_capacity(data, inst, w):
    cfg, world, batch = inst
    router = data.draw(st.one_of(static_routers(cfg.n), st.just(PoolKeyRouter())))
    c = simulate_static(cfg, batch, router.decide(cfg, batch, world), w=w, memory=world)
    assert int(c.correct_epi[0]) <= int(c.A_epi[0]) + tb.kappa_l1(w, cfg.m_e)
    # a skipped episodic slot is correct only if its key is in the cache (the last w bindings)
    bq = batch.binding_query[0]
    cached = bq[max(0, bq.size - w) :] if w > 0 else bq[:0]
    epi_in_cache = sum(1 for q in cached if q >= 0 and not batch.query_recurring[0, q])
    assert int(c.C_skip[0]) <= epi_in_cache


def h6_holds(router, cfg, batch, w, eps=None):
    """H6 at X: if E_τ[acc_e] >= 1 − ε then E_τ[A_rec] >= (1−ε)·m_r − (m_r/m_e)·min(w, m_e).
    With eps=None the tightest ε (1 − E_τ[acc_e]) is used."""
    arec, _, cepi, _ = label_average(router, cfg, batch, w)
    acc_e = cepi / cfg.m_e
    if eps is None:
        eps = 1 - acc_e
    if acc_e < 1 - eps:
        return True  # the premise does not hold
    return arec >= tb.lower_bound_l1(cfg.m_r, cfg.m_e, eps, w)


@given(data=st.data(), inst=instances(max_nq=6, max_n=256), w=st.integers(0, 6))
@settings(max_examples=25)
def test_h6_exact_lower_bound(data, inst, w):
    cfg, world, batch = inst
    router = data.draw(static_routers(cfg.n))
    assert h6_holds(router, cfg, batch, w)
    eps = data.draw(st.fractions(0, Fraction(99, 100), max_denominator=100))
    assert h6_holds(router, cfg, batch, w, eps)


def test_h6_fails_for_a_pool_aware_router():
    cfg = SRCDConfig(n=128, m_r=4, m_e=3, P=8, d=1)
    world = make_world(cfg, 5)
    batch = generate(cfg, world, split_seeds("iid", 1))
    assert not h6_holds(PoolKeyRouter(), cfg, batch, w=0)


def _query_block_mask(cfg, from_q):
    """Attend the query slots with index >= from_q (the query block is the last 3·n_q tokens)."""
    mask = np.zeros(cfg.n, dtype=np.uint8)
    start = cfg.n - 3 * cfg.n_q
    for q in range(from_q, cfg.n_q):
        mask[start + 3 * q + 1] = 1
    return MaskRouter(tuple(mask.tolist()))


def test_h6_fails_on_a_leaky_layout():
    # leak="position": the first m_r queries recur. A fixed position mask (static, pool-oblivious)
    # then attends exactly the episodic slots, and Theorem 1's exact L1 bound is broken in every
    # sequence; on the honest layout the same router keeps it on average.
    w = 1
    for leak, broken in (("position", True), ("none", False)):
        cfg = SRCDConfig(n=256, m_r=8, m_e=4, P=32, d=12, leak=leak)
        world = make_world(cfg, 0)
        batch = generate(cfg, world, split_seeds("iid", 400))
        router = _query_block_mask(cfg, cfg.m_r)
        assert np.array_equal(
            router.decide(cfg, batch)[0] > 0,
            np.isin(np.arange(cfg.n), batch.query_pos[0, cfg.m_r :]),
        )
        c = simulate_static(cfg, batch, router.decide(cfg, batch), w=w, memory=world)
        eps = 1 - Fraction(int(c.correct_epi.sum()), int(c.m_e.sum()))
        lb = tb.lower_bound_l1(cfg.m_r, cfg.m_e, eps, w)
        se = c.A_rec.std() / np.sqrt(len(batch))
        holds = c.A_rec.mean() >= float(lb) - 3 * se
        assert bool(holds) != broken
        if broken:
            assert c.A_rec.max() == 0 and c.acc_e.min() == 1.0


# ----------------------------------------------------------------------------------------------
# H7: monotonicity of LB and kappa_0
# ----------------------------------------------------------------------------------------------


@given(
    n=st.integers(1, 10**5),
    f=st.fractions(Fraction(1, 1000), Fraction(1, 2), max_denominator=1000),
    fe=st.fractions(Fraction(1, 1000), Fraction(1, 2), max_denominator=1000),
    eps=st.fractions(0, Fraction(999, 1000), max_denominator=1000),
    kap=st.fractions(0, 500, max_denominator=100),
    dn=st.integers(0, 1000),
    step=st.fractions(0, Fraction(1, 10), max_denominator=1000),
)
@settings(max_examples=120)
def test_h7_lower_bound_monotone(n, f, fe, eps, kap, dn, step):
    lb = tb.lower_bound(n, f, fe, eps, kap)
    assert 0 <= lb <= f * n
    assert tb.lower_bound(n + dn, f, fe, eps, kap) >= lb
    assert tb.lower_bound(n, min(f + step, 1), fe, eps, kap) >= lb
    assert tb.lower_bound(n, f, min(fe + step, 1), eps, kap) >= lb
    assert tb.lower_bound(n, f, fe, min(eps + step, 1), kap) <= lb
    assert tb.lower_bound(n, f, fe, eps, kap + step) <= lb


@given(st.integers(0, 60), st.integers(1, 60), st.integers(2, 2048), st.integers(1, 10))
@settings(max_examples=80)
def test_h7_kappa0_monotone(S, m, v, d):
    k = tb.kappa0(S, m, v)
    assert tb.kappa0(S + d, m, v) >= k
    assert tb.kappa0(S, m + d, v) >= k
    assert tb.kappa0(S, m, v + d) <= k


# ----------------------------------------------------------------------------------------------
# H8–H10: CR_K
# ----------------------------------------------------------------------------------------------


@st.composite
def streams(draw):
    n_q = draw(st.integers(2, 10))
    m_r = draw(st.integers(1, n_q - 1))
    P = draw(st.integers(m_r, 24))
    d = draw(st.integers(0, 2))
    cfg = SRCDConfig(
        n=5 * n_q + 2 * d + 2 + draw(st.integers(0, 40)), m_r=m_r, m_e=n_q - m_r, P=P, d=d,
        U=P + n_q + d + draw(st.integers(0, 60)), v=draw(st.integers(2, 8)), alpha=draw(st.floats(0, 2)),
    )  # fmt: skip
    world = make_world(cfg, draw(st.integers(0, 10**6)))
    batch = generate(
        cfg, world, split_seeds("iid", draw(st.integers(1, 80)), draw(st.integers(0, 10**6)))
    )
    return cfg, world, batch, draw(st.integers(1, 5))


@given(streams())
@settings(max_examples=40)
def test_h8_cr_prefix_and_cumulative_bound(s):
    cfg, world, batch, K = s
    run = run_cr(cfg, batch, K)
    rec = batch.query_recurring
    keys = batch.query_key
    for j in range(
        cfg.P
    ):  # per-exposure attend indicators of pattern j: 1 for the first min(K, N_j)
        sel = rec & (batch.query_rank == j)
        seq = run.attend[sel]  # row-major = stream order
        Nj = seq.size
        assert seq.tolist() == [1] * min(K, Nj) + [0] * (Nj - min(K, Nj))
    cum = np.cumsum(run.counts.A_rec)
    D = distinct_patterns_cum(batch)
    assert np.all(cum <= K * D) and np.all(K * D <= K * cfg.P)
    assert set(keys[rec].tolist()) <= set(world.keys.tolist())


@given(streams(), st.data())
@settings(max_examples=40)
def test_h9_cr_dominance(s, data):
    cfg, world, batch, K = s
    T = len(batch)
    t1 = data.draw(st.integers(0, T))
    t2 = data.draw(st.integers(t1, T))
    X = generate(cfg, world, split_seeds("fresh", 1, data.draw(st.integers(0, 10**6))))

    def prefix_state(t):
        if t == 0:
            return CRState.empty(cfg)
        sub = generate(cfg, world, batch.seeds[:t])
        return run_cr(cfg, sub, K).state

    C, C2 = prefix_state(t1), prefix_state(t2)
    assert set(C.consolidated(K).tolist()) <= set(C2.consolidated(K).tolist())
    a_c2 = run_cr(cfg, X, K, C2).counts
    a_c = run_cr(cfg, X, K, C).counts
    a_0 = run_cr(cfg, X, K).counts
    oracle = simulate_static(cfg, X, OraclePosRouter().decide(cfg, X), w=0).A
    assert a_c2.A[0] <= a_c.A[0] <= a_0.A[0] == oracle[0] == cfg.n_q
    assert a_c2.correct_rec[0] == a_c.correct_rec[0] == cfg.m_r  # chi = 0: acc_r = 1


@given(streams())
@settings(max_examples=40)
def test_h10_cr_safety(s):
    cfg, world, batch, K = s  # small v and U: episodic keys repeat and sometimes repeat a value
    run = run_cr(cfg, batch, K)
    hist: dict[int, list[int]] = {}  # values seen at the attended occurrences of each key
    for b in range(len(batch)):
        for i in range(cfg.n_q):
            k, y = int(batch.query_key[b, i]), int(batch.query_target[b, i])
            h = hist.setdefault(k, [])
            if run.attend[b, i]:
                assert run.correct[b, i]
                h.append(y)
                continue
            # consolidated only after K consecutive attended occurrences with one value, and the
            # skipped prediction is that value
            assert len(h) >= K and len(set(h[-K:])) == 1
            assert bool(run.correct[b, i]) == (h[-1] == y)
            if batch.query_recurring[b, i]:
                assert run.correct[b, i]  # chi = 0: a pool key never changes value
    # an episodic error happens only at a key whose attended values ended in a constant run of K
    err_keys = {int(k) for k in batch.query_key[(~run.correct) & (~batch.query_recurring)]}
    assert all(len(hist[k]) >= K and len(set(hist[k][-K:])) == 1 for k in err_keys)


# ----------------------------------------------------------------------------------------------
# H11 transfer
# ----------------------------------------------------------------------------------------------


def consolidated_on(cfg, world, K, keys=None):
    """A CR state in which the patterns of ``world`` (or only those with key in ``keys``) are consolidated."""
    st_ = CRState.empty(cfg)
    sel = np.ones(world.P, bool) if keys is None else np.isin(world.keys, list(keys))
    st_.value[world.keys[sel]] = world.values[sel]
    st_.count[world.keys[sel]] = K
    return st_


def frozen(cfg, X, K, state):
    """CR_K on every sequence of X from the same (frozen) state: (attend, correct) of shape (B, n_q)."""
    runs = [run_cr(cfg, take(X, b), K, state) for b in range(len(X))]
    return np.concatenate([r.attend for r in runs]), np.concatenate([r.correct for r in runs])


@pytest.mark.parametrize("K", [1, 3])
def test_h11_transfer(K):
    cfg = SRCDConfig(n=512, m_r=20, m_e=10, P=64, d=30)
    base = make_world(cfg, 0)
    state = consolidated_on(cfg, base, K)
    seeds = split_seeds("transfer", 200)
    # TRANSFER(0): decisions equal ORACLE-POS's
    t0 = derive_world(base, cfg, "transfer", s=0.0, seed=1)
    X0 = generate(cfg, t0, seeds)
    att0, _ = frozen(cfg, X0, K, state)
    r0 = np.zeros_like(X0.tokens, dtype=np.uint8)
    np.put_along_axis(r0, X0.query_pos, att0, axis=1)
    assert np.array_equal(r0, OraclePosRouter().decide(cfg, X0))
    # TRANSFER(1) behaves exactly like IID: every recurring slot skipped and right, episodic attended
    t1 = derive_world(base, cfg, "transfer", s=1.0, seed=2)
    for X in (generate(cfg, t1, seeds), generate(cfg, base, split_seeds("iid", 200))):
        att, cor = frozen(cfg, X, K, state)
        rec = X.query_recurring
        assert np.all(att[rec] == 0) and np.all(cor[rec]) and np.all(att[~rec] == 1)
    # nested shared sets S ⊆ S': reduction R(S) <= R(S')
    th = derive_world(base, cfg, "transfer", s=0.5, seed=3)
    Xh = generate(cfg, th, seeds)
    shared = th.keys[th.shared].tolist()
    a_oracle = cfg.n_q * len(Xh)
    reductions = []
    for m in (0, len(shared) // 4, len(shared) // 2, len(shared)):
        a = frozen(cfg, Xh, K, consolidated_on(cfg, base, K, shared[:m]))[0].sum()
        reductions.append(1 - a / a_oracle)
    assert reductions == sorted(reductions) and reductions[0] == 0 and reductions[-1] > 0
    # CONFLICT: acc_r = 0 on the shared keys; the verifying variant brings the accuracy back
    cf = derive_world(base, cfg, "conflict", s=0.5, seed=4)
    Xc = generate(cfg, cf, split_seeds("conflict", 400))
    on_shared = np.isin(Xc.query_key, cf.keys[cf.shared])
    assert on_shared.sum() > 100
    att, cor = frozen(cfg, Xc, K, state)
    assert cor[on_shared].mean() == 0.0 and np.all(att[on_shared] == 0)
    assert cor[~on_shared].all()  # the other recurring and the episodic slots stay right
    verified = run_cr(cfg, Xc, K, state, verify=True)  # over the stream, errors are corrected
    assert verified.correct[on_shared].mean() > 0.9

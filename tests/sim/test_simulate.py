"""The L1 simulator and CR_K against a plain-Python reference and the closed forms of theory.bounds."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from cramkit.errors import CramError
from cramkit.sim.routers import (
    AllRouter,
    HashRouter,
    OraclePosRouter,
    PoolKeyRouter,
    RandRouter,
    SkipAllRouter,
    StrideRouter,
    fit_learned,
    parse_router,
)
from cramkit.sim.simulate import (
    CRState,
    concat_batches,
    distinct_patterns_cum,
    max_episodic_multiplicity,
    relabel,
    run_cr,
    simulate_static,
)
from cramkit.sim.srcd import SRCDConfig, generate, make_world, split_seeds
from cramkit.theory import bounds as tb


def _setup(n=256, m_r=10, m_e=5, P=32, d=None, B=16, seed=0, **kw):
    cfg = SRCDConfig(n=n, m_r=m_r, m_e=m_e, P=P, d=m_r + m_e if d is None else d, **kw)
    world = make_world(cfg, seed)
    batch = generate(cfg, world, split_seeds("iid", B, start=seed * B))
    return cfg, world, batch


def _reference_counts(cfg, batch, r, w, world):
    """Model (R) with a w-slot cache and memory, written out plainly."""
    mem = dict(zip(world.keys.tolist(), world.values.tolist())) if world is not None else {}
    rows = []
    for b in range(len(batch)):
        x = batch.tokens[b]
        A = int(r[b].sum())
        pia = int(sum(t + 1 for t in range(cfg.n) if r[b, t]))
        bp = batch.binding_pos[b]
        cache = {int(x[p]): int(x[p + 1]) for p in (bp[len(bp) - w :] if w > 0 else [])}
        aq = arec = aepi = crec = cepi = cskip = 0
        for i in range(cfg.n_q):
            p, k, y, rec = (int(batch.query_pos[b, i]), int(batch.query_key[b, i]),
                            int(batch.query_target[b, i]), bool(batch.query_recurring[b, i]))  # fmt: skip
            if r[b, p]:
                aq += 1
                arec += rec
                aepi += not rec
                crec += rec
                cepi += not rec
                continue
            pred = cache.get(k, mem.get(k))
            if pred == y:
                crec += rec
                cepi += not rec
                cskip += not rec
        rows.append((A, aq, arec, aepi, pia, crec, cepi, cskip))
    return np.array(rows)


@pytest.mark.parametrize("w", [0, 1, 4, 100])
@pytest.mark.parametrize(
    "router",
    [
        AllRouter(),
        SkipAllRouter(),
        StrideRouter(3),
        RandRouter(0.4),
        OraclePosRouter(),
        HashRouter(0.5),
    ],
)
def test_counts_match_reference(router, w):
    cfg, world, batch = _setup(chi=0.3)
    r = router.decide(cfg, batch)
    c = simulate_static(cfg, batch, r, w=w, memory=world)
    ref = _reference_counts(cfg, batch, r, w, world)
    got = np.stack(
        [c.A, c.A_q, c.A_rec, c.A_epi, c.Pi_A, c.correct_rec, c.correct_epi, c.C_skip], axis=1
    )
    np.testing.assert_array_equal(got, ref)
    c0 = simulate_static(cfg, batch, r, w=w, memory=None)
    np.testing.assert_array_equal(c0.A_rec, c.A_rec)
    assert np.all(c0.correct_rec <= c.correct_rec)


def test_all_and_oracle_closed_forms():
    cfg, world, batch = _setup()
    a = simulate_static(cfg, batch, AllRouter().decide(cfg, batch), w=4, memory=world)
    assert np.all(a.A == cfg.n) and np.all(a.Pi_A == cfg.n * (cfg.n + 1) // 2)
    assert np.allclose(a.phi(64), 1.0)
    o = simulate_static(cfg, batch, OraclePosRouter().decide(cfg, batch), w=4, memory=world)
    assert np.all(o.A == cfg.n_q) and np.all(o.A_q == cfg.n_q)
    assert np.all(o.correct_rec == cfg.m_r) and np.all(o.correct_epi == cfg.m_e)
    for b in range(len(batch)):  # phi from the simulator equals the exact FLOP model
        exact = tb.flop_fraction(cfg.n, 64, int(o.A[b]), int(o.Pi_A[b]))
        assert o.phi(64)[b] == pytest.approx(float(exact), rel=1e-12)
    s = simulate_static(cfg, batch, SkipAllRouter().decide(cfg, batch), w=0, memory=world)
    assert np.allclose(s.phi(64), float(tb.flop_fraction_min(cfg.n, 64)))
    # SKIP-ALL+M with chi = 0: every recurring slot from M, no episodic slot without a cache
    assert np.all(s.correct_rec == cfg.m_r) and np.all(s.correct_epi == 0) and np.all(s.A == 0)


def test_skipped_episodic_answers_bounded_by_kappa():
    # Lemma 2 at L1: C_skip <= min(w, m_e) <= kappa_0 of the cache's bit count
    cfg, world, batch = _setup(n=512, m_r=8, m_e=12, P=16, B=64)
    for w in (1, 3, 8, 20):
        c = simulate_static(cfg, batch, SkipAllRouter().decide(cfg, batch), w=w, memory=world)
        assert c.C_skip.max() <= tb.kappa_l1(w, cfg.m_e)
        assert c.C_skip.mean() <= tb.kappa0(tb.cache_bits(w, cfg.U, cfg.v), cfg.m_e, cfg.v)


def test_rand_p_matches_lemma1_and_theorem1():
    # E[A_rec] = p·m_r and E[A_epi] = p·m_e for RAND_p; the per-n bound of Theorem 1 holds
    cfg, world, batch = _setup(n=1024, m_r=40, m_e=20, P=64, B=400)
    for p in (0.2, 0.7):
        c = simulate_static(cfg, batch, RandRouter(p).decide(cfg, batch), w=4, memory=world)
        se = np.sqrt(p * (1 - p) * cfg.m_r / len(batch))
        assert abs(c.A_rec.mean() - p * cfg.m_r) < 4 * se
        assert abs(c.A.mean() - p * cfg.n) < 4 * np.sqrt(p * (1 - p) * cfg.n / len(batch))
        eps = Fraction(1) - Fraction(float(c.acc_e.mean()))
        kappa = tb.kappa0(tb.cache_bits(4, cfg.U, cfg.v), cfg.m_e, cfg.v)
        lb = tb.lower_bound(cfg.n, Fraction(cfg.m_r, cfg.n), Fraction(cfg.m_e, cfg.n), eps, kappa)
        assert c.A_rec.mean() >= float(lb) - 3 * c.A_rec.std() / np.sqrt(len(batch))
        # the same bound from the sympy expression of Theorem 1
        lb_sym = tb.evaluate_expr(
            tb.lower_bound_expr(), n=cfg.n, f=Fraction(cfg.m_r, cfg.n), f_e=Fraction(cfg.m_e, cfg.n),
            epsilon=eps, kappa=kappa,
        )  # fmt: skip
        assert c.A_rec.mean() >= float(lb_sym) - 3 * c.A_rec.std() / np.sqrt(len(batch))
        assert float(lb_sym) == pytest.approx(float(lb), rel=1e-12)
        # and the exact L1 form with the cache's capacity min(w, m_e) in place of kappa_0
        lb_l1 = tb.lower_bound_l1(cfg.m_r, cfg.m_e, eps, 4)
        assert lb_l1 > 0 or p < 0.5
        assert c.A_rec.mean() >= float(lb_l1) - 3 * c.A_rec.std() / np.sqrt(len(batch))


def test_rand_is_deterministic_and_content_blind():
    cfg, world, batch = _setup()
    r1 = RandRouter(0.5).decide(cfg, batch)
    assert np.array_equal(r1, RandRouter(0.5).decide(cfg, batch))
    other = generate(cfg, make_world(cfg, 9), batch.seeds)  # same seeds, other contents
    assert np.array_equal(r1, RandRouter(0.5).decide(cfg, other))
    assert not np.array_equal(r1, RandRouter(0.5, salt=7).decide(cfg, batch))


# ----------------------------------------------------------------------------------------------
# CR_K
# ----------------------------------------------------------------------------------------------


def _reference_cr(batch, K, state=None, verify=False):
    value, count = ({}, {}) if state is None else (dict(state[0]), dict(state[1]))
    attend = np.zeros(batch.query_key.shape, np.uint8)
    correct = np.zeros(batch.query_key.shape, bool)
    for b in range(len(batch)):
        for i in range(batch.query_key.shape[1]):
            k, y = int(batch.query_key[b, i]), int(batch.query_target[b, i])
            if count.get(k, 0) >= K:
                correct[b, i] = value[k] == y
                if verify and value[k] != y:
                    value[k], count[k] = y, 1
            else:
                attend[b, i] = 1
                correct[b, i] = True
                if count.get(k, 0) > 0 and value[k] == y:
                    count[k] += 1
                else:
                    value[k], count[k] = y, 1
    return attend, correct


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("verify", [False, True])
def test_cr_matches_reference(K, verify):
    cfg, world, batch = _setup(n=128, m_r=6, m_e=6, P=8, U=60, v=3, d=2, B=120, chi=0.2)
    run = run_cr(cfg, batch, K, verify=verify)
    attend, correct = _reference_cr(batch, K, verify=verify)
    np.testing.assert_array_equal(run.attend, attend)
    rec = batch.query_recurring
    np.testing.assert_array_equal(run.counts.correct_rec, (correct & rec).sum(axis=1))
    np.testing.assert_array_equal(run.counts.correct_epi, (correct & ~rec).sum(axis=1))
    np.testing.assert_array_equal(run.counts.A_rec, (attend.astype(bool) & rec).sum(axis=1))


def test_cr_stream_bounds_theorem2():
    cfg, world, batch = _setup(n=256, m_r=10, m_e=5, P=24, B=300)
    D = distinct_patterns_cum(batch)
    assert D[-1] <= cfg.P and np.all(np.diff(D) >= 0)
    for K in (1, 2, 3, 5):
        run = run_cr(cfg, batch, K)
        cum = np.cumsum(run.counts.A_rec)
        assert np.all(cum <= tb.cr_rec_bound(K, 1) * D)
        total = np.cumsum(run.counts.A)
        n_epi = np.cumsum(run.counts.m_e)
        assert all(
            total[t] <= tb.cr_total_bound(int(n_epi[t]), K, cfg.P) for t in range(len(batch))
        )
        assert np.all(run.counts.correct_rec == cfg.m_r)  # chi = 0: acc_r = 1


def test_cr_episodic_errors_within_theorem2_ii():
    # small v and U make episodic keys repeat and collide; E[errors] <= N_epi·R·v^-(K-1)
    for K in (2, 3):
        errs, bnds = [], []
        for s in range(30):
            cfg, world, batch = _setup(n=128, m_r=4, m_e=8, P=4, U=40, v=4, d=0, B=60, seed=s)
            run = run_cr(cfg, batch, K)
            errs.append(int((run.counts.m_e - run.counts.correct_epi).sum()))
            R = max_episodic_multiplicity(batch)
            bnds.append(float(tb.cr_error_bound(int(run.counts.m_e.sum()), R, cfg.v, K)))
        assert np.mean(errs) <= np.mean(bnds)
        assert sum(errs) > 0 or K == 3  # the bound is not vacuous here: errors do occur


def test_cr_state_not_mutated_and_single_sequence_is_oracle():
    cfg, world, batch = _setup()
    st = CRState.empty(cfg)
    run = run_cr(cfg, batch, 2, st)
    assert st.count.sum() == 0
    one = run_cr(cfg, concat_batches([batch]), 3)
    assert np.all(one.attend[0] == 1)  # first sequence, empty table: every slot attended
    r = one.decisions(batch, cfg.n)
    o = OraclePosRouter().decide(cfg, batch)
    assert np.array_equal(r[0], o[0])
    assert run.state.consolidated(1).size > 0


def test_relabel_is_consistent():
    cfg, world, batch = _setup(n=128, m_r=3, m_e=3, P=8, d=1)
    c2, b2, w2 = relabel(cfg, batch, 0, (0, 4, 5), seed=1)
    assert c2.m_r == 3 and b2.query_recurring[0].tolist() == [True, False, False, False, True, True]
    lookup = dict(zip(w2.keys.tolist(), w2.values.tolist()))
    for i in (0, 4, 5):
        assert lookup[int(batch.query_key[0, i])] == int(batch.query_target[0, i])
    for i in (1, 2, 3):
        assert int(batch.query_key[0, i]) not in lookup
    with pytest.raises(CramError):
        relabel(cfg, batch, 0, (7,))


def test_learned_router_fits_leaks_and_ignores_other_pools():
    cfg = SRCDConfig(n=256, m_r=10, m_e=5, P=64, d=15)
    lr = fit_learned(cfg, [make_world(cfg, 100)], validate=[make_world(cfg, 101)])
    assert not lr.skip_key.any() and not lr.skip_q.any() and not lr.skip_bucket.any()
    lcfg = cfg.replace(leak="position")
    lp = fit_learned(lcfg, [make_world(lcfg, 100)], validate=[make_world(lcfg, 101)])
    assert lp.skip_q.tolist() == [True] * cfg.m_r + [False] * cfg.m_e
    own_world = make_world(cfg, 5)
    own = fit_learned(cfg, [own_world], cover_pool=True, static=False)
    assert own.skip_key[own_world.keys - cfg.key_offset].all() and not own.static


def test_bad_inputs():
    cfg, world, batch = _setup()
    with pytest.raises(CramError):
        simulate_static(cfg, batch, np.zeros((2, 3)), w=1)
    with pytest.raises(CramError):
        simulate_static(cfg, batch, OraclePosRouter().decide(cfg, batch), w=-1)
    with pytest.raises(CramError):
        run_cr(cfg, batch, 0)
    with pytest.raises(CramError):
        PoolKeyRouter().decide(cfg, batch)
    for bad in ("FOO", "RAND_2", "STRIDE_0", "CR_0", 3):
        with pytest.raises(CramError):
            parse_router(bad)
    assert parse_router("rand_0.25").name == "RAND_0.25" and parse_router("CR_3").K == 3


def test_distinct_patterns_cum_matches_a_plain_count():
    cfg, world, batch = _setup(n=256, m_r=20, m_e=5, P=64, d=3, B=300)
    seen: set[int] = set()
    expected = []
    for row in batch.query_rank:
        seen |= set(row[row >= 0].tolist())
        expected.append(len(seen))
    assert distinct_patterns_cum(batch).tolist() == expected

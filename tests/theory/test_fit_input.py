"""fit-gamma's input edge cases (issue #12): extreme but finite values, huge counts, large files,
BOM and CRLF, and the O(n) transition estimators against their brute-force definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cramkit.errors import CramError
from cramkit.theory.fit.analysis import FitConfig, run
from cramkit.theory.fit.data import (
    MAX_FIT_POINTS,
    bin_log_t,
    make_binomial,
    make_gaussian,
    read_curve,
)
from cramkit.theory.transition import changepoint_tc, windowed_slope_tc


def _fit(path, **kw):
    return run(FitConfig(runs=(str(path),), resamples=0, with_human=False, models=("M1", "M2"), **kw))


def test_t_beyond_the_fitters_range_is_one_clear_error(tmp_path):
    p = tmp_path / "big_t.csv"
    p.write_text("t,E\n1,0.9\n10,0.7\n100,0.5\n1e10,0.3\n1e100,0.2\n1e308,0.1\n")
    with pytest.raises(CramError, match="t = 1e\\+308 is outside"):
        read_curve(p)


def test_extreme_finite_t_inside_the_range_fits_without_overflow(tmp_path):
    p = tmp_path / "ext_t.csv"
    p.write_text("t,E\n1e-299,0.9\n1e-100,0.8\n1,0.7\n1e10,0.5\n1e100,0.3\n1e200,0.2\n1e299,0.1\n")
    res = _fit(p).to_json()
    assert res["n"] == 7 and res["gamma"]["value"] is not None


def test_counts_above_2_53_are_refused_and_just_below_are_fitted(tmp_path):
    with pytest.raises(CramError, match="exceeds 2\\^53"):
        make_binomial([1, 2, 3], [1e18, 1e18, 1e18], [1e19, 1e19, 1e19])
    p = tmp_path / "n.csv"
    p.write_text("t,k,N\n" + "".join(f"{t},{k:.0f},9e15\n" for t, k in
                                      zip(range(1, 8), np.linspace(8e15, 3e15, 7))))  # fmt: skip
    res = run(FitConfig(runs=(str(p),), resamples=5, with_human=False, models=("M1", "M3")))
    assert res.to_json()["gamma"]["n_resamples"] == 5


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_bom_and_crlf_are_accepted_in_csv_and_jsonl(tmp_path, bom, eol):
    rows = [b"t,E", b"1,0.9", b"2,0.7", b"3,0.5", b"4,0.4", b"5,0.35"]
    p = tmp_path / "d.csv"
    p.write_bytes(bom + eol.join(rows) + eol)
    d = read_curve(p)
    assert d.t.tolist() == [1, 2, 3, 4, 5] and d.y[-1] == 0.35
    recs = [json.dumps({"step": s, "rec_attended": 10 - s, "rec_total": 10}).encode() for s in (1, 2, 3)]
    q = tmp_path / "metrics.jsonl"
    q.write_bytes(bom + eol.join(recs) + eol)
    m = read_curve(tmp_path)
    assert m.kind == "binomial" and m.k.tolist() == [9, 8, 7]


def test_a_bad_cell_in_a_large_csv_names_its_row(tmp_path):
    p = tmp_path / "d.csv"
    lines = [f"{t},{0.9 / t}" for t in range(1, 5001)]
    lines[4000] = "4001,abc"
    p.write_text("t,E\n" + "\n".join(lines) + "\n")
    with pytest.raises(CramError, match="row 4002, column 'e' is not a number"):
        read_curve(p)


def _power_law_csv(path, n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1, dtype=np.float64)
    e = 0.1 + 0.9 * (1 + t / (n / 1000)) ** -0.43
    k = rng.binomial(200, e)
    np.savetxt(path, np.column_stack([t, k, np.full(n, 200)]), fmt="%d", delimiter=",",
               header="t,k,N", comments="")  # fmt: skip


def test_a_large_input_is_binned_and_still_recovers_gamma(tmp_path):
    p = tmp_path / "big.csv"
    _power_law_csv(p, 10**5)
    res = _fit(p).to_json()
    assert res["n"] <= 1000 and any("binned" in w for w in res["warnings"])
    assert abs(res["gamma"]["value"] - 0.43) < 0.01


@pytest.mark.slow
def test_a_million_rows_read_and_fitted(tmp_path):
    p = tmp_path / "big.csv"
    _power_law_csv(p, 10**6)
    res = _fit(p).to_json()
    assert abs(res["gamma"]["value"] - 0.43) < 0.01


def test_binning_keeps_the_counts_and_leaves_small_inputs_alone():
    rng = np.random.default_rng(3)
    t = np.geomspace(1, 1e5, 5000)
    n = rng.integers(1, 100, t.size).astype(float)
    k = np.floor(n * rng.uniform(size=t.size))
    d = make_binomial(t, k, n)
    b = bin_log_t(d, 300)
    assert len(b) <= 300 and b.k.sum() == k.sum() and b.n.sum() == n.sum()
    assert np.all(np.diff(b.t) > 0) and b.t[0] >= t[0] and b.t[-1] <= t[-1]
    g = make_gaussian(t, np.linspace(1, 0, t.size))
    gb = bin_log_t(g, 300)
    assert gb.sigma is not None and np.all(np.diff(gb.y) <= 0)
    small = make_gaussian(np.arange(1, MAX_FIT_POINTS + 1), np.linspace(1, 0, MAX_FIT_POINTS))
    from cramkit.theory.fit.analysis import _fit_size

    assert _fit_size(small) is small


def _changepoint_brute(d):
    best, best_s = -np.inf, 1
    for s in range(1, len(d)):
        ll = 0.0
        for sl in (slice(0, s), slice(s, len(d))):
            if d.kind == "binomial":
                k, m = d.k[sl].sum(), d.n[sl].sum()
                p = k / m
                ll += (k * np.log(p) if k > 0 else 0.0) + ((m - k) * np.log1p(-p) if k < m else 0.0)
            else:
                mu = d.y[sl].mean()
                ll -= 0.5 * float(np.sum((d.y[sl] - mu) ** 2))
        if ll > best:
            best, best_s = ll, s
    return float(np.sqrt(d.t[best_s - 1] * d.t[best_s]))


def _windowed_brute(t, fit, m):
    x = np.log10(t)
    slopes = []
    for i in range(len(x) - m + 1):
        xc = x[i: i + m] - x[i: i + m].mean()
        slopes.append(float(xc @ (fit[i: i + m] - fit[i: i + m].mean())) / float(xc @ xc))
    i = int(np.argmin(slopes))
    return float(10 ** x[i: i + m].mean())


@pytest.mark.parametrize("seed", range(12))
def test_o_n_transition_estimators_match_their_definitions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 60))
    t = np.cumsum(rng.uniform(0.5, 20, n))
    e = 0.1 + 0.8 / (1 + (t / np.median(t)) ** 3)
    if seed % 2:
        N = rng.integers(5, 300, n).astype(float)
        d = make_binomial(t, rng.binomial(N.astype(int), e).astype(float), N)
    else:
        d = make_gaussian(t, e + rng.normal(0, 0.03, n))
    assert changepoint_tc(d) == pytest.approx(_changepoint_brute(d), rel=1e-12)
    fit = e + np.linspace(0, -0.1, n)  # strictly decreasing: no tied windows
    m = max(3, n // 8)
    assert windowed_slope_tc(t, fit) == pytest.approx(_windowed_brute(t, fit, m), rel=1e-12)

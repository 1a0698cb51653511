"""The fitter: a NIST StRD certified problem, recovery of known parameters for all eight
models, properties H12 (a)-(b) of the curve fitter, the uncertainty machinery, and the input readers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from cramkit.errors import CramError
from cramkit.theory.curves import MODEL_NAMES, get_model
from cramkit.theory.fit.core import fit_model
from cramkit.theory.fit.data import make_binomial, make_gaussian, pool, read_curve
from cramkit.theory.fit.uncertainty import (
    bootstrap_runs,
    logit_ls_crosscheck,
    out_of_sample,
    parametric_bootstrap,
    profile_ci,
    t_min_sensitivity,
)
from cramkit.theory.transition import transition_analysis

DATA = Path(__file__).parent.parent / "data"


# --- NIST StRD Misra1a: y = b1 (1 - exp(-b2 x)) is M3 with E0 fixed at 0 -------------------

def _read_nist(path: Path) -> dict:
    text = path.read_text()
    cert = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in re.finditer(
        r"^\s*(b\d+)\s*=\s*\S+\s+\S+\s+(\S+)\s+(\S+)\s*$", text, re.M)}
    rss = float(re.search(r"Residual Sum of Squares:\s+(\S+)", text).group(1))
    rows = text.split("Data:   y               x", 1)[1].split()
    yx = np.array([float(v) for v in rows]).reshape(-1, 2)
    return {"cert": cert, "rss": rss, "y": yx[:, 0], "x": yx[:, 1]}


def test_nist_misra1a_certified_values():
    d = _read_nist(DATA / "Misra1a.dat")
    assert d["x"].size == 14
    fit = fit_model("M3", make_gaussian(d["x"], d["y"], name="Misra1a"), fixed={"E0": 0.0})
    b1, b1_sd = d["cert"]["b1"]
    b2, b2_sd = d["cert"]["b2"]
    tau = fit.params["tau"]
    assert fit.params["Einf"].value == pytest.approx(b1, rel=1e-7)
    assert 1 / tau.value == pytest.approx(b2, rel=1e-7)
    assert fit.chi2 == pytest.approx(d["rss"], rel=1e-8)
    # the certified standard deviations: b1 directly, b2 = 1/tau by the delta method
    assert fit.params["Einf"].stderr == pytest.approx(b1_sd, rel=1e-5)
    assert tau.stderr / tau.value ** 2 == pytest.approx(b2_sd, rel=1e-5)
    assert fit.nvary == 2 and fit.n == 14


# --- recovery of known parameters, all eight models -----------------------------------------

TRUE = {
    "M1": {"E0": 0.95, "Einf": 0.08, "tau": 60.0, "gamma": 0.55},
    "M2": {"a": 0.9, "gamma": 0.35, "Einf": 0.05},
    "M3": {"E0": 0.9, "Einf": 0.1, "tau": 800.0},
    "M4": {"E0": 0.9, "Einf": 0.1, "tau": 500.0, "beta": 0.6},
    "M5": {"E0": 0.9, "Einf": 0.1, "t_c": 3000.0, "w": 700.0},
    "M6": {"E0": 0.9, "Einf": 0.1, "t_c": 2000.0, "h": 1.7},
    "M7": {"E0": 0.95, "Einf": 0.05, "tau": 50.0, "gamma": 0.4, "t_x": 3e4},
    "M8": {"log10_t_b": 2.7, "E_b": 0.6, "s1": -0.05, "s2": -0.2},
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_noise_free_binomial_data_recover_the_parameters(name):
    m = get_model(name)
    t = np.geomspace(10.0, 1e5, 45)
    e = m(t, *[TRUE[name][n] for n in m.names])
    n = np.full(t.size, 1e4)
    fit = fit_model(name, make_binomial(t, n * e, n))
    for k, v in TRUE[name].items():
        assert fit.params[k].value == pytest.approx(v, rel=2e-3, abs=1e-4), k
    assert fit.chi2 < 1e-6


@pytest.mark.parametrize("gamma,tau,seed", [(0.2, 10.0, 1), (0.43, 100.0, 2), (0.8, 1000.0, 3),
                                            (0.6, 30.0, 4)])
def test_h12a_power_law_data(gamma, tau, seed):
    rng = np.random.default_rng(seed)
    t = np.geomspace(1.0, 1e5, 40)
    e_inf = 0.1
    e = e_inf + (1 - e_inf) * (1 + t / tau) ** (-gamma)
    n = np.full(t.size, 10_000)
    data = make_binomial(t, rng.binomial(n, e), n)
    fits = {m: fit_model(m, data) for m in ("M1", "M5", "M6")}
    assert abs(fits["M1"].gamma - gamma) < 0.05
    assert fits["M1"].aic < fits["M5"].aic and fits["M1"].aic < fits["M6"].aic


@pytest.mark.parametrize("model,true,seed", [
    ("M6", {"E0": 0.97, "Einf": 0.03, "t_c": 3000.0, "h": 6.0}, 5),
    ("M5", {"E0": 0.95, "Einf": 0.05, "t_c": 5000.0, "w": 400.0}, 6),
])
def test_h12b_logistic_data_is_sharp(model, true, seed):
    rng = np.random.default_rng(seed)
    m = get_model(model)
    t = np.geomspace(10.0, 1e5, 40)
    e = m(t, *[true[k] for k in m.names])
    n = np.full(t.size, 10_000)
    data = make_binomial(t, rng.binomial(n, e), n)
    fits = {k: fit_model(k, data) for k in ("M1", "M2", "M5", "M6")}
    logistic = min(("M5", "M6"), key=lambda k: fits[k].aic)
    assert fits[logistic].aic < min(fits["M1"].aic, fits["M2"].aic)
    verdict = transition_analysis(data, fits)
    assert verdict["W"] < 0.5
    assert verdict["sharp"] is True
    # t_c three ways agree within a factor of 2 on a clean sigmoid
    tcs = [v for v in verdict["t_c_methods"].values() if v is not None]
    assert max(tcs) / min(tcs) < 2.0


def test_power_law_data_is_not_sharp():
    rng = np.random.default_rng(7)
    t = np.geomspace(1.0, 1e5, 40)
    e = 0.05 + 0.95 * (1 + t / 50.0) ** -0.43
    n = np.full(t.size, 10_000)
    data = make_binomial(t, rng.binomial(n, e), n)
    fits = {k: fit_model(k, data) for k in ("M1", "M2", "M5", "M6")}
    assert transition_analysis(data, fits)["sharp"] is False


# --- uncertainty ----------------------------------------------------------------------------

def _power_data(seed, npts=60, n=2000, gamma=0.43):
    rng = np.random.default_rng(seed)
    t = np.geomspace(1.0, 1e5, npts)
    e = 0.1 + 0.9 * (1 + t / 100.0) ** (-gamma)
    nn = np.full(t.size, n)
    return make_binomial(t, rng.binomial(nn, e), nn, name=f"seed{seed}")


def test_parametric_bootstrap_and_profile_cover_the_truth():
    data = _power_data(11)
    fit = fit_model("M1", data)
    boot = parametric_bootstrap("M1", data, fit, n_resamples=300, seed=1)
    lo, hi = boot.ci("gamma")
    assert boot.n_failed == 0 and lo < 0.43 < hi
    plo, phi = profile_ci("M1", data, fit, "gamma")
    assert plo < fit.gamma < phi and plo < 0.43 < phi
    # the profile and the bootstrap intervals roughly agree in width
    assert 0.5 < (phi - plo) / (hi - lo) < 2.0
    band = boot.band()
    assert band is None  # no grid was asked for


def test_bootstrap_over_runs():
    runs = [_power_data(s, npts=30, n=1000) for s in range(5)]
    pooled = pool(runs)
    fit = fit_model("M1", pooled)
    grid = np.geomspace(1, 1e5, 20)
    boot = bootstrap_runs("M1", runs, fit, n_resamples=2000, seed=0, grid=grid)
    lo, hi = boot.ci("gamma")
    assert lo < fit.gamma < hi and lo < 0.43 < hi
    assert boot.samples["gamma"].size == 2000 - boot.n_failed
    blo, bhi = boot.band()
    assert np.all(blo <= bhi) and blo.shape == grid.shape
    with pytest.raises(CramError):
        bootstrap_runs("M1", runs[:1], fit)


def test_logit_crosscheck_sensitivity_and_out_of_sample():
    data = _power_data(3)
    fit = fit_model("M1", data)
    cross = logit_ls_crosscheck("M1", data, fit)
    assert abs(cross.gamma - fit.gamma) < 0.03
    sens = t_min_sensitivity("M1", data)
    assert [s["factor"] for s in sens] == [1, 10, 100]
    assert sens[0]["value"] == pytest.approx(fit.gamma, rel=1e-6)
    assert sens[1]["n"] < sens[0]["n"]
    oos = out_of_sample("M1", data)
    assert oos["n_train"] + oos["n_test"] == len(data) and oos["score"] > 0
    # the true model predicts the held-out tail better than an exponential
    assert oos["score"] < out_of_sample("M3", data)["score"]


def test_parameter_at_bound_is_warned():
    t = np.geomspace(1, 1e4, 30)
    e = (1 + t / 10.0) ** -0.5  # E0 = 1 and E_inf = 0: both on the binomial bounds
    n = np.full(t.size, 1e4)
    fit = fit_model("M1", make_binomial(t, n * e, n))
    assert fit.params["E0"].at_bound
    assert any("E0" in w and "bound" in w for w in fit.warnings)


@pytest.mark.slow
def test_performance_1000_bootstrap_refits_of_m1_on_200_points():
    data = _power_data(5, npts=200, n=10_000)
    fit = fit_model("M1", data)
    t0 = time.perf_counter()
    boot = parametric_bootstrap("M1", data, fit, n_resamples=1000, seed=0)
    elapsed = time.perf_counter() - t0
    assert boot.n_failed == 0
    assert elapsed <= 10.0, f"{elapsed:.1f} s"


# --- input validation and readers -----------------------------------------------------------

def test_bad_inputs_raise_one_clear_error(tmp_path):
    with pytest.raises(CramError, match="exceeds N"):
        make_binomial([1, 2, 3], [1, 5, 1], [4, 4, 4])
    with pytest.raises(CramError, match="NaN"):
        make_gaussian([1, 2, 3], [0.5, np.nan, 0.2])
    with pytest.raises(CramError, match="not strictly increasing"):
        make_gaussian([1, 3, 2], [0.5, 0.4, 0.2])
    with pytest.raises(CramError, match="at least 5"):
        fit_model("M1", make_gaussian([1, 2, 3, 4], [0.9, 0.5, 0.4, 0.3]))
    with pytest.raises(CramError, match="no such file"):
        read_curve(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CramError, match="empty"):
        read_curve(tmp_path / "empty.csv")
    (tmp_path / "bad.csv").write_text("t,x\n1,2\n")
    with pytest.raises(CramError, match="t,k,N"):
        read_curve(tmp_path / "bad.csv")
    (tmp_path / "nan.csv").write_text("t,E\n1,0.5\n2,nan\n")
    with pytest.raises(CramError, match="NaN"):
        read_curve(tmp_path / "nan.csv")


def test_csv_reader(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("# a comment\nt,k,N\n1,90,100\n10,50,100\n100,20,100\n")
    d = read_curve(p)
    assert d.kind == "binomial" and list(d.y) == [0.9, 0.5, 0.2]
    p.write_text("t,E,sigma\n1,0.9,0.1\n10,0.5,0.1\n")
    d = read_curve(p)
    assert d.kind == "gaussian" and d.sigma is not None


def _metrics(path: Path, with_counts=True, truncate=False, steps=(0, 100, 200, 400)):
    lines = []
    for i, s in enumerate(steps):
        rec = {"step": s, "exposures": s * 0.5, "lr": 1e-3, "cum_lr": s * 1e-3, "rho_q": 0.9 - 0.1 * i}
        if with_counts:
            rec.update(rec_attended=90 - 10 * i, rec_total=100, epi_attended=50, epi_total=50)
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if truncate:
        text += '{"step": 800, "rec_att'
    path.write_text(text)


def test_metrics_reader(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _metrics(run / "metrics.jsonl", truncate=True)
    d = read_curve(run)
    assert d.kind == "binomial" and len(d) == 3  # step 0 dropped, truncated line skipped
    assert any("truncated" in w for w in d.warnings)
    assert any("dropped" in w for w in d.warnings)
    assert list(read_curve(run, time="exposures").t) == [50.0, 100.0, 200.0]
    assert read_curve(run, time="cum_lr").t[0] == pytest.approx(0.1)
    _metrics(run / "metrics.jsonl", with_counts=False)
    d = read_curve(run)
    assert d.kind == "gaussian" and any("rho_q" in w for w in d.warnings)
    (run / "metrics.jsonl").write_text('{"step": 1, "rec_attended": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(CramError, match="line 2"):
        read_curve(run)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_noisy_binomial_data_recover_parameters_within_their_errors(name):
    # binomial noise (N = 10^4 per point): every estimate within 4 standard errors of the truth
    rng = np.random.default_rng(MODEL_NAMES.index(name) + 20)
    m = get_model(name)
    t = np.geomspace(10.0, 1e5, 45)
    e = m(t, *[TRUE[name][n] for n in m.names])
    n = np.full(t.size, 10_000)
    fit = fit_model(name, make_binomial(t, rng.binomial(n, e), n))
    for k, v in TRUE[name].items():
        p = fit.params[k]
        assert p.stderr is not None and abs(p.value - v) < 4 * p.stderr, (k, p.value, v, p.stderr)


def test_metrics_reader_drops_unusable_evaluations(tmp_path):
    p = tmp_path / "metrics.jsonl"
    recs = [{"step": 0, "exposures": 0.0, "rec_attended": 0, "rec_total": 0, "loss": None},
            {"step": 10, "exposures": 2.5, "rec_attended": 0, "rec_total": 0},
            {"step": 20, "exposures": 5.0, "rec_attended": 9, "rec_total": 10},
            {"step": 40, "exposures": 10.0, "rec_attended": 5, "rec_total": 10}]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    d = read_curve(p, time="exposures")
    assert list(d.t) == [5.0, 10.0]
    assert any("rec_total = 0" in w for w in d.warnings)
    p.write_text(json.dumps({"step": 5, "rho_q": None}) + "\n" + json.dumps({"step": 6, "rho_q": 0.5}) + "\n")
    d = read_curve(p)
    assert d.kind == "gaussian" and list(d.t) == [6.0]

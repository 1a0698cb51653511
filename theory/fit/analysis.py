"""The whole ``cram fit-gamma`` analysis as one library call: :func:`fit_gamma`.

Input: run directories / metrics.jsonl / CSV files (one per seed), a bundled human data set, or
Proposition 3's exact count-model curve. Output: one JSON-ready dict with every model's fit
(value, stderr, CI for each parameter; chi2, AIC, BIC, out-of-sample score), the model ranking,
gamma with its CI (bootstrap over runs for several runs; parametric bootstrap and profile
likelihood for one), the logit cross-check and t_min sensitivity, the transition verdict, and
the tool's own fits of the bundled human data. :func:`format_report` renders it as text.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cramkit.theory.curves import MODEL_NAMES, get_model, tc_numeric
from cramkit.errors import CramError
from cramkit.theory.fit.core import FitResult, fit_model, single_thread_blas
from cramkit.theory.fit.data import TIME_UNITS, CurveData, make_binomial, pool, read_curve
from cramkit.theory.fit.uncertainty import (
    bootstrap_runs,
    logit_ls_crosscheck,
    out_of_sample,
    parametric_bootstrap,
    profile_ci,
    t_min_sensitivity,
)

Z95 = 1.959963984540054


def count_model_data(*, alpha: float, K: int, P: int = 10**6, n_min: float | None = None,
                     n_max: float | None = None, points: int = 40, probes: float = 1e4) -> CurveData:
    """Proposition 3's exact curve as binomial data with ``probes`` nominal probe queries per
    point and expected (noise-free) counts k = probes * E_rec(N). The default N range is
    [1e3, 1e7] for alpha > 1 (the power-law regime) and [K P / 100, 10 K P] otherwise (around
    the step at N ~ K P)."""
    from cramkit.theory.count_model import exact_curve

    if alpha > 1:
        n_min = 1e3 if n_min is None else n_min
        n_max = 1e7 if n_max is None else n_max
    else:
        n_min = K * P / 100 if n_min is None else n_min
        n_max = 10.0 * K * P if n_max is None else n_max
    if not (0 < n_min < n_max) or points < 3:
        raise CramError("the count-model grid needs 0 < n_min < n_max and at least 3 points")
    if probes <= 0:
        raise CramError("probes must be positive")
    N = np.geomspace(n_min, n_max, int(points))
    e = exact_curve(N, alpha=alpha, K=K, P=int(P))
    return make_binomial(N, probes * e, np.full(N.size, float(probes)),
                         name=f"count model (alpha={alpha:g}, K={K}, P={int(P)})",
                         time_unit="recurring queries N")


def fit_gamma(*, runs: list[str | Path] | None = None, human: str | None = None,
              count_model: dict | None = None, time: str = "step", models=MODEL_NAMES,
              primary: str = "M1", t_min: float | None = None, resamples: int = 2000,
              seed: int = 0, with_human: bool = True, quiet: bool = True,
              fixed: dict[str, float] | None = None) -> dict:
    """Run the full analysis; see the module docstring. Exactly one input must be given.
    ``fixed`` holds parameters of the primary model that are not fitted (lmfit's vary=False),
    e.g. ``{"Einf": 0.0}`` with primary M2 for Murre & Dros's pure power law."""
    given = sum(x is not None and x != [] for x in (runs, human, count_model))
    if given != 1:
        raise CramError("give exactly one input: RUN paths, --human NAME or --count-model")
    models = [get_model(m).name for m in models]
    primary = get_model(primary).name
    if primary not in models:
        models = [primary, *models]
    if resamples < 0:
        raise CramError("resamples must be >= 0")
    warnings: list[str] = []
    run_data: list[CurveData] = []
    source: dict = {}
    if runs:
        run_data = [read_curve(p, time=time) for p in runs]
        data = run_data[0] if len(run_data) == 1 else pool(run_data)
        source = {"type": "runs", "paths": [str(p) for p in runs]}
    elif human is not None:
        from cramkit.theory.human import human_info, load_human

        data = load_human(human)
        info = human_info(human)
        source = {"type": "human", "name": human, "measure": info["measure"],
                  "citation": info["citation"], "licence": info["licence"]}
    else:
        cm = dict(count_model)
        data = count_model_data(**cm)
        source = {"type": "count_model", **cm}
    warnings.extend(data.warnings)
    if t_min is not None:
        data = data.subset(data.t >= t_min)
        run_data = [r.subset(r.t >= t_min) for r in run_data]
        if len(data) == 0:
            raise CramError(f"no data points at t >= {t_min:g}")
    if 1 < len(run_data) < 10:
        warnings.append(f"only {len(run_data)} runs: a bootstrap over fewer than 10 seeds gives a "
                        "coarse interval")
    if len(run_data) > 1:
        kinds = {r.kind for r in run_data}
        if len(kinds) > 1:
            raise CramError("some runs have counts and some do not; give runs of one kind")

    with single_thread_blas(), np.errstate(all="ignore"):
        fix = {m: (dict(fixed) if (fixed and m == primary) else None) for m in models}
        fits: dict[str, FitResult] = {m: fit_model(m, data, fixed=fix[m]) for m in models}
        for f in fits.values():
            warnings.extend(f.warnings)
        best = min(fits, key=lambda m: fits[m].aic)
        aic_min = fits[best].aic
        bic_min = min(f.bic for f in fits.values())
        weights = {m: math.exp(-0.5 * (f.aic - aic_min)) for m, f in fits.items()}
        wsum = sum(weights.values())
        oos = {m: out_of_sample(m, data, fixed=fix[m]) for m in models}

        grid = np.geomspace(float(data.t[0]), float(data.t[-1]), 200)
        pfit = fits[primary]
        if len(run_data) > 1:
            boot = bootstrap_runs(primary, run_data, pfit, fixed=fixed, n_resamples=resamples, seed=seed,
                                  grid=grid, quiet=quiet) if resamples else None
            profiles = {}
        else:
            boot = parametric_bootstrap(primary, data, pfit, fixed=fixed, n_resamples=resamples, seed=seed,
                                        grid=grid, quiet=quiet) if resamples else None
            profiles = {n: profile_ci(primary, data, pfit, n, fixed=fixed) for n, p in pfit.params.items()
                        if not p.fixed}
        logit = logit_ls_crosscheck(primary, data, pfit, fixed=fixed)
        sens = t_min_sensitivity(primary, data, fixed=fixed)

    from cramkit.theory.transition import transition_analysis

    trans = transition_analysis(data, fits)
    fit_rows = []
    for m in models:
        f = fits[m]
        model = get_model(m)
        params = {}
        for n, p in f.params.items():
            ci, method = None, None
            if m == primary and boot is not None and not p.fixed:
                ci, method = boot.ci(n), boot.method
            elif p.stderr is not None:
                ci, method = (p.value - Z95 * p.stderr, p.value + Z95 * p.stderr), "wald"
            row = {"value": p.value, "stderr": p.stderr, "ci": list(ci) if ci else None,
                   "ci_method": method, "fixed": p.fixed, "at_bound": p.at_bound}
            if m == primary and n in profiles:
                row["profile_ci"] = list(profiles[n])
            params[n] = row
        if m == "M8":  # the breakpoint: M8's slope is piecewise constant in log t
            tc = 10 ** f.params["log10_t_b"].value
        else:
            with np.errstate(all="ignore"):
                tc = tc_numeric(model, f.values, float(data.t[0]), float(data.t[-1]))
        fit_rows.append({
            "dataset": data.name, "model": m, "title": model.title, "formula": model.formula,
            "params": params, "gamma": f.gamma, "aic": f.aic, "bic": f.bic,
            "delta_aic": f.aic - aic_min, "delta_bic": f.bic - bic_min,
            "akaike_weight": weights[m] / wsum, "n": f.n, "nvary": f.nvary, "chi2": f.chi2,
            "redchi": f.redchi, "neg_log_likelihood": f.nll if f.kind == "binomial" else None,
            "W": model.width(f.values), "half_life": model.half_life(f.values), "t_c": tc,
            "out_of_sample": oos[m], "converged": f.success, "warnings": f.warnings,
        })

    gname = get_model(primary).gamma_param
    gamma = None
    if gname is not None:
        gp = pfit.params[gname]
        gamma = {"model": primary, "value": gp.value, "stderr": gp.stderr,
                 "ci": (list(boot.ci(gname)) if boot is not None and boot.ci(gname) else None),
                 "ci_method": boot.method if boot is not None else None,
                 "n_resamples": boot.n_resamples if boot is not None else 0,
                 "n_failed": boot.n_failed if boot is not None else 0,
                 "profile_ci": list(profiles[gname]) if gname in profiles else None,
                 "logit_ls": logit.params[gname].value if logit is not None else None,
                 "t_min_sensitivity": sens}
    band = None
    if boot is not None and boot.band() is not None:
        lo, hi = boot.band()
        band = {"model": primary, "t": grid.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    result = {
        "dataset": data.name, "source": source, "kind": data.kind,
        "estimation": ("binomial maximum likelihood (k attended of N probe queries)"
                       if data.kind == "binomial" else
                       "least squares (values only" + (", weighted by 1/sigma^2)" if data.sigma is not None else ")")),
        "time_unit": data.time_unit, "n": len(data), "n_runs": max(1, len(run_data)),
        "t_range": [float(data.t[0]), float(data.t[-1])],
        "fits": fit_rows, "best_model": best, "primary_model": primary, "gamma": gamma,
        "transition": trans, "warnings": list(dict.fromkeys(warnings)),
        "plot": {"t": data.t.tolist(), "y": data.y.tolist(),
                 "n": None if data.n is None else data.n.tolist(),
                 "sigma": None if data.sigma is None else data.sigma.tolist(),
                 "grid": grid.tolist(),
                 "curves": {m: fits[m].predict(grid).tolist() for m in models}, "band": band},
    }
    if count_model is not None:
        result["count_model"] = _count_model_summary(count_model, gamma)
    if with_human:
        from cramkit.theory.human import ANALOGY_NOTE, human_reference

        result["human_reference"] = human_reference()
        result["human_note"] = ANALOGY_NOTE
    return _clean(result)


def _count_model_summary(cm: dict, gamma: dict | None) -> dict:
    from cramkit.theory.count_model import asymptotic_constant, predicted_gamma, uniform_width

    alpha, K = float(cm["alpha"]), int(cm["K"])
    out: dict = {"alpha": alpha, "K": K, "P": int(cm.get("P", 10**6))}
    if alpha > 1:
        out["predicted_gamma"] = predicted_gamma(alpha)
        out["asymptotic_constant"] = asymptotic_constant(alpha, K)
        if gamma is not None:
            out["gamma_minus_predicted"] = gamma["value"] - out["predicted_gamma"]
    else:
        out["predicted_gamma"] = None
        out["note"] = ("gamma = 1 - 1/alpha holds only for alpha > 1"
                       + ("; at alpha = 0 the curve is the sigmoid F_K(N/P)" if alpha == 0 else ""))
    if alpha == 0:
        out["uniform_width"] = uniform_width(K)
    return out


def _clean(obj):
    """Make ``obj`` strict-JSON safe: numpy scalars to floats, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# --- text report --------------------------------------------------------------------------

def _g(x, digits: int = 5) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def format_report(res: dict, *, all_models: bool = False) -> str:
    """The lmfit-style text report: fit statistics and variables of the best and the primary
    model (all models with ``all_models``), the comparison table, gamma, the transition, and the
    human reference fits."""
    out: list[str] = []
    src = res["source"]
    out.append(f"Data: {res['dataset']} ({res['n']} points"
               + (f", {res['n_runs']} runs pooled" if res["n_runs"] > 1 else "")
               + f"; t from {_g(res['t_range'][0])} to {_g(res['t_range'][1])} {res['time_unit']})")
    if src["type"] == "human":
        out.append(f"Measure: {src['measure']}")
        out.append(f"Source: {src['citation']} Licence: {src['licence']}.")
    out.append(f"Estimation: {res['estimation']}.")
    shown = [f["model"] for f in res["fits"]] if all_models else list(
        dict.fromkeys([res["best_model"], res["primary_model"]]))
    for f in res["fits"]:
        if f["model"] in shown:
            out.append("")
            out.extend(_fit_block(f, res))
    out.append("")
    out.append("[[Model comparison]] (sorted by AIC; dAIC > 10 is decisive)")
    oos_metric = next((f["out_of_sample"]["metric"] for f in res["fits"] if f["out_of_sample"]), "held-out score")
    out.append(f"    {'model':<5} {'k':>2} {'AIC':>12} {'dAIC':>9} {'BIC':>12} {'weight':>7} "
               f"{'gamma':>8} {'W (dec)':>8} {oos_metric}")
    for f in sorted(res["fits"], key=lambda f: (f["aic"] is None, f["aic"] or 0.0)):
        oos = f["out_of_sample"]["score"] if f["out_of_sample"] else None
        if any(f[k] is None for k in ("aic", "delta_aic", "bic", "akaike_weight")):
            # the fit gave no finite likelihood
            out.append(f"    {f['model']:<5} {f['nvary']:>2} {'n/a':>12} {'n/a':>9} {'n/a':>12} {'n/a':>7} "
                       f"{_g(f['gamma'], 4):>8} {_g(f['W'], 3):>8} {_g(oos, 5)}")
            continue
        out.append(f"    {f['model']:<5} {f['nvary']:>2} {f['aic']:>12.4f} {f['delta_aic']:>9.3f} "
                   f"{f['bic']:>12.4f} {f['akaike_weight']:>7.3f} {_g(f['gamma'], 4):>8} "
                   f"{_g(f['W'], 3):>8} {_g(oos, 5)}")
    out.append(f"    best model by AIC: {res['best_model']}")
    g = res["gamma"]
    if g is not None:
        out.append("")
        out.append(f"[[gamma]] from {g['model']}: {g['value']:.4f} +/- {_g(g['stderr'], 3)}")
        if g["ci"]:
            out.append(f"    95% CI {g['ci_method']} ({g['n_resamples']} resamples, "
                       f"{g['n_failed']} failed): [{g['ci'][0]:.4f}, {g['ci'][1]:.4f}]")
        if g["profile_ci"]:
            lo, hi = g["profile_ci"]
            out.append(f"    95% profile-likelihood CI: [{_g(lo, 4)}, {_g(hi, 4)}]")
        if g["logit_ls"] is not None:
            out.append(f"    cross-check, weighted least squares on logit E: gamma = {g['logit_ls']:.4f}")
        sens = ", ".join(f"t_min={_g(s['t_min'], 3)}: {_g(s['value'], 4)} (n={s['n']})" for s in g["t_min_sensitivity"])
        out.append(f"    sensitivity to t_min: {sens}")
    cm = res.get("count_model")
    if cm:
        out.append("")
        if cm.get("predicted_gamma") is not None:
            out.append(f"[[Count model]] alpha={cm['alpha']:g}, K={cm['K']}, P={cm['P']}: predicted "
                       f"gamma = 1 - 1/alpha = {cm['predicted_gamma']:.4f}; fitted - predicted = "
                       f"{_g(cm.get('gamma_minus_predicted'), 3)}; closed-form constant C = {cm['asymptotic_constant']:.5g}")
        else:
            out.append(f"[[Count model]] alpha={cm['alpha']:g}, K={cm['K']}: {cm['note']}"
                       + (f"; predicted W = {cm['uniform_width']:.3f} decades" if "uniform_width" in cm else ""))
    tr = res["transition"]
    out.append("")
    out.append("[[Transition]]")
    tcs = tr["t_c_methods"]
    out.append(f"    t_c (argmax of -dE/dlog t): M6 fit {_g(tcs['M6'])}, isotonic + windowed slope "
               f"{_g(tcs['isotonic'])}, changepoint {_g(tcs['changepoint'])}")
    out.append(f"    W = {_g(tr['W'], 3)} decades ({tr['W_model'] or 'no logistic fit'}); "
               f"isotonic W = {_g(tr['W_isotonic'], 3)}")
    out.append(f"    verdict: {tr['reason']}")
    if res.get("human_reference"):
        out.append("")
        out.append("[[Human reference]] power fits Q = mu t^-a (t in seconds), fitted by this tool:")
        for h in res["human_reference"]:
            out.append(f"    {h['dataset']:<24} a = {h['a']:.3f} +/- {_g(h['a_stderr'], 2)}  "
                       f"mu = {h['mu']:.3f}  ({'weighted by P.E.' if h['weighted'] else 'unweighted'})")
        out.append("    Each is savings on relearning against the retention delay (see --list-human).")
        out.append(f"    {res['human_note']}")
    if res["warnings"]:
        out.append("")
        out.append("[[Warnings]]")
        out.extend(f"    {w}" for w in res["warnings"])
    return "\n".join(out)


def _fit_block(f: dict, res: dict) -> list[str]:
    lines = [f"[[Fit {f['model']}: {f['title']}]]  {f['formula']}",
             f"    # data points      = {f['n']}",
             f"    # variables        = {f['nvary']}",
             f"    chi-square         = {_g(f['chi2'], 7)}",
             f"    reduced chi-square = {_g(f['redchi'], 7)}",
             f"    Akaike info crit   = {_g(f['aic'], 8)}",
             f"    Bayesian info crit = {_g(f['bic'], 8)}",
             "[[Variables]]"]
    width = max(len(n) for n in f["params"])
    for n, p in f["params"].items():
        if p["fixed"]:
            lines.append(f"    {n + ':':<{width + 1}} {p['value']:.6g} (fixed)")
            continue
        se = p["stderr"]
        rel = f" ({abs(se / p['value']) * 100:.2f}%)" if se is not None and p["value"] else ""
        s = f"    {n + ':':<{width + 1}} {p['value']:.6g} +/- {_g(se, 3)}{rel}"
        if p["ci"]:
            s += f"  95% CI [{p['ci'][0]:.5g}, {p['ci'][1]:.5g}] ({p['ci_method']})"
        if p.get("profile_ci"):
            lo, hi = p["profile_ci"]
            s += f"  profile [{_g(lo)}, {_g(hi)}]"
        if p["at_bound"]:
            s += "  (at bound)"
        lines.append(s)
    extra = []
    if f["half_life"] is not None:
        extra.append(f"half-life {f['half_life']:.5g}")
    if f["t_c"] is not None:
        extra.append(f"t_c {f['t_c']:.5g}")
    if f["W"] is not None:
        extra.append(f"W {f['W']:.3g} decades")
    if extra:
        lines.append("    derived: " + ", ".join(extra) + f" ({res['time_unit']})")
    return lines


def available_time_units() -> dict[str, str]:
    return dict(TIME_UNITS)

"""The text report of ``cram fit-gamma`` (lmfit's ``fit_report`` layout): :func:`fit_gamma_report`
renders the JSON-ready analysis dict that :func:`cramkit.theory.fit.analysis.run` computes."""

from __future__ import annotations


def _g(x, digits: int = 5) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def fit_gamma_report(res: dict, *, all_models: bool = False) -> str:
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

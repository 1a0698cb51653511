"""Text and pictures of a redundancy result, from its JSON form (``RedundancyResult.to_json()``,
``TrajectoryResult.to_json()``); the Result objects in :mod:`cramkit.gpu.redundancy.results` call
these."""

from __future__ import annotations

from pathlib import Path

LABELS = {
    "p0": "P0 constant (C1)",
    "p1": "P1 ridge",
    "plocal": "P-local ridge",
    "p2": "P2 MLP",
    "c2_shuffled": "shuffled (C2)",
}


def _f(x, nd=3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_report(r: dict) -> str:
    """A plain-text summary of one measurement, section by section."""
    taus = list(next(iter(r["overall"].values()))["pi"].keys())
    out = _header(r) + _headline(r)
    out += _fractions(r, taus) + _per_layer(r, taus) + _cram_layers(r, taus) + _context_swap(r, taus)
    out += _positions(r, taus)
    out += _patching(r)
    out.append(f"\n({r['timing_s']:.1f} s)")
    return "\n".join(out)


def _header(r: dict) -> list[str]:
    m, d = r["model"], r["data"]
    return [
        f"cram redundancy: {m['path']} ({m['source']}, {m['n_layers']} layers x {m['n_heads']} heads, "
        f"d={m['d_model']}, tokenizer {m['tokenizer']})",
        f"corpus: {d['corpus']}; tokens FIT/VAL/TEST {d['tokens']['fit']}/{d['tokens']['val']}/"
        f"{d['tokens']['test']} in {d['documents']['fit']}/{d['documents']['val']}/{d['documents']['test']} "
        f"documents; window {d['window']}; positions t >= {r['config']['min_pos']} "
        f"({d['eligible_test_positions']} TEST positions); layers {r['layers_measured']}",
        "",
    ]


def _headline(r: dict) -> list[str]:
    """The headline (C5), the deployable gate's (C6) and the cost (C7)."""
    out = []
    h = r["headline"]
    if h["feasible"]:
        out.append(
            f"HEADLINE (C5): {h['fraction']:.3f}{_ci(h['ci'])} of attention outputs (layer x position) "
            f"replaced by {h['predictor']} at tau={h['tau']:g} with dNLL {h['dnll']:+.4f} nats/token "
            f"(budget {h['budget']:g}); oracle flags, 95% CI over {h['n_test_docs']} TEST documents"
        )
        if h.get("budget_binding") is False:
            ev = r["controls"]["c5_patching"]["everywhere"]["p0_everywhere"]
            out.append(
                f"  warning: mean-ablating every attention output costs only {ev['dnll']:+.4f} nats/token, "
                "within the budget: the budget does not bind for this model"
            )
        if h.get("capped"):
            out.append(
                "  note: the largest tau of the sweep still meets the budget, so this is a lower bound; "
                "extend --sweep-taus"
            )
    else:
        out.append(
            f"HEADLINE (C5): no threshold of the sweep keeps dNLL <= {h['budget']:g} nats/token: "
            f"fraction 0{_ci(h['ci'])}"
        )
    g = r["controls"].get("c6_gate")
    if g:
        gh = g["headline"]
        out.append(
            f"deployable gate (C6): {gh['fraction']:.3f}{_ci(gh['ci'])} skipped within the budget"
            + (
                f" at tau={gh['tau']:g} (dNLL {gh['dnll']:+.4f})"
                if gh["feasible"]
                else " (none feasible)"
            )
        )
    c7 = r["controls"].get("c7_cost")
    if c7:
        out.append(
            f"cost (C7) at tau={c7['tau']:g}: predictor {c7['predictor_flops_per_token']:.3g} FLOPs/token; "
            f"net attention-FLOP saving {_f(c7['net_saving_oracle'])} (oracle), "
            f"{_f(c7['net_saving_gate'])} (gate)"
        )
    return out


def _fractions(r: dict, taus: list[str]) -> list[str]:
    """pi(tau) of every predictor, mean over layers, with CIs; the raw-error fractions."""
    out = [
        "",
        "redundant fraction pi(tau) = P(e_t < tau), centred error, mean over layers (95% CI):",
    ]
    out.append(
        f"  {'predictor':<18}" + "".join(f"{'tau=' + t:>24}" for t in taus) + f"{'R2':>8}{'cos':>8}"
    )
    for p, v in r["overall"].items():
        cells = "".join(
            f"{v['pi'][t]:>10.3f}{_ci(v['pi_ci'][t]) if v['pi_ci'] else '':>14}" for t in taus
        )
        out.append(f"  {LABELS.get(p, p):<18}{cells}{_f(v['r2']):>8}{_f(v['cos']):>8}")
    out.append("  raw error |o - o_hat|^2/|o|^2 (inflated by constant components such as sinks):")
    for p, v in r["overall"].items():
        out.append(f"  {LABELS.get(p, p):<18}" + "".join(f"{v['pi_raw'][t]:>24.3f}" for t in taus))
    return out


def _per_layer(r: dict, taus: list[str]) -> list[str]:
    pp = r["config"]["patch_predictor"]
    out = ["", f"per layer ({LABELS.get(pp, pp)}):"]
    out.append(
        f"  {'layer':>5}{'kind':>5}"
        + "".join(f"{'pi(' + t + ')':>11}" for t in taus)
        + f"{'R2':>8}{'dNLL alone':>12}"
    )
    for lay in r["layers"]:
        v = lay["predictors"][pp]
        alone = lay.get("patch_alone")
        out.append(
            f"  {lay['layer']:>5}{lay.get('kind', 'G'):>5}"
            + "".join(f"{v['pi'][t]:>11.3f}" for t in taus)
            + f"{_f(v['r2']):>8}"
            + f"{(_f(alone['dnll'], 4) if alone else '-'):>12}"
        )
    return out


def _cram_layers(r: dict, taus: list[str]) -> list[str]:
    """CRAM (A) layers: the layer's own semantic memory as a predictor of a_t (a reference, not
    fitted here) and the patch predictor's pi where the router attends / skips."""
    rows = [lay for lay in r["layers"] if "semantic_memory" in lay]
    if not rows:
        return []
    pp = r["config"]["patch_predictor"]
    out = ["", f"CRAM (A) layers: pi(tau) of the layer's own memory M(x) as a predictor of a_t (reference), "
           f"and of {pp} where the router attends / skips:"]  # fmt: skip
    for lay in rows:
        sm, rt = lay["semantic_memory"], lay["route"]
        out.append(f"  layer {lay['layer']} (block {lay['block']}): routed {_f(rt['routed'])}; M(x) R2 {_f(sm['r2'])}")
        out.append("    " + "   ".join(
            f"tau={t}: M {_f(sm['pi'][t])}  {pp} {_f(rt['pi_routed'][t])} / {_f(rt['pi_skipped'][t])}" for t in taus))  # fmt: skip
    return out


def _context_swap(r: dict, taus: list[str]) -> list[str]:
    c3 = r["controls"].get("c3_context_swap")
    if not c3:
        return []
    out = [
        "",
        f"context swap (C3, {c3['n']} layer-positions): P(D<tau) / P(e<tau, D<tau) / P(e<tau, D>=tau)",
    ]
    out.append(
        "  "
        + "   ".join(
            f"tau={t}: {c3['d_small'][t]:.3f} / {c3['flag_and_d_small'][t]:.3f} / {c3['flag_and_d_large'][t]:.3f}"
            for t in taus
        )
    )
    return out


def _positions(r: dict, taus: list[str]) -> list[str]:
    pp = r["config"]["patch_predictor"]
    c4 = r["controls"]["c4_position"]
    t_mid = taus[min(1, len(taus) - 1)]
    out = ["", f"by position (C4), pi({t_mid}) of {LABELS.get(pp, pp)} and P0:"]
    for b in c4["buckets"]:
        out.append(
            f"  t in [{b['lo']}, {b['hi']}): n={b['n']:<7} {pp} {b['pi'][pp][t_mid]:.3f}   p0 {b['pi']['p0'][t_mid]:.3f}"
        )
    return out


def _patching(r: dict) -> list[str]:
    """The sweeps of C5 (oracle flags) and C6 (gate), and the everywhere references."""
    g = r["controls"].get("c6_gate")
    c5 = r["controls"]["c5_patching"]
    out = ["", f"patching sweep (C5, all layers jointly, {c5['predictor']}):"]
    for s in c5["sweep"]:
        out.append(
            f"  tau={s['tau']:<6g} fraction {s['fraction']:.3f}  dNLL {s['dnll']:+.4f} nats/token"
            f"  (relative {_f(s['dnll_rel'], 4)})  net FLOP saving {_f(s['net_saving'])}"
        )
    for name, ref in (c5.get("everywhere") or {}).items():
        out.append(
            f"  every position patched with {name.replace('_everywhere', '')}: dNLL {ref['dnll']:+.4f} "
            f"nats/token (relative {_f(ref['dnll_rel'], 4)}) -- how much the model uses attention at all"
        )
    if g:
        out.append("gate sweep (C6, online g(x) >= 0.5):")
        for s in g["sweep"]:
            out.append(
                f"  tau={s['tau']:<6g} fraction {s['fraction']:.3f}  dNLL {s['dnll']:+.4f}  "
                f"precision {_f(s['precision'])} recall {_f(s['recall'])} AUC {_f(s['auc'])}"
            )
    return out


def format_trajectory(t: dict) -> str:
    """One line per checkpoint of a run: does redundancy fall over training?"""
    lines = [f"cram redundancy over training: {t['run_dir']}"]
    lines.append(
        f"  {'checkpoint':<28}{'step':>8}{'headline':>10}{'CI':>18}{'pi_p1(0.1)':>12}{'R2 p1':>8}"
        f"{'dNLL mean-ablation':>20}"
    )
    for row in t["trajectory"]:
        ci = row["headline_ci"]
        lines.append(
            f"  {row['checkpoint']:<28}{row['step'] if row['step'] is not None else '-':>8}"
            f"{row['headline']:>10.3f}{(_ci(ci) if ci else '-'):>18}"
            f"{_f(row['pi_p1_0.1']):>12}{_f(row['r2_p1']):>8}{_f(row['mean_ablation_dnll'], 4):>20}"
            + ("" if row["budget_binding"] is not False else "  (budget does not bind)")
        )
    if t.get("trend") is not None:
        lines.append(f"  slope of the headline per checkpoint index: {t['trend']:+.4f}")
    return "\n".join(lines)


def plot_report(r: dict, path: str | Path) -> None:
    """Per-layer redundant fractions and the CDFs of the centred error, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cramkit.io import save_figure

    taus = list(next(iter(r["overall"].values()))["pi"].keys())
    t_mid = taus[min(1, len(taus) - 1)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    layers = [lay["layer"] for lay in r["layers"]]
    for p in r["overall"]:
        ax.plot(
            layers,
            [lay["predictors"][p]["pi"][t_mid] for lay in r["layers"]],
            marker="o",
            label=LABELS.get(p, p),
        )
    ax.set_xlabel("layer")
    ax.set_ylabel(f"pi({t_mid}) = P(e_t < {t_mid})")
    ax.set_title("redundant fraction per layer")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax = axes[1]
    cdf = r["cdf"]
    xs = [10**v for v in cdf["log10_e"]]
    for p, v in cdf["predictors"].items():
        ax.plot(xs, v["overall"], label=LABELS.get(p, p))
    for t in taus:
        ax.axvline(float(t), color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("centred relative error e_t")
    ax.set_ylabel("P(e < x), mean over layers")
    ax.set_title("CDF of the error")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_trajectory(t: dict, path: str | Path) -> None:
    """Headline fraction (with CI) against checkpoint step."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cramkit.io import save_figure

    rows = t["trajectory"]
    xs = [row["step"] if row["step"] is not None else i for i, row in enumerate(rows)]
    ys = [row["headline"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", label="headline fraction (dNLL budget)")
    lo = [row["headline_ci"][0] if row["headline_ci"] else y for row, y in zip(rows, ys)]
    hi = [row["headline_ci"][1] if row["headline_ci"] else y for row, y in zip(rows, ys)]
    ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.plot(xs, [row["pi_p1_0.1"] for row in rows], marker="s", label="pi_p1(0.1)")
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)

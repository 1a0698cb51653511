"""The figure of a ``cram fit-gamma`` analysis (:class:`cramkit.theory.fit.analysis.FitGammaResult`):
data, every fitted model, and the bootstrap band of the primary model (matplotlib, Agg backend,
imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cramkit.io import check_plot_path


def plot_fit_gamma(res: dict, path: str | Path) -> None:
    """Draw the curves of the analysis dict ``res`` to ``path`` (the one ``--plot`` rule of
    :func:`cramkit.io.check_plot_path`; the format follows the suffix: .png, .pdf, .svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cramkit.io import save_figure

    path = check_plot_path(path)
    p = res["plot"]
    t, y = np.asarray(p["t"]), np.asarray(p["y"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    if p["n"] is not None:
        n = np.asarray(p["n"])
        err = 1.96 * np.sqrt(np.clip(y * (1 - y), 1e-12, None) / n)
        ax.errorbar(t, y, yerr=err, fmt="o", ms=3, color="black", lw=0.8, label="data (95% binomial)")
    elif p["sigma"] is not None:
        ax.errorbar(t, y, yerr=np.asarray(p["sigma"]), fmt="o", ms=4, color="black", lw=0.8, label="data (±1 sd)")
    else:
        ax.plot(t, y, "o", ms=4, color="black", label="data")
    grid = np.asarray(p["grid"])
    best, primary = res["best_model"], res["primary_model"]
    band = p.get("band")
    if band:
        ax.fill_between(band["t"], band["lo"], band["hi"], color="C0", alpha=0.25,
                        label=f"{band['model']} 95% band ({res['gamma']['ci_method'] if res['gamma'] else 'bootstrap'})")
    for i, (m, curve) in enumerate(p["curves"].items()):
        strong = m in (best, primary)
        ax.plot(grid, curve, lw=2.0 if strong else 0.8, alpha=1.0 if strong else 0.6,
                color="C0" if m == primary else f"C{i + 1}",
                label=f"{m}{' (best AIC)' if m == best else ''}")
    ax.set_xscale("log")
    ax.set_xlabel(f"t ({res['time_unit']})")
    ax.set_ylabel("E(t)")
    title = res["dataset"]
    if res["gamma"]:
        title += f" — gamma ({res['gamma']['model']}) = {res['gamma']['value']:.3f}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)

"""The figure of ``cram reproduce``: one panel per claim that has a curve, from the measured dicts."""

from __future__ import annotations

from cramkit.io import save_figure


def _attention_fall(ax, m: dict) -> None:
    for c in m["curves"]:
        pts = [(s, e) for s, e in zip(c["step"], c["E_rec"]) if s > 0 and e is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, label=f"E_rec, seed {c['seed']}")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("recurring queries attended")
    ax.set_title("attention-fall")
    ax.legend(fontsize=7)


def _accuracy_budget(ax, m: dict) -> None:
    labels: dict[tuple[float, float], list[str]] = {}
    for split, marker in (("iid", "o"), ("fresh", "x")):
        for router, p in m.get("pooled", {}).get(split, {}).items():
            if p["acc"] is None or p["rho_q"] is None:
                continue
            ax.scatter([p["rho_q"]], [p["acc"]], marker=marker)
            labels.setdefault((p["rho_q"], p["acc"]), []).append(f"{router} ({split})")
    for (x, y), names in labels.items():  # routers on the same point share one label
        ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if m.get("floor_rho_q") is not None:
        ax.axvline(m["floor_rho_q"], color="k", ls=":", lw=1, label="floor m_e/n_q")
        ax.legend(fontsize=7)
    ax.set_xlabel("attention per query slot ρ_q")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy-budget")


def _transfer(ax, m: dict) -> None:
    rows = m["rows"]
    s = [r["s"] for r in rows]
    ax.plot(s, [r["R"] for r in rows], "-o", label="R(s) measured")
    ax.plot(s, [r["R_pred_slots"] for r in rows], "k--", label="reuse of the training pool")
    ax.set_xlabel("overlap s")
    ax.set_ylabel("attention reduction R")
    ax.set_title("transfer")
    ax.legend(fontsize=7)


def _compute(ax, m: dict) -> None:
    bars = [(name, m[key]["speedup"]) for key, name in (("kernel", "routed attention"), ("model_step", "model step"))
            if m.get(key)]  # fmt: skip
    ax.bar([b[0] for b in bars], [b[1] for b in bars])
    ax.axhline(1.0, color="k", lw=1)
    ax.set_ylabel("speedup against dense")
    ax.set_title("compute")


PANELS = {"attention-fall": _attention_fall, "accuracy-budget": _accuracy_budget, "transfer": _transfer,
          "compute": _compute}  # fmt: skip


def plot_outcomes(outcomes, path) -> None:
    """One panel per measured claim in :data:`PANELS`; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    todo = [(o.claim.id, o.measured) for o in outcomes if o.measured is not None and o.claim.id in PANELS]
    n = max(1, len(todo))
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, (cid, m) in zip(axes.flat, todo):
        PANELS[cid](ax, m)
    for ax in list(axes.flat)[len(todo):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)

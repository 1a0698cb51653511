"""``cram eval``: evaluate CRAM checkpoints on an SRCD split and print the accuracy-vs-attention table."""

from __future__ import annotations

import json

import click

from cramkit.io import save_figure

COLUMNS = ("router", "step", "acc_r", "acc_e", "acc", "rho_q", "rho_all", "phi", "phi_model")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    rows = result["rows"]
    for key, marker in (("acc", "o"), ("acc_r", "^"), ("acc_e", "v")):
        xs = [r["rho_q"] for r in rows if r[key] is not None]
        ys = [r[key] for r in rows if r[key] is not None]
        ax.scatter(xs, ys, marker=marker, label=key)
    for r in rows:
        ax.annotate(r["router"], (r["rho_q"], r["acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = [rows[i] for i in result["pareto"]]
    if front:
        ax.plot([r["rho_q"] for r in front], [r["acc"] for r in front], "k--", lw=0.8, label="Pareto front (acc)")
    ax.set_xlabel("attention per query rho_q")
    ax.set_ylabel("accuracy")
    ax.set_title(f"split {result['split']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@click.command("eval", short_help="Evaluate checkpoints on an SRCD split (accuracy and attention use).")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--split", default="iid", show_default=True,
              help="The split: iid, fresh, transfer:S, conflict:S (S = overlap in [0, 1]) or struct.")
@click.option("--sequences", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Number of probe sequences to evaluate.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Save an accuracy-vs-attention plot (PNG) to this path.")
def eval_cmd(checkpoints, split, sequences, as_json, plot_path) -> None:
    """Evaluate one or more checkpoints (files or run folders) on an SRCD split.

    For each checkpoint it prints the recurring, episodic and overall accuracy (acc_r, acc_e, acc)
    and the attention use per query slot (rho_q), per position (rho_all) and as a FLOP fraction
    (phi). With several checkpoints it also prints the accuracy-vs-attention (Pareto) table.
    A missing, corrupt or foreign file stops with one clear line and a non-zero exit status.
    """
    from cramkit.gpu.eval import evaluate_checkpoints

    result = evaluate_checkpoints(list(checkpoints), split, sequences=sequences)
    if plot_path:
        _plot(result, plot_path)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    table = Table(title=f"split {split} ({sequences} sequences)")
    table.add_column("checkpoint")
    for c in COLUMNS:
        table.add_column(c, justify="right")
    for r in result["rows"]:
        table.add_row(r["checkpoint"], *(_fmt(r[c]) for c in COLUMNS))
    con.print(table)
    if result["pareto"]:
        pt = Table(title="accuracy vs attention: the Pareto front (lower rho_q, higher acc)")
        for c in ("checkpoint", "router", "rho_q", "acc", "acc_r", "acc_e"):
            pt.add_column(c, justify="right")
        for i in result["pareto"]:
            r = result["rows"][i]
            pt.add_row(r["checkpoint"], r["router"], _fmt(r["rho_q"]), _fmt(r["acc"]), _fmt(r["acc_r"]), _fmt(r["acc_e"]))
        con.print(pt)
    if plot_path:
        con.print(f"plot saved to {plot_path}")

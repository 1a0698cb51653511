"""``cram bench``: benchmarks of the fused kernels (``cram bench kernels``) and of whole models
(``cram bench model``)."""

from __future__ import annotations

import json
import sys

import click
from cramkit.cli.options import CommaList, emit, output_options

from cramkit.io import save_figure
from cramkit.progress import progress_bar

_RHO_HELP = "Routed fractions to measure, comma-separated decimals or fractions (default 1/64,1/16,1/4,1)."


def _guarded(fn, **kwargs):
    """Run a benchmark; a case that cannot be allocated is one clear line, not a traceback."""
    try:
        return fn(**kwargs)
    except (MemoryError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise click.ClickException(f"the benchmark could not run: {first}") from None


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        items = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not items or any(not 2 <= x <= 2**20 for x in items):
        raise click.BadParameter("every sequence length must be an integer in [2, 2^20]")
    return items


def _rho_list(ctx, param, value):
    if value is None:
        return None
    from cramkit.gpu.bench import parse_rho

    from cramkit.errors import CramError

    try:
        items = [parse_rho(x) for x in value.split(",") if x.strip()]
    except CramError as exc:
        raise click.BadParameter(str(exc)) from None
    if not items:
        raise click.BadParameter("give at least one routed fraction")
    return items


def _ops(ctx, param, value):
    from cramkit.gpu.bench import OPS

    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in OPS]
    if bad or not items:
        raise click.BadParameter(f"unknown op(s) {bad}; choose from {', '.join(OPS)}")
    return items


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _rho_text(rho):
    if rho is None:
        return "-"
    from fractions import Fraction

    frac = Fraction(rho).limit_denominator(1024)
    return str(frac) if abs(float(frac) - rho) < 1e-12 else f"{rho:.4g}"


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    title = f"kernels on {m['device']} ({m.get('gpu') or m['processor']}, {m['torch_threads']} threads, torch {m['torch']}), {m['date']}"
    table = Table(title=title)
    for col in ("op", "T", "rho", "algorithm", "ms", "baseline", "baseline ms", "speedup", "FLOP limit"):
        table.add_column(col, justify="left" if col in ("op", "algorithm", "baseline") else "right")
    for c in result["cases"]:
        table.add_row(
            c["op"], str(c["T"]), _rho_text(c["rho"]), c["algorithm"], _fmt(c["ms"], ".2f"), c["baseline"],
            _fmt(c["baseline_ms"], ".2f"), _fmt(c["speedup"], ".2f") + "x", _fmt(c["flop_limit"], ".1f"),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list] = {}
    for c in result["cases"]:
        if c["rho"] is not None and c["baseline"] in ("sdpa_dense", "model_rho_1"):
            groups.setdefault((c["op"], c["T"]), []).append((c["rho"], c["speedup"]))
    for (op, t_len), pts in sorted(groups.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=f"{op} T={t_len}")
    rhos = sorted({c["rho"] for c in result["cases"] if c["rho"] is not None})
    if rhos:
        ax.plot(rhos, [1 / r for r in rhos], "k:", label="1/rho (work ratio)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("routed fraction rho")
    ax.set_ylabel("speedup over the dense baseline")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


@click.group(short_help="Benchmark the fused kernels and whole models.")
def bench() -> None:
    """Benchmarks of cram's fused operators and models. Timings are medians of interleaved repeats."""


@bench.command("kernels", short_help="Time routed attention and the SSM scan against baselines.")
@click.option("--t", "t_values", callback=_int_list, default=None, metavar="LIST",
              help="Sequence lengths, comma-separated (default 1024,4096 on the CPU, 4096,16384 on a GPU).")
@click.option("--rho", "rhos", callback=_rho_list, default=None, metavar="LIST", help=_RHO_HELP)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed repeats per case; the median is reported.")
@click.option("--ops", "ops", callback=_ops, default="routed_attention,ssm_scan,model_step", show_default=True,
              help="Which measurements to run, comma-separated.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size of the op cases.")
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True, help="Number of heads H.")
@click.option("--head-dim", type=click.IntRange(min=1), default=64, show_default=True,
              help="Head dimension D (and the SSM head dimension P).")
@click.option("--d-state", type=click.IntRange(min=1), default=16, show_default=True, help="SSM state size N.")
@click.option("--model-t", type=click.IntRange(min=16, max=2**20), default=2048, show_default=True,
              help="Sequence length of the model_step cases.")
@click.option("--model-batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Batch size of the model_step cases.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run: auto picks CUDA when it is available.")
@click.option("--threads", type=click.IntRange(min=1, max=1024), default=None,
              help="CPU threads for torch (default: torch's own choice).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random inputs and routes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also save a speedup-versus-rho plot to this file.")
@click.option("--quiet", is_flag=True, help="No progress output on stderr.")
def kernels(t_values, rhos, repeats, ops, batch, heads, head_dim, d_state, model_t, model_batch, device,
            threads, seed, as_json, plot_path, quiet) -> None:
    """Time routed attention and the SSM scan (forward + backward) against their baselines.

    Routed attention is compared with dense causal SDPA over every position and, on the CPU,
    with masked SDPA over the gathered routed queries; the SSM scan with its sequential float64
    reference; one model training step at each rho with the same model routing every position.
    Candidate and baselines run interleaved in one process, and the table reports the median
    of the repeats and the ratio.
    """
    from cramkit.gpu.bench import DEFAULT_RHOS, bench_kernels, count_cases, default_t_values

    dev = None if device == "auto" else device
    show = not quiet and not as_json and sys.stderr.isatty()
    rhos = rhos or list(DEFAULT_RHOS)
    if show:
        import torch
        from rich.console import Console
        from rich.progress import Progress

        n = count_cases(ops, t_values or default_t_values(dev or ("cuda" if torch.cuda.is_available() else "cpu")), rhos)
        with Progress(transient=True, console=Console(stderr=True)) as bar:
            task = bar.add_task("benchmark", total=n)
            seen = []

            def step(label: str) -> None:
                bar.update(task, description=label, advance=1 if seen else 0)
                seen.append(label)

            result = _guarded(bench_kernels, t_values=t_values, rhos=rhos, repeats=repeats, device=dev, ops=ops, batch=batch,
                                   heads=heads, head_dim=head_dim, d_state=d_state, model_t=model_t,
                                   model_batch=model_batch, threads=threads, seed=seed, progress=step)
    else:
        result = _guarded(bench_kernels, t_values=t_values, rhos=rhos, repeats=repeats, device=dev, ops=ops, batch=batch,
                               heads=heads, head_dim=head_dim, d_state=d_state, model_t=model_t,
                               model_batch=model_batch, threads=threads, seed=seed)
    if plot_path:
        _plot(result, plot_path)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))
    else:
        _print_table(result)


def _rho_tuple(ctx, param, value):
    items = _rho_list(ctx, param, value)
    return None if items is None else tuple(items)


@bench.command("model", short_help="Per-token time of training, prefill and decode for whole models.")
@click.option("--t", "t_values", type=CommaList(int, lo=16, hi=2**20, what="integers"), default="512,1024,2048,4096,8192,16384",
              show_default=True, metavar="LIST", help="Context lengths, comma-separated.")
@click.option("--rho", "rhos", callback=_rho_tuple, default="1,1/4,1/16,1/64", show_default=True, metavar="LIST",
              help="Forced routed fractions of the cram model, decimals or fractions.")
@click.option("--models", type=CommaList(str, what="model names"), default="cram,dense,none,ssm,transformer",
              show_default=True, help="Models to compare, comma-separated.")
@click.option("--modes", type=CommaList(str, what="mode names"), default="train,prefill,decode", show_default=True,
              help="What to time: train (forward+backward), prefill, decode.")
@click.option("--repeats", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Timed repeats per case (interleaved across models); the median is reported.")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Sequences per batch.")
@click.option("--decode-steps", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Timed decode steps after the untimed prefill of T-1 tokens.")
@click.option("--d-model", type=click.IntRange(8, 8192), default=64, show_default=True,
              help="Model width (the quick preset's widths scale with it).")
@click.option("--pattern", default="SA", show_default=True, help="Block pattern of the hybrids (S and A).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run: auto picks CUDA when it is available.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for torch (default: torch's own choice).")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure peak memory (one extra run per case).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of weights, tokens and routes.")
@output_options(plot_help="Write per-token time against T (one line per model, one panel per mode) to this image.")
def model(t_values, rhos, models, modes, repeats, batch, decode_steps, d_model, pattern, device, threads, memory,
          seed, as_json, plot, quiet) -> None:
    """Time whole models per token: training steps, prefill and decode, at several context lengths.

    cram at each forced routed fraction, the dense hybrid, the no-attention floor, a pure-SSM
    stack and a plain causal-SDPA transformer of the same width and depth run side by side in
    one process, interleaved repeat by repeat. Prints per-token tables, speed-ups over the dense
    hybrid, peak memory, the crossover context length and the issue #9 targets.
    """
    from cramkit.gpu.bench.model import ModelBenchConfig, run

    cfg = ModelBenchConfig(t_values=t_values, rhos=rhos, models=models, modes=modes, repeats=repeats, batch=batch,
                           decode_steps=decode_steps, d_model=d_model, pattern=pattern,
                           device=None if device == "auto" else device, threads=threads, memory=memory, seed=seed)  # fmt: skip
    with progress_bar(enabled=not quiet and not as_json) as progress:
        result = _guarded(run, config=cfg, progress=progress)
    emit(result, as_json=as_json, plot=plot)

"""``cram bench``: benchmarks of the fused kernels (``cram bench kernels``) and of whole models
(``cram bench model``)."""

from __future__ import annotations

import click

from cramkit.cli.options import CommaList, emit, output_options
from cramkit.errors import CramError
from cramkit.progress import progress_bar

_RHO_HELP = "Routed fractions to measure, comma-separated decimals or fractions (default 1/64,1/16,1/4,1)."


class RhoList(click.ParamType):
    """Comma-separated routed fractions, each a decimal or a fraction in (0, 1] (``1/64,0.25,1``);
    empty items are refused as in :class:`~cramkit.cli.options.CommaList`."""

    name = "list"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        from cramkit.gpu.bench import parse_rho

        parts = CommaList(str, what="routed fractions").convert(value, param, ctx)
        try:
            return tuple(parse_rho(p) for p in parts)
        except CramError as exc:
            self.fail(str(exc), param, ctx)


def _guarded(fn, **kwargs):
    """Run a benchmark; a case that cannot be allocated is one clear line, not a traceback."""
    try:
        return fn(**kwargs)
    except (MemoryError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise click.ClickException(f"the benchmark could not run: {first}") from None


@click.group(short_help="Benchmark the fused kernels and whole models.")
def bench() -> None:
    """Benchmarks of cram's fused operators and models. Timings are medians of interleaved repeats."""


@bench.command("kernels", short_help="Time routed attention and the SSM scan against baselines.")
@click.option("--t", "t_values", type=CommaList(int, lo=2, hi=2**20, what="integers"), default=None, metavar="LIST",
              help="Sequence lengths, comma-separated (default 1024,4096 on the CPU, 4096,16384 on a GPU).")
@click.option("--rho", "rhos", type=RhoList(), default=None, metavar="LIST", help=_RHO_HELP)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed repeats per case; the median is reported.")
@click.option("--ops", "ops", type=CommaList(str, what="op names"), default="routed_attention,ssm_scan,model_step",
              show_default=True, help="Which measurements to run, comma-separated.")
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
@click.option("--backends", type=CommaList(str, what="backend names"), default=None, metavar="LIST",
              help="Routed attention backends to time, each its own row: auto, cpu, gathered, triton, flex "
              "(default: auto on the CPU; auto,triton,flex on a GPU).")
@click.option("--forward-only", is_flag=True,
              help="Time the forward pass alone (all sides); needed for the flex backend on the CPU.")
@output_options(plot_help="Also save a speedup-versus-rho plot to this file.",
                json_help="Print one JSON object instead of a table.")
def kernels(t_values, rhos, repeats, ops, batch, heads, head_dim, d_state, model_t, model_batch, device,
            threads, seed, backends, forward_only, as_json, plot, quiet) -> None:
    """Time routed attention and the SSM scan (forward + backward) against their baselines.

    Routed attention is compared with dense causal SDPA over every position and, on the CPU,
    with masked SDPA over the gathered routed queries; the SSM scan with its sequential float64
    reference; one model training step at each rho with the same model routing every position.
    Candidate and baselines run interleaved in one process, and the table reports the median
    of the repeats and the ratio.
    """
    from cramkit.gpu.bench.kernels import KernelBenchConfig, run

    cfg = KernelBenchConfig(t_values=t_values, repeats=repeats, device=None if device == "auto" else device, ops=ops,
                            batch=batch, heads=heads, head_dim=head_dim, d_state=d_state, model_t=model_t,
                            model_batch=model_batch, threads=threads, seed=seed, backends=backends,
                            forward_only=forward_only, **({} if rhos is None else {"rhos": rhos}))  # fmt: skip
    with progress_bar(enabled=not quiet and not as_json) as progress:
        result = _guarded(run, config=cfg, progress=progress)
    emit(result, as_json=as_json, plot=plot)


@bench.command("model", short_help="Per-token time of training, prefill and decode for whole models.")
@click.option("--t", "t_values", type=CommaList(int, lo=16, hi=2**20, what="integers"), default=None,
              metavar="LIST", help="Context lengths, comma-separated (default 512,1024,2048,4096,8192,16384; "
              "preset real: 2048,8192).")
@click.option("--rho", "rhos", type=RhoList(), default=None, metavar="LIST",
              help="Forced routed fractions of the cram model, decimals or fractions (default 1,1/4,1/16,1/64; "
              "preset real: 1,1/16,1/64).")
@click.option("--models", type=CommaList(str, what="model names"), default="cram,hybrid,cram-rho1,none,ssm,transformer",
              show_default=True, help="Models to compare, comma-separated: cram (routed), hybrid (the plain hybrid: "
              "S blocks and plain dense attention), cram-rho1 (CRAM attending everywhere; also 'dense'), none, ssm, "
              "transformer.")
@click.option("--modes", type=CommaList(str, what="mode names"), default="train,prefill,decode", show_default=True,
              help="What to time: train (forward+backward), prefill, decode.")
@click.option("--preset", type=click.Choice(["real"]), default=None,
              help="Sizes users train: width 512,1024 x vocabulary 4096,32768, 12 layers on a GPU; the options "
              "given explicitly win.")
@click.option("--width", "widths", type=CommaList(int, lo=8, hi=8192, what="integers"), default=None, metavar="LIST",
              help="Model widths, comma-separated (default 64); every width runs with every vocabulary.")
@click.option("--d-model", "d_model", type=click.IntRange(8, 8192), default=None,
              help="One model width (the older spelling of --width).")
@click.option("--vocab", "vocabs", type=CommaList(int, lo=2, hi=2**20, what="integers"), default=None, metavar="LIST",
              help="Vocabulary sizes, comma-separated (default 256).")
@click.option("--layers", type=click.IntRange(1, 1024), default=None,
              help="Blocks per model: the pattern tiled (a multiple of its length; default one pattern).")
@click.option("--repeats", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Timed repeats per case (interleaved across models); the median is reported.")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Sequences per batch.")
@click.option("--decode-steps", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Timed decode steps after the untimed prefill of T-1 tokens.")
@click.option("--pattern", default="SA", show_default=True, help="Block pattern of the hybrids (S and A).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run: auto picks CUDA when it is available.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for torch (default: torch's own choice).")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure peak memory (one extra run per case).")
@click.option("--flops/--no-flops", default=True, show_default=True,
              help="Count FLOPs per token (one extra untimed run per case; docs/kernels.md, FLOP model).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of weights, tokens and routes.")
@click.option("--eager", is_flag=True, default=False,
              help="Decode with the eager step and prefill with the eager model.prefill instead of the compiled "
                   "sync-free step and routed prefill.")
@output_options(plot_help="Write per-token time against T (one line per model, one panel per size and mode) to this image.")
def model(t_values, rhos, models, modes, preset, widths, d_model, vocabs, layers, repeats, batch, decode_steps, pattern,
          device, threads, memory, flops, seed, eager, as_json, plot, quiet) -> None:
    """Time whole models per token: training steps, prefill and decode, at several context lengths.

    cram at each forced routed fraction, the plain hybrid (the same S blocks with plain dense
    attention), CRAM at rho=1, the no-attention floor, a pure-SSM stack and a plain causal-SDPA
    transformer of the same width, depth and vocabulary run side by side in one process,
    interleaved repeat by repeat. Prints per-token tables, every speed-up over the plain hybrid
    and CRAM rho=1 beside its FLOP-predicted ratio and measured/predicted, CRAM's FLOPs by part,
    peak memory, the crossover context length and the issue #9 targets.
    """
    from cramkit.gpu.bench.model import PRESETS, ModelBenchConfig, preset_config, run

    if widths is not None and d_model is not None:
        raise click.UsageError("give --width or --d-model, not both")
    if d_model is not None:
        widths = (d_model,)
    sizes = None
    if widths is not None or vocabs is not None:
        base = PRESETS[preset] if preset else {"widths": (64,), "vocabs": (256,)}
        sizes = tuple((w, v) for w in (widths or base["widths"]) for v in (vocabs or base["vocabs"]))
    dev = None if device == "auto" else device
    common = dict(t_values=t_values, rhos=rhos, models=models, modes=modes, repeats=repeats, batch=batch,
                  decode_steps=decode_steps, pattern=pattern, threads=threads, memory=memory, flops=flops, seed=seed,
                  sizes=sizes, layers=layers, compiled=not eager)  # fmt: skip
    if preset:
        cfg = preset_config(preset, dev, **common)
    else:
        cfg = ModelBenchConfig(device=dev, **{k: v for k, v in common.items() if v is not None})
    with progress_bar(enabled=not quiet and not as_json) as progress:
        result = _guarded(run, config=cfg, progress=progress)
    emit(result, as_json=as_json, plot=plot)

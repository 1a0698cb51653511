"""``cram generate``: continue a prompt with a byte-level text checkpoint (docs/inference.md)."""

from __future__ import annotations

import click

from cramkit.cli.options import emit, json_option


@click.command("generate", short_help="Continue a prompt with a text checkpoint (recurrent inference).")
@click.argument("run", type=click.Path())
@click.option("--prompt", required=True, help="The text to continue (UTF-8; encoded with the run's tokenizer: bytes or subwords).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens to generate (bytes for a byte-level run).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Sampling temperature; 0 = greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample only from the k most likely tokens (0 = all).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the sampler.")
@click.option("--eager", is_flag=True, default=False,
              help="Prefill and decode with the eager model.prefill and step instead of the sync-free routed "
                   "prefill and the compiled sync-free step.")
@json_option()
def generate(run, prompt, max_new_tokens, temperature, top_k, seed, eager, as_json) -> None:
    """Continue PROMPT with the text checkpoint RUN (a checkpoint file or run folder).

    Prints the prompt and its continuation, then on stderr the speed (tokens/s, prefill time)
    and the attention use: the fraction of generating positions each CRAM layer routed to
    attention. Prefill runs the prompt once, by default through the sync-free routed prefill
    (uncompiled: one prompt does not pay a compile); each new token is one recurrent step, by default
    the sync-free step compiled ahead of time (AOTInductor where a C++ compiler is found, else
    torch.compile; cached on disk under $CRAM_CACHE_DIR, $XDG_CACHE_HOME/cram or ~/.cache/cram;
    the compile time is reported apart and not counted in tokens/s). A subword run decodes with
    the tokenizer.json of its run folder (checked against the checkpoint's hash).
    """
    from cramkit.gpu.run.generate import GenerateConfig
    from cramkit.gpu.run.generate import run as run_generate

    result = run_generate(GenerateConfig(run, prompt, max_new_tokens, temperature, top_k, seed, eager))
    emit(result, as_json=as_json)
    if not as_json:
        click.echo(result.stats(), err=True)

"""Benchmarks of the subword text pipeline (issue 18; docs/results/text-pipeline.md). Not a test.

    apt-get install -y bible-kjv && bible "gen1:1-rev22:21" > /tmp/kjv.txt
    CRAM_CACHE_DIR=$(mktemp -d) python docs/results/data/text_pipeline_bench.py /tmp/kjv.txt

Times (best of ``--repeats``, wall clock): training a 4096-token byte-level BPE on the corpus
(``Tokenizer.train_bpe``, what ``text.tokenizer = "bpe:4096"`` does, on the 95 % training split),
preparing the corpus (``prepare``: read, split, encode both splits, write the memory-mapped token
files; the tokenizer given, so this is encoding and writing alone), the cached second call, a cold
``prepare(corpus, "bpe:4096")`` (training, encoding and writing: a first run's cost), and
sampling training batches from the prepared memmap (``text_batch``, batch 64 x context 512,
int64 tensors out). Side by side, what preparing did before it streamed (the whole-text reference:
``read_text``, ``split_text``, ``Tokenizer.encode`` of both splits, the two token files written)
and the BPE trained from the streamed training split (``stream.split_chunks``, as the cold
``bpe:N`` preparation does) beside the one trained on the split's whole text. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CPU: dict[str, float] = {}


def best(fn, repeats: int, name: str = "") -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (and, in CPU[name], the CPU seconds of that call, all
    threads of this process: what the call costs on an idle machine's cores)."""
    times, out = [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu = min(times)
    CPU[name] = cpu
    return wall, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=2000)
    args = ap.parse_args()
    os.environ.setdefault("CRAM_CACHE_DIR", tempfile.mkdtemp())
    import tokenizers

    from cramkit.gpu.tasks import stream as S
    from cramkit.gpu.tasks.prepared import cache_dir, prepare, read_text, split_text, token_dtype
    from cramkit.gpu.tasks.text import text_batch
    from cramkit.gpu.tasks.tokenizer import Tokenizer

    torch.set_num_threads(1)
    text, raw = read_text(args.corpus)
    train_text, _ = split_text(text, "tail", 0.05)
    t_train, tok = best(lambda: Tokenizer.train_bpe([train_text], args.vocab), args.repeats, "bpe_train")

    def stream_train():  # what prepare(corpus, "bpe:N") does before encoding: plan the split, train
        plan = S.plan_split(args.corpus, "strict", "tail", 0.05)
        texts = (c for batch in S.split_chunks(args.corpus, "strict", plan, only="train") for _, c in batch)
        return Tokenizer.train_bpe(texts, args.vocab)

    t_train_stream, tok_stream = best(stream_train, args.repeats, "bpe_train_stream")
    assert tok_stream.sha256 == tok.sha256  # the same tokenizer from the stream

    def whole_prepare():  # what prepare did before it streamed: the text whole, encoded, written
        text, _ = read_text(args.corpus)
        parts = split_text(text, "tail", 0.05)
        out = Path(tempfile.mkdtemp())
        for name, part in zip(("train", "val"), parts):
            (out / f"{name}.bin").write_bytes(tok.encode(part).astype(token_dtype(tok.vocab_size)).tobytes())
        return out

    t_whole, whole = best(whole_prepare, args.repeats, "prepare_whole_text")

    def fresh_prepare():
        for d in (cache_dir() / "corpora").glob("*"):
            if d.is_dir():
                import shutil

                shutil.rmtree(d)
        return prepare(args.corpus, tok, val_frac=0.05)

    t_prep, prep = best(fresh_prepare, args.repeats, "prepare")
    for name in ("train", "val"):  # the streamed files are the whole-text path's, byte for byte
        assert (prep.path / f"{name}.bin").read_bytes() == (whole / f"{name}.bin").read_bytes()
    t_cached, _ = best(lambda: prepare(args.corpus, tok, val_frac=0.05), args.repeats, "prepare_cached")

    def cold_bpe():  # what a first run with text.tokenizer = "bpe:N" does: train, encode, write
        os.environ["CRAM_CACHE_DIR"] = tempfile.mkdtemp()
        return prepare(args.corpus, f"bpe:{args.vocab}", val_frac=0.05)

    t_cold, cold = best(cold_bpe, args.repeats, "prepare_with_bpe_training")
    assert cold.tokenizer.sha256 == tok.sha256  # the same BPE as trained above: deterministic
    gen = torch.Generator().manual_seed(0)
    b, t = 64, 512
    text_batch(prep.train, t, b, gen)  # warm the page cache
    t0 = time.perf_counter()
    for _ in range(args.batches):
        x, _y = text_batch(prep.train, t, b, gen)
    t_sample = time.perf_counter() - t0
    n_tok = len(prep.train) + len(prep.val)
    print(json.dumps({
        "corpus": str(args.corpus), "bytes": len(raw), "tokens": n_tok, "bytes_per_token": len(raw) / n_tok,
        "vocab": tok.vocab_size, "dtype": str(np.asarray(prep.train).dtype),
        "bpe_train_s": t_train, "bpe_train_stream_s": t_train_stream, "prepare_s": t_prep,
        "prepare_whole_text_s": t_whole, "prepare_cached_s": t_cached,
        "prepare_with_bpe_training_s": t_cold,
        "cpu_s": CPU, "sample_tokens_per_s": args.batches * b * (t + 1) / t_sample, "sample_batch": [b, t],
        "tokenizers": tokenizers.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "cpus": os.cpu_count(), "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

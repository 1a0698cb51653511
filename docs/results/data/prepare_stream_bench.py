"""Preparing a large corpus: streaming against the whole-text path (issue 18; docs/results/text-pipeline.md).
Not a test. One path per process, so the peak resident memory is that path's:

    python docs/results/data/prepare_stream_bench.py BIG.txt --tokenizer TOK.json --path stream
    python docs/results/data/prepare_stream_bench.py BIG.txt --tokenizer TOK.json --path whole

``stream``: :func:`cramkit.gpu.tasks.prepared.prepare` (the file read ``--chunk`` bytes at a
time) into an empty cache. ``whole``: what ``prepare`` did before it streamed, the reference kept
beside it: ``read_text`` (the whole file), ``split_text``, ``Tokenizer.encode`` of each split, the
two token files written. ``--tokenizer``: a tokenizer.json, or ``bpe:N`` (``stream`` trains it from
an iterator over the training split; ``whole`` trains it on the training split's text). Prints one
JSON object: wall and CPU seconds, the peak RSS (``getrusage``) before the work (after the
imports: torch and tokenizers) and after it, tokens, and the SHA-256 of the token files (read
back in 1 MiB pieces after the peak is taken), so the two paths' outputs can be compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--path", choices=("stream", "whole"), required=True)
    ap.add_argument("--split", default="tail")
    ap.add_argument("--chunk", type=int, default=0, help="bytes per read (stream; 0: the default)")
    args = ap.parse_args()
    os.environ["CRAM_CACHE_DIR"] = tempfile.mkdtemp(prefix="cram-bench-")
    import torch

    from cramkit.gpu.tasks import prepared as P
    from cramkit.gpu.tasks.tokenizer import Tokenizer

    torch.set_num_threads(1)
    tok = args.tokenizer if args.tokenizer.startswith("bpe:") else Tokenizer.from_file(args.tokenizer)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.path == "stream":
        kw = {"chunk": args.chunk} if args.chunk else {}
        prep = P.prepare(args.corpus, tok, split=args.split, **kw)
        files = [prep.path / "train.bin", prep.path / "val.bin"]
        vocab = prep.tokenizer.vocab_size
    else:
        text, _raw = P.read_text(args.corpus)
        train, val = P.split_text(text, args.split, 0.05)
        if isinstance(tok, str):
            tok = Tokenizer.train_bpe([train], int(tok.split(":")[1]))
        out = Path(tempfile.mkdtemp(prefix="cram-bench-whole-"))
        files = [out / "train.bin", out / "val.bin"]
        for f, part in zip(files, (train, val)):
            f.write_bytes(tok.encode(part).astype(P.token_dtype(tok.vocab_size)).tobytes())
        vocab = tok.vocab_size
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while b := fh.read(1 << 20):
                h.update(b)
    print(json.dumps({
        "path": args.path, "corpus": args.corpus, "bytes": os.path.getsize(args.corpus), "split": args.split,
        "tokenizer": args.tokenizer, "vocab": vocab, "chunk": args.chunk or None,
        "tokens": int(sum(f.stat().st_size for f in files) // np.dtype(P.token_dtype(vocab)).itemsize),
        "wall_s": wall, "cpu_s": cpu, "peak_rss_mb_before": rss0, "peak_rss_mb": rss1,
        "tokens_sha256": h.hexdigest(), "uptime_start": uptime0,
        "uptime_end": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

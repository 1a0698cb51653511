"""Streaming preparation (gpu/tasks/stream.py, gpu/tasks/prepared.py): the same token files as the
whole-text reference (read_text + split_text + Tokenizer.encode) with the file read in chunks as
small as one byte, and memory bounded by the chunk, not the corpus."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cramkit.errors import CramError
from cramkit.gpu.tasks import prepared as P
from cramkit.gpu.tasks import stream as S
from cramkit.gpu.tasks.tokenizer import SafeChunker, Tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "gpu" / "redundancy" / "default_corpus.txt"
# multi-byte characters (2, 3 and 4 bytes), separators of every kind the document split knows
# (blank lines with spaces and tabs, "\r\n", a run of blank lines, a "\n \r\n" that is no separator),
# and lines with no newline cut at all
ODD = ("naïve café — 日本語 🎉 end\n\nSecond doc, \t with  two  spaces\n \t \nthird\r\n\r\nstill third\n"
       "\n\n\n\nfourth ünïcödé\n \r\nstill fourth " + "wordy " * 40 + "\n\n  fifth starts after spaces\n")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe([CORPUS.read_text(encoding="utf-8") + ODD], 320)


def _reference(path: Path, tok: Tokenizer, split: str, val_frac: float) -> tuple[np.ndarray, np.ndarray, str, str]:
    text, _ = P.read_text(path, errors="surrogateescape" if tok.hf is None else "strict")
    train, val = P.split_text(text, split, val_frac)
    return tok.encode(train), tok.encode(val), train, val


def _check(src: Path, tok: Tokenizer, split: str, val_frac: float, chunk: int) -> P.PreparedCorpus:
    got = P.prepare(src, tok, split=split, val_frac=val_frac, chunk=chunk)
    want_train, want_val, train, val = _reference(src, tok, split, val_frac)
    dtype = P.token_dtype(tok.vocab_size)
    assert (got.path / "train.bin").read_bytes() == want_train.astype(dtype).tobytes()
    assert (got.path / "val.bin").read_bytes() == want_val.astype(dtype).tobytes()
    assert got.meta["n_bytes_train"] == len(train.encode("utf-8", "surrogateescape"))
    assert got.meta["n_bytes_val"] == len(val.encode("utf-8", "surrogateescape"))
    return got


@pytest.mark.parametrize("split", ["tail", "documents"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_streamed_tokens_equal_the_whole_text_path(tmp_path, bpe, split, chunk):
    """Chunks of 1-5 bytes cut every multi-byte character and every separator somewhere."""
    src = tmp_path / "odd.txt"
    src.write_text(ODD * 3, encoding="utf-8")
    raw = src.read_bytes()
    assert any(b >= 0xC0 for b in raw[chunk - 1 :: chunk]) or chunk == 1  # a lead byte ends a chunk
    for tok in (bpe, Tokenizer.bytes()):
        # val_frac 0.3: the tail cut and every third document (k = 3) fall inside the text
        _check(src, tok, split, 0.3, chunk)


def test_streamed_splits_of_a_real_corpus(tmp_path, bpe):
    src = tmp_path / "c.txt"
    src.write_text(CORPUS.read_text(encoding="utf-8"), encoding="utf-8")
    for split in ("tail", "documents"):
        for chunk in (999, 4096):
            _check(src, bpe, split, 0.1, chunk)


@pytest.mark.parametrize("split", ["tail", "documents"])
def test_bpe_trained_from_the_stream_is_the_whole_text_one(tmp_path, split):
    src = tmp_path / "c.txt"
    src.write_text(CORPUS.read_text(encoding="utf-8") + ODD, encoding="utf-8")
    got = P.prepare(src, "bpe:300", split=split, val_frac=0.1, chunk=777)
    text, _ = P.read_text(src)
    train, val = P.split_text(text, split, 0.1)
    want = Tokenizer.train_bpe([train], 300)
    assert got.tokenizer.sha256 == want.sha256
    assert np.array_equal(np.asarray(got.train), want.encode(train))
    assert np.array_equal(np.asarray(got.val), want.encode(val))


def test_document_boundaries_across_pieces_equal_the_regex():
    """DocBounds fed one character at a time finds the reference separator's match ends."""
    text = ODD * 2
    want = [m.end() for m in P._DOC_SEP.finditer(text) if m.end() < len(text)]
    for size in (1, 2, 3, 7):
        db, got = S.DocBounds(), []
        for i in range(0, len(text), size):
            got += [i + at for at in db.feed(text[i : i + size])]
        assert got == want


def test_the_safe_chunker_cuts_at_spaces_when_there_is_no_newline(bpe):
    text = "one long line " * 500 + "\n"  # no "\S\n\S" anywhere: only the space cuts
    sc = SafeChunker(100)
    parts = [c for i in range(0, len(text), 37) for c in sc.feed(text[i : i + 37])] + sc.flush()
    assert "".join(parts) == text and len(parts) > 50 and max(map(len, parts)) < 100 + 37 + 10
    assert np.array_equal(np.concatenate(bpe.encode_pieces(parts)), np.asarray(bpe.hf.encode(text).ids))


def test_a_bad_byte_is_named_at_its_offset_in_the_file_whatever_the_chunk(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc \xc3\xa9 " * 7 + b"\xe9 tail\n")  # 0xe9 alone at offset 49
    for chunk in (1, 4, 5, 1000):
        with pytest.raises(CramError, match=r"is not UTF-8 \(byte 0xe9 at offset 49\)"):
            P.prepare(bad, "bpe:260", chunk=chunk)
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"hello\n" * 10 + b"\xe6\x97")  # a character cut by the end of the file
    with pytest.raises(CramError, match=r"byte 0xe6 at offset 60"):
        P.prepare(cut, "bpe:260", chunk=7)
    with pytest.raises(CramError, match=r"byte 0xe6 at offset 60"):
        P.read_text(cut)  # the reference says the same


def test_memory_is_bounded_by_the_chunk_not_the_corpus(tmp_path):
    """Peak Python memory (tracemalloc: strings, bytes, NumPy arrays) of preparing a corpus 4x
    larger stays the same; the whole-text path's grows with the corpus."""
    base = CORPUS.read_text(encoding="utf-8") + ODD
    chunk = 1 << 12
    peaks = {}
    for copies in (24, 96):  # about 0.7 MB and 2.8 MB: 170 and 690 chunks
        src = tmp_path / f"c{copies}.txt"
        src.write_text(base * copies, encoding="utf-8")
        for split in ("tail", "documents"):
            tracemalloc.start()
            try:
                got = P.prepare(src, "bytes", split=split, chunk=chunk)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert len(got.train) + len(got.val) == src.stat().st_size
            peaks[copies, split] = peak
    size = (tmp_path / "c96.txt").stat().st_size
    for split in ("tail", "documents"):
        assert peaks[96, split] < 1.3 * peaks[24, split] + chunk, peaks
        assert peaks[96, split] < min(size / 8, 64 * chunk), peaks
    tracemalloc.start()
    try:
        _reference(tmp_path / "c96.txt", Tokenizer.bytes(), "tail", 0.05)
        whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole > 4 * size  # the reference holds the text (and its int64 ids): what streaming avoids


def test_the_long_passes_report_progress(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text(CORPUS.read_text(encoding="utf-8") * 40, encoding="utf-8")  # about 1.3 MB: 2 MiB units
    calls = []
    P.prepare(src, "bpe:260", chunk=1 << 18, progress=lambda *a: calls.append(a))
    stages = {}
    for stage, done, total in calls:
        assert 0 <= done <= total == 2
        stages.setdefault(stage, []).append(done)
    assert set(stages) == {"read corpus", "train BPE", "encode corpus"}
    assert all(v == sorted(v) and v[-1] == 2 for v in stages.values())


def test_the_byte_task_maps_its_file_instead_of_reading_it(tmp_path):
    import torch

    from cramkit.gpu.tasks.text import TextTask, text_batch

    src = tmp_path / "c.txt"
    src.write_bytes(CORPUS.read_bytes())
    task = TextTask(src, seq_len=32, val_frac=0.1)
    assert isinstance(task.train_data, np.memmap) and isinstance(task.val_data, np.memmap)
    raw = np.frombuffer(src.read_bytes(), dtype=np.uint8)
    n_val = int(len(raw) * 0.1)
    assert np.array_equal(task.val_data, raw[len(raw) - n_val :])  # the same tail as before
    mem = torch.from_numpy(raw[: len(raw) - n_val].astype(np.int64))
    x1, y1 = text_batch(task.train_data, 32, 4, torch.Generator().manual_seed(1))
    x2, y2 = text_batch(mem, 32, 4, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_a_file_that_changes_between_passes_is_one_line_and_caches_nothing(tmp_path, capsys):
    src = tmp_path / "c.txt"
    src.write_text(CORPUS.read_text(encoding="utf-8"), encoding="utf-8")

    grown = []

    def grow(stage, done, total):  # another program appends once while the file is being read
        if stage == "read corpus" and not grown:
            grown.append(stage)
            with open(src, "a", encoding="utf-8") as fh:
                fh.write("appended\n")

    with pytest.raises(CramError, match="changed while it was being prepared") as e:
        P.prepare(src, "bpe:260", chunk=4096, progress=grow)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "corpora").glob("*/meta.json"))
    assert "warning" not in capsys.readouterr().err  # not mistaken for an unwritable cache


def test_a_tokenizer_file_that_is_not_byte_level_prepares_like_its_whole_text(tmp_path):
    import tokenizers as tk

    text = CORPUS.read_text(encoding="utf-8")
    hf = tk.Tokenizer(tk.models.WordLevel(unk_token="[UNK]"))
    hf.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    hf.train_from_iterator([text], tk.trainers.WordLevelTrainer(vocab_size=500, special_tokens=["[UNK]"]))
    (tmp_path / "wl.json").write_text(hf.to_str())
    tok = Tokenizer.from_file(tmp_path / "wl.json")
    assert not tok.byte_level
    src = tmp_path / "c.txt"
    src.write_text(text, encoding="utf-8")
    got = P.prepare(src, tok, chunk=1000)
    train, val = P.split_text(text, "tail", 0.05)
    assert np.array_equal(np.asarray(got.train), tok.encode(train))  # whitespace splitting: the pieces are exact
    assert np.array_equal(np.asarray(got.val), tok.encode(val))


def test_a_cache_that_fills_up_while_writing_falls_back_to_memory(tmp_path, bpe, monkeypatch, capsys):
    import errno
    import os

    src = tmp_path / "c.txt"
    src.write_text(ODD * 3, encoding="utf-8")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(P.os, "fsync", full)  # the token files were written; syncing them fails
    got = P.prepare(src, bpe, val_frac=0.3, chunk=16)
    assert "no space left on device" in capsys.readouterr().err
    want_train, want_val, _, _ = _reference(src, bpe, "tail", 0.3)
    assert np.array_equal(got.train, want_train) and np.array_equal(got.val, want_val)
    assert not [p for p in (tmp_path / "cache" / "corpora").iterdir()]  # the temporary folder is gone

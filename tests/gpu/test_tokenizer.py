"""Tokenizers of the text task (gpu/tasks/tokenizer.py) and prepared corpora (gpu/tasks/prepared.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cramkit.errors import CramError
from cramkit.gpu.tasks import prepared as P
from cramkit.gpu.tasks.tokenizer import Tokenizer, parse_spec, safe_chunks

CORPUS = Path(__file__).resolve().parents[2] / "gpu" / "redundancy" / "default_corpus.txt"


@pytest.fixture(scope="module")
def text() -> str:
    return CORPUS.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(text) -> Tokenizer:
    return Tokenizer.train_bpe([text], 400)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "cache"))


def test_parse_spec():
    assert parse_spec("bytes") == ("bytes", None)
    assert parse_spec("bpe:4096") == ("bpe", 4096)
    assert parse_spec("some/tokenizer.json") == ("file", Path("some/tokenizer.json"))
    for bad in ("", "bpe:", "bpe:12", "bpe:x"):
        with pytest.raises(CramError, match="text.tokenizer"):
            parse_spec(bad)


def test_bpe_is_deterministic_and_round_trips(text, bpe):
    again = Tokenizer.train_bpe([text], 400)
    assert again.sha256 == bpe.sha256 and bpe.vocab_size == 400
    ids = bpe.encode(text)
    assert ids.max() < 400 and len(ids) < 0.6 * len(text.encode())  # merges happened
    assert bpe.decode(ids) == text
    odd = "naïve café — 日本語\n\ttabs  and  spaces\n"
    assert bpe.decode(bpe.encode(odd)) == odd  # byte-level: any text, no unknown token


def test_bpe_training_is_the_same_in_another_process(bpe):
    """torchrun ranks and a resume after the cache was cleared train the BPE again: same hash."""
    import subprocess
    import sys

    code = ("from cramkit.gpu.tasks.tokenizer import Tokenizer; import sys; "
            f"print(Tokenizer.train_bpe([open({str(CORPUS)!r}).read()], 400).sha256)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == bpe.sha256


def test_token_bytes_count_utf8_bytes_exactly(text, bpe):
    assert bpe.byte_level
    for s in (text, "naïve café — 日本語\n"):
        assert int(bpe.token_bytes[bpe.encode(s)].sum()) == len(s.encode("utf-8"))
    assert Tokenizer.bytes().token_bytes.sum() == 256


def test_chunked_encoding_equals_whole_encoding(text, bpe):
    chunks = list(safe_chunks(text, size=500))
    assert len(chunks) > 10 and "".join(chunks) == text
    whole = np.asarray(bpe.hf.encode(text).ids)
    assert np.array_equal(np.concatenate([bpe.hf.encode(c).ids for c in chunks]), whole)
    assert np.array_equal(bpe.encode(text), whole)


def test_a_tokenizer_file_loads_and_a_broken_one_is_one_line(tmp_path, bpe):
    good = tmp_path / "tok.json"
    good.write_text(bpe.to_json())
    tok = Tokenizer.from_file(good)
    assert tok.sha256 == bpe.sha256 and tok.vocab_size == 400
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(CramError, match="does not parse") as e:
        Tokenizer.from_file(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(CramError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "none.json")


def test_prepare_caches_by_text_and_tokenizer(tmp_path, text):
    src = tmp_path / "c.txt"
    src.write_text(text)
    a = P.prepare(src, "bpe:300", val_frac=0.1)
    assert a.train.dtype == np.uint16 and isinstance(a.train, np.memmap)
    assert a.tokenizer.decode(np.asarray(a.train)) + a.tokenizer.decode(np.asarray(a.val)) == text
    assert a.meta["n_bytes_train"] + a.meta["n_bytes_val"] == len(text.encode())
    assert 0.05 < a.meta["n_bytes_val"] / len(text.encode()) < 0.15
    stamp = (a.path / "train.bin").stat().st_mtime_ns
    b = P.prepare(src, "bpe:300", val_frac=0.1)  # a cache hit: same folder, nothing rewritten
    assert b.path == a.path and (b.path / "train.bin").stat().st_mtime_ns == stamp
    assert b.tokenizer.sha256 == a.tokenizer.sha256
    assert P.prepare(src, "bpe:301", val_frac=0.1).path != a.path  # another tokenizer
    src.write_text(text + "one more line\n")
    assert P.prepare(src, "bpe:300", val_frac=0.1).path != a.path  # another text
    assert a.path.parent.parent == tmp_path / "cache"  # CRAM_CACHE_DIR


def test_a_broken_cache_entry_is_rebuilt(tmp_path, text):
    src = tmp_path / "c.txt"
    src.write_text(text)
    a = P.prepare(src, "bytes", split="documents", val_frac=0.2)
    (a.path / "val.bin").write_bytes(b"\0")  # truncated
    b = P.prepare(src, "bytes", split="documents", val_frac=0.2)
    assert b.path == a.path and len(b.val) == a.meta["n_tokens_val"] > 0


def test_document_split_puts_whole_documents_in_validation():
    docs = [f"document {i} " + "word " * (i % 5 + 1) + "\n" for i in range(20)]
    train, val = P.split_text("\n".join(docs), "documents", 0.25)
    assert "document 3 " in val and "document 7 " in val and "document 2 " in train
    assert all((f"document {i} " in val) == (i % 4 == 3) for i in range(20))
    with pytest.raises(CramError, match="at least two"):
        P.split_text("one document only\n", "documents", 0.25)


def test_tail_split_cuts_between_tokens(text, bpe):
    train, val = P.split_text(text, "tail", 0.1)
    assert train + val == text and train.endswith("\n") and not val[0].isspace()
    assert np.array_equal(np.concatenate([bpe.encode(train), bpe.encode(val)]), bpe.encode(text))


def test_bad_text_files_are_one_line(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    with pytest.raises(CramError, match=r"is not UTF-8 \(byte 0xe9 at offset 3\).*--errors replace"):
        P.prepare(bad, "bpe:260")
    ok = P.prepare(bad, "bpe:260", errors="replace")
    assert "\ufffd" in ok.tokenizer.decode(np.asarray(ok.train))
    raw = P.prepare(bad, "bytes", heldout=True)  # the byte tokenizer reads any file, unchanged
    assert bytes(np.asarray(raw.val, dtype=np.uint8)) == bad.read_bytes()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CramError, match="is empty"):
        P.prepare(empty, "bytes", heldout=True, what="held-out corpus")


def test_sampling_windows_from_a_prepared_file_matches_in_memory(tmp_path, text):
    import torch

    from cramkit.gpu.tasks.text import text_batch

    src = tmp_path / "c.txt"
    src.write_text(text)
    prep = P.prepare(src, "bpe:300")
    mem = torch.from_numpy(np.asarray(prep.train).astype(np.int64))
    x1, y1 = text_batch(prep.train, 16, 8, torch.Generator().manual_seed(3))
    x2, y2 = text_batch(mem, 16, 8, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    meta = json.loads((prep.path / "meta.json").read_text())
    assert meta["tokenizer_sha256"] == prep.tokenizer.sha256 and meta["dtype"] == "uint16"

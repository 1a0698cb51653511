"""Checkpoints prove their integrity: flipped bytes anywhere, truncation, a bad header, NaN weights
and unsigned (pre-integrity) files are each one CramError naming the file (docs/reliability.md)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cramkit.errors import CramError
from cramkit.gpu.run import checkpoint as ck
from cramkit.gpu.run.checkpoint import read_checkpoint, save_checkpoint, write_checkpoint_file


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Embedding(5, 4)
        self.head = torch.nn.Linear(4, 5, bias=False)
        self.head.weight = self.b.weight  # tied


def _saved(path, *, step=7):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.a(torch.randn(2, 4)).sum().backward()
    opt.step()
    save_checkpoint(path, model, opt, {"arch": "test", "step": step})
    return model, opt


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "good.safetensors"
    _saved(path)
    return path, path.read_bytes()


def test_round_trip_is_one_file_with_hash_in_header(tmp_path):
    path = tmp_path / "c.safetensors"
    model, opt = _saved(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no .json, no temp
    blob = path.read_bytes()
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    assert len(header["__metadata__"][ck.HASH_KEY]) == 64
    tensors, meta = read_checkpoint(path)
    assert meta["step"] == 7 and meta["format_version"] == ck.FORMAT_VERSION
    fresh = Tiny()
    ck.load_model_state(fresh, tensors, meta, path)
    for (n, p), q in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1.0)
    ck.load_optimizer(opt2, list(fresh.parameters()), tensors, meta)
    assert opt2.param_groups[0]["lr"] == 1e-2
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def _flip(blob: bytes, pos: int, mask: int) -> bytes:
    b = bytearray(blob)
    b[pos] ^= mask
    return bytes(b)


def test_every_region_detects_a_flipped_byte(good, tmp_path):
    path, blob = good
    n = int.from_bytes(blob[:8], "little")
    bad = tmp_path / "bad.safetensors"
    # the length field, the header's metadata, its padding/last byte, and tensor bytes
    for pos in (0, 3, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 5, len(blob) - 1):
        bad.write_bytes(_flip(blob, pos, 0x01))
        with pytest.raises(CramError, match=str(bad)):
            read_checkpoint(bad)


def test_a_flipped_tensor_byte_is_a_checksum_mismatch(good, tmp_path):
    path, blob = good
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_flip(blob, len(blob) - 10, 0x40))
    with pytest.raises(CramError, match=r"bad\.safetensors: checksum mismatch: the file is corrupt"):
        read_checkpoint(bad)


@settings(max_examples=60)
@given(data=st.data())
def test_any_single_byte_change_is_detected(good, tmp_path_factory, data):
    path, blob = good
    pos = data.draw(st.integers(0, len(blob) - 1), label="pos")
    mask = data.draw(st.integers(1, 255), label="mask")
    bad = tmp_path_factory.mktemp("flip") / "x.safetensors"
    bad.write_bytes(_flip(blob, pos, mask))
    with pytest.raises(CramError, match="x.safetensors"):
        read_checkpoint(bad)


@pytest.mark.parametrize("keep", [0, 4, 7, 8, 100, -1])
def test_truncation_is_detected(good, tmp_path, keep):
    _, blob = good
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(blob[:keep] if keep >= 0 else blob[:-1])
    with pytest.raises(CramError, match=r"t\.safetensors: the file is corrupt \(truncated"):
        read_checkpoint(bad)


def test_appended_bytes_are_detected(good, tmp_path):
    _, blob = good
    bad = tmp_path / "a.safetensors"
    bad.write_bytes(blob + b"\0" * 16)
    with pytest.raises(CramError, match="unexpected bytes"):
        read_checkpoint(bad)


def test_bad_header_is_one_line(tmp_path):
    bad = tmp_path / "h.safetensors"
    bad.write_bytes((12).to_bytes(8, "little") + b"{not json!!}")
    with pytest.raises(CramError, match=r"h\.safetensors: the file is corrupt \(bad header"):
        read_checkpoint(bad)


def test_nan_weights_are_refused_on_save_and_on_load(tmp_path):
    model = Tiny()
    with torch.no_grad():
        model.a.weight[0, 0] = float("nan")
    with pytest.raises(CramError, match="refusing to write .*model/a.weight holds NaN"):
        save_checkpoint(tmp_path / "n.safetensors", model, None, {"step": 1})
    assert not (tmp_path / "n.safetensors").exists()
    # a signed file whose weights hold inf (written by something else) is refused on load
    tensors = {"model/w": torch.tensor([1.0, float("inf")])}
    write_checkpoint_file(tmp_path / "i.safetensors", tensors, {"format": ck.FORMAT, "format_version": ck.FORMAT_VERSION})
    with pytest.raises(CramError, match=r"i\.safetensors: tensor model/w holds NaN or inf"):
        read_checkpoint(tmp_path / "i.safetensors")


def _unsigned(path):
    from safetensors.torch import save_file

    save_file({"model/w": torch.ones(2)}, str(path),
              metadata={"cram": json.dumps({"format": ck.FORMAT, "format_version": 1, "step": 3})})  # fmt: skip


def test_a_checkpoint_from_before_integrity_checks_is_refused_by_default(tmp_path, monkeypatch):
    path = tmp_path / "old.safetensors"
    _unsigned(path)
    monkeypatch.delenv(ck.ALLOW_UNVERIFIED_ENV, raising=False)
    with pytest.raises(CramError, match=r"old\.safetensors: this checkpoint predates integrity checks.*CRAM_ALLOW_UNVERIFIED"):
        read_checkpoint(path)
    monkeypatch.setenv(ck.ALLOW_UNVERIFIED_ENV, "1")
    tensors, meta = read_checkpoint(path)
    assert meta["step"] == 3 and torch.equal(tensors["model/w"], torch.ones(2))


def test_a_foreign_safetensors_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(CramError, match="not a cram checkpoint"):
        read_checkpoint(tmp_path / "f.safetensors")


def test_loading_never_unpickles(tmp_path):
    import pickle

    path = tmp_path / "p.safetensors"
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CramError, match="p.safetensors"):
        read_checkpoint(path)


def test_a_kill_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    _saved(path, step=1)
    before = path.read_bytes()

    class Killed(BaseException):
        pass

    real = ck.content_hash

    def die(*a, **k):  # the new file is half built when the "kill" arrives
        real(*a, **k)
        raise Killed

    monkeypatch.setattr(ck, "content_hash", die)
    with pytest.raises(Killed):
        _saved(path, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_random_corruption_sweep(good, tmp_path):
    """Many multi-byte corruptions: every one is detected (a seeded random sweep)."""
    _, blob = good
    rng = random.Random(12)
    bad = tmp_path / "r.safetensors"
    for _ in range(40):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        bad.write_bytes(bytes(b))
        with pytest.raises(CramError):
            read_checkpoint(bad)

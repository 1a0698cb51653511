"""Memory estimates refuse what cannot fit, before anything is allocated (cramkit/memory.py)."""

from __future__ import annotations

import pytest

from cramkit import memory
from cramkit.errors import CramError


@pytest.mark.parametrize("pattern", ["SA", "G", "SSAG", "AAA"])
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_matches_the_model(pattern, tie):
    from cramkit.gpu.model.network import CramModel
    from cramkit.gpu.run import config as C

    mc = C.ModelConfig(pattern=pattern, d_model=48, n_heads=4, tie_embeddings=tie, memory_hidden=40,
                       router_hidden=0 if pattern == "AAA" else 16, max_len=12 if "G" in pattern else 0)  # fmt: skip
    model = CramModel(mc, C.RouterConfig(), 97)
    assert memory.model_param_count(mc, 97) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("pattern", ["SG", "G"])
def test_training_estimate_is_a_lower_bound_of_what_a_step_holds(pattern):
    """State = weights + gradients + AdamW moments exactly; activations + logits at most what
    autograd saves for the backward pass (measured with saved_tensors_hooks)."""
    import torch

    from cramkit.gpu.model.network import CramModel
    from cramkit.gpu.run import config as C

    mc = C.ModelConfig(pattern=pattern, d_model=64, n_heads=2, max_len=32)
    model = CramModel(mc, C.RouterConfig(), 256)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 256, (4, 32))
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, x)
    out.loss.backward()
    opt.step()
    state = sum(p.nbytes + p.grad.nbytes for p in model.parameters())
    state += sum(v.nbytes for s in opt.state.values() for v in s.values() if v.dim())
    params = memory.model_param_count(mc, 256)
    assert state == 4 * params * 4
    bound = memory.training_bytes(mc, 256, 4, 32)
    assert bound <= state + sum(saved.values())


def test_check_fits_refuses_in_one_line(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1 << 30)
    memory.check_fits(1 << 29, "a small thing")
    with pytest.raises(CramError, match=r"^a big thing needs at least 2.0 GiB but only 1.0 GiB of memory is available"):
        memory.check_fits(2 << 30, "a big thing")


def test_absurd_model_is_refused_before_allocation():
    from cramkit.gpu.run import config as C

    mc = C.ModelConfig(d_model=1 << 20, n_heads=1)
    with pytest.raises(CramError, match=r"training this model \(d_model=1048576"):
        memory.check_training_fits(mc, 256, 64, 128)


def test_available_bytes_reads_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:  100 kB\nMemAvailable:    2048 kB\n")
    assert memory._meminfo_available(f) == 2048 * 1024
    assert 0 < memory.available_bytes("cpu")
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text("max\n")
    assert memory._cgroup_available(cg) is None
    (cg / "memory.max").write_text("1000\n")
    (cg / "memory.current").write_text("400\n")
    assert memory._cgroup_available(cg) == 600


def test_tensor_bytes_has_no_overflow():
    assert memory.tensor_bytes(10**6, 10**6, 10**6) == 4 * 10**18
    assert memory.format_bytes(3 * 1024**3) == "3.0 GiB"

"""The sliding-window attention mixer (``W``, gpu/model/attention.py): against a dense reference, its
locality, recurrent decoding, and the config checks."""

from __future__ import annotations

import math

import pytest
import torch

from cramkit.errors import CramError
from cramkit.gpu.model.attention import DenseAttention, WindowAttention, window_mask
from cramkit.gpu.model.config import ModelConfig, RouterConfig
from cramkit.gpu.model.network import MIXERS, CramModel
from cramkit.gpu.run.config import load_config

D, H = 16, 2


def _mixer(window: int, seed: int = 0) -> WindowAttention:
    torch.manual_seed(seed)
    return WindowAttention(ModelConfig(d_model=D, n_heads=H, window=window)).eval()


def _reference(mix: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Position by position: softmax over the keys max(0, t - window + 1) .. t, written out."""
    bsz, t_len, d = x.shape
    q, k, v = mix.qkv(x).view(bsz, t_len, 3, H, d // H).unbind(2)  # (B, T, H, D)
    out = torch.zeros(bsz, t_len, H, d // H)
    for t in range(t_len):
        lo = max(0, t - mix.window + 1)
        scores = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, lo : t + 1]) / math.sqrt(d // H)
        out[:, t] = torch.einsum("bhs,bshd->bhd", scores.softmax(-1), v[:, lo : t + 1])
    return mix.proj(out.reshape(bsz, t_len, d))


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8])
def test_window_attention_matches_the_written_out_reference(window):
    mix = _mixer(window, seed=window)
    x = torch.randn(3, 11, D, generator=torch.Generator().manual_seed(window))
    with torch.no_grad():
        torch.testing.assert_close(mix(x), _reference(mix, x), rtol=1e-5, atol=1e-5)


def test_a_window_as_long_as_the_sequence_is_dense_attention():
    mix = _mixer(window=12, seed=1)
    dense = DenseAttention(ModelConfig(d_model=D, n_heads=H)).eval()
    dense.load_state_dict(mix.state_dict())
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        torch.testing.assert_close(mix(x), dense(x), rtol=1e-6, atol=1e-6)
        short = _mixer(window=4, seed=1)
        assert not torch.allclose(short(x), dense(x), atol=1e-3)  # a real window changes the output


def test_a_position_does_not_see_past_its_window():
    mix = _mixer(window=3, seed=2)
    x = torch.randn(1, 10, D)
    y = x.clone()
    y[:, :4] = torch.randn(1, 4, D)  # positions 0..3 differ: rows 6.. (keys 4.. only) must not change
    with torch.no_grad():
        a, b = mix(x), mix(y)
    torch.testing.assert_close(a[:, 6:], b[:, 6:], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 5], b[:, 5], atol=1e-4)  # row 5 sees key 3


def test_window_mask_counts_the_row_itself():
    m = window_mask(4, 6, 2, start=2)  # rows 2..5
    assert m.sum(1).tolist() == [2, 2, 2, 2]
    assert m[0].nonzero().flatten().tolist() == [1, 2]
    assert window_mask(3, 3, 1).equal(torch.eye(3, dtype=torch.bool))


@pytest.mark.parametrize("pattern", ["W", "SW", "WSW"])
def test_prefill_then_steps_equal_the_forward(pattern):
    cfg = ModelConfig(pattern=pattern, d_model=D, n_heads=H, ssm_heads=2, ssm_head_dim=8, d_state=4,
                      conv_width=3, window=3, chunk_size=4)  # fmt: skip
    torch.manual_seed(0)
    model = CramModel(cfg, RouterConfig(name="dense"), 30).eval()
    tokens = torch.randint(0, 30, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens).logits
        state = model.init_state(2, 9)
        parts = [model.prefill(tokens[:, :5], state)]
        parts += [model.step(tokens[:, t], state)[:, None] for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-4)


def test_config_takes_w_and_checks_the_window():
    assert MIXERS["W"] is WindowAttention
    cfg = load_config(overrides=["task='text'", "model.pattern='SW'", "model.window=32"])
    assert cfg.model.window == 32
    with pytest.raises(CramError, match="model.window must be >= 1"):
        load_config(overrides=["model.window=0"])
    with pytest.raises(CramError, match="S, A, G and W"):
        load_config(overrides=["model.pattern='SX'"])

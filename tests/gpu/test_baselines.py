"""The transformer baseline: KV-cache prefill and steps reproduce the whole-sequence forward."""

from __future__ import annotations

import pytest
import torch

from cramkit.errors import CramError
from cramkit.gpu.model.baselines import TransformerLM


def test_prefill_in_pieces_then_steps_equal_the_forward():
    torch.manual_seed(0)
    model = TransformerLM(50, 32, 4, 2, max_len=64).eval()
    tokens = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = model(tokens)
    state = model.init_state(2, 30)
    parts = [model.prefill(tokens[:, :12], state), model.prefill(tokens[:, 12:15], state)]
    parts.append(torch.stack([model.step(tokens[:, t], state) for t in range(15, 20)], 1))
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)
    assert state.length == 20


def test_training_loss_has_gradients_and_ignores_minus_one():
    torch.manual_seed(0)
    model = TransformerLM(30, 16, 4, 1, max_len=16)
    tokens = torch.randint(0, 30, (2, 10))
    targets = tokens.roll(-1, 1)
    targets[:, -1] = -1
    loss = model(tokens, targets)
    loss.backward()
    assert loss.item() == pytest.approx(torch.log(torch.tensor(30.0)).item(), rel=0.1)
    assert model.embed.weight.grad is not None and model.blocks[0].qkv.weight.grad.abs().sum() > 0


def test_too_long_is_a_clear_error():
    model = TransformerLM(30, 16, 4, 1, max_len=16)
    with pytest.raises(CramError, match="max_len"):
        model.init_state(1, 17)
    state = model.init_state(1, 4)
    model.prefill(torch.zeros(1, 4, dtype=torch.long), state)
    with pytest.raises(CramError, match="cache holds 4"):
        model.step(torch.zeros(1, dtype=torch.long), state)

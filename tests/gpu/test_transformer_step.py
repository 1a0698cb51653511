"""The transformer's static-KV decode step (gpu/model/baselines.py, TransformerStep), which
``cram bench model`` compiles for the transformer's decode rows: logits equal to ``model.step``."""

from __future__ import annotations

import torch

from cramkit.gpu.bench.decode_case import decode_case
from cramkit.gpu.model.baselines import TransformerLM, TransformerStep


def test_the_static_kv_step_equals_the_eager_step():
    torch.manual_seed(0)
    model = TransformerLM(40, 16, 2, 2, max_len=64).eval()
    tokens = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(1))
    state = model.init_state(2, 40)
    model.prefill(tokens[:, :10], state)
    caches = [t.clone() for t in state.keys + state.values]  # the same prefix, a cache of 40 slots
    pos = torch.tensor(10)
    step = TransformerStep(model)
    for t in range(10, 30):
        want = model.step(tokens[:, t], state)
        with torch.no_grad():
            got = step(tokens[:, t], pos, *caches)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert int(pos) == 30


def test_the_bench_decodes_the_transformer_through_it():
    torch.manual_seed(0)
    model = TransformerLM(40, 16, 2, 2, max_len=64).eval()
    tokens = torch.randint(0, 40, (1, 24), generator=torch.Generator().manual_seed(1))
    setup, timed, method, _ = decode_case(model, tokens, None, 20, 4, compiled=True)
    assert "static-KV step" in method
    args = setup()
    timed(args)
    assert int(args[1]) == 23  # 4 steps from position 19

"""Shared test configuration.

Hypothesis profiles: ``ci`` (the default) is derandomized and deadline-free so CI is
reproducible; ``dev`` explores more examples. Choose with ``HYPOTHESIS_PROFILE=dev``.
"""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings


def _import_triton_interpreted() -> None:
    """Import triton under ``TRITON_INTERPRET=1`` before any test module can import it otherwise.

    Triton's own ``@triton.jit`` helpers (``tl.sum``, ``tl.max``, ...) are decorated once, when
    triton is first imported, in the mode ``TRITON_INTERPRET`` gives then; a kernel run under the
    interpreter (tests/ops) that calls a helper decorated without it fails with "Cannot call
    @triton.jit'd outside of the scope of a kernel". Modules such as ``torch.utils.flop_counter``
    import triton as a side effect, so a test module importing them at collection used to break the
    op tests that were collected after it. The variable is restored afterwards."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:  # no triton: the kernel tests skip
        pass
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_triton_interpreted()

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=400,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The compiled decode step takes ~30-60 s per graph to compile on a small CPU: the default set runs
# the same sync-free step uncompiled; tests/gpu/test_compiled_step.py compiles on purpose.
os.environ.setdefault("CRAM_DECODE_BACKEND", "uncompiled")


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory):
    """A byte-level text run of 3 steps made by ``cram train --task text`` (shared, read-only):
    the folder holding ``t.txt`` (the data) and ``r`` (the run)."""
    from cramkit.cli.main import cli

    tmp = tmp_path_factory.mktemp("tiny_text")
    data = tmp / "t.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 80)
    r = CliRunner().invoke(cli, ["train", "--task", "text", "--data", str(data), "--set", "train.steps=3",
                                 "--set", "train.eval_every=3", "--set", "text.seq_len=32", "--set", "model.d_model=32",
                                 "--set", "train.batch_size=4", "--set", "text.eval_batches=1",
                                 "--out", str(tmp / "r"), "--quiet", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return tmp


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    tiny matrix products on a loaded 2-core machine are ~100x slower with two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

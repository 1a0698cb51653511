"""Every verdict rule of ``cram reproduce`` driven to each verdict it can give, on synthetic numbers."""

from __future__ import annotations

import pytest

from cramkit.gpu.reproduce import verdicts as V
from cramkit.gpu.reproduce.verdicts import BY_CONSTRUCTION, FAILS, HOLDS, NOT_MEASURED


def _v(verdict):
    assert verdict.reason, "every verdict says why"
    return verdict.verdict


def test_the_four_verdicts_and_no_other():
    assert set(V.VERDICTS) == {HOLDS, BY_CONSTRUCTION, FAILS, NOT_MEASURED}
    with pytest.raises(ValueError):
        V.Verdict("probably", "no")


@pytest.mark.parametrize(
    "args, expected",
    [
        ((True, True, True, True, 2031.0), HOLDS),
        ((False, True, True, True, 2031.0), FAILS),  # a static router under its bound
        ((True, False, True, True, 2031.0), FAILS),  # a negative control off its prediction
        ((True, True, False, True, 2031.0), FAILS),  # CR_K over K·D_T
        ((True, True, True, False, 2031.0), FAILS),
        ((True, True, True, True, 3.0), FAILS),  # too little separation
        ((True, True, True, True, None), NOT_MEASURED),
        ((None, True, True, True, 2031.0), NOT_MEASURED),
    ],
)
def test_static_bound(args, expected):
    assert _v(V.static_bound_verdict(*args)) == expected


@pytest.mark.parametrize(
    "args, expected",
    [
        ((1.0, 0.996, 0.25, 0.25, [0.83, 0.84]), BY_CONSTRUCTION),  # on the floor m_e/n_q
        ((1.0, 0.996, 0.40, 0.25, [0.83, 0.84]), HOLDS),  # above the floor, still better
        ((0.95, 0.94, 0.25, 0.25, [0.83]), FAILS),  # not "100 %"
        ((0.995, 0.98, 0.25, 0.25, [0.99]), FAILS),  # a baseline as good within CIs
        ((None, None, 0.25, 0.25, [0.83]), NOT_MEASURED),
        ((1.0, 0.996, 0.25, 0.25, []), NOT_MEASURED),  # no baseline
    ],
)
def test_accuracy_budget(args, expected):
    assert _v(V.accuracy_budget_verdict(*args)) == expected


def test_accuracy_budget_floor_tolerance_is_the_documented_one():
    just_in = V.accuracy_budget_verdict(1.0, 0.99, 0.25 + V.FLOOR_TOL * 0.99, 0.25, [0.8])
    just_out = V.accuracy_budget_verdict(1.0, 0.99, 0.25 + V.FLOOR_TOL * 1.01, 0.25, [0.8])
    assert (just_in.verdict, just_out.verdict) == (BY_CONSTRUCTION, HOLDS)


@pytest.mark.parametrize(
    "args, expected",
    [
        ((1.0, 0.0, True, 32.0, 32.0), BY_CONSTRUCTION),  # the factor is n/m_e
        ((1.0, 0.0, True, 37.8, 32.0), HOLDS),
        ((1.0, 0.0, False, 32.0, 32.0), FAILS),  # falls, not sharply
        ((1.0, 0.9, True, 1.1, 32.0), FAILS),  # does not fall
        ((1.0, None, True, 32.0, 32.0), NOT_MEASURED),
    ],
)
def test_attention_fall(args, expected):
    assert _v(V.attention_fall_verdict(*args)) == expected


HUMANS = [0.093, 0.13, 0.167]
PAPER_HUMANS = [0.41, 0.47]


@pytest.mark.parametrize(
    "args, expected",
    [
        ((True, False, [0.40, 0.46], False, PAPER_HUMANS, None), HOLDS),
        ((True, False, [0.40, 0.46], False, PAPER_HUMANS, 0.43), BY_CONSTRUCTION),  # gamma = 1 - 1/alpha
        ((True, True, [0.40, 0.46], False, PAPER_HUMANS, None), FAILS),  # sharp: no power law
        ((False, False, [0.40, 0.46], False, PAPER_HUMANS, None), FAILS),  # a power law is not the best fit
        ((True, False, [0.40, 0.46], True, PAPER_HUMANS, None), FAILS),  # gamma at a bound
        ((True, False, [0.9, 1.2], False, PAPER_HUMANS, None), FAILS),  # gamma elsewhere
        ((True, False, [0.40, 0.46], False, HUMANS, None), FAILS),  # humans' a = 0.09-0.17
        ((True, False, None, False, HUMANS, None), NOT_MEASURED),
        ((True, False, [0.40, 0.46], False, [], None), NOT_MEASURED),
    ],
)
def test_gamma(args, expected):
    assert _v(V.gamma_verdict(*args)) == expected


REUSE = [(0.0, 0.0, 0.0), (0.5, 0.343, 0.343), (1.0, 0.75, 0.75)]


@pytest.mark.parametrize(
    "args, expected",
    [
        ((True, 0.0, REUSE), BY_CONSTRUCTION),  # R(s) is the overlap
        ((True, 0.2, REUSE), HOLDS),  # skips on a pool it never saw, accuracy kept
        ((False, 0.0, REUSE), FAILS),  # accuracy lost at s = 0
        ((True, 0.0, [(0.0, 0.0, 0.0), (0.5, 0.1, 0.343)]), FAILS),  # less than reuse
        ((True, 0.0, [(0.0, 0.0, 0.0)]), NOT_MEASURED),  # no s > 0
        ((None, 0.0, REUSE), NOT_MEASURED),
        ((True, 0.0, []), NOT_MEASURED),
    ],
)
def test_transfer(args, expected):
    assert _v(V.transfer_verdict(*args)) == expected


@pytest.mark.parametrize(
    "args, expected",
    [
        ((False, "no local GPT-2", None, None), NOT_MEASURED),
        ((True, "", [0.85, 0.90], True), HOLDS),
        ((True, "", [0.55, 0.62], True), FAILS),
        ((True, "", [0.85, 0.90], False), NOT_MEASURED),  # the budget does not bind
        ((True, "", None, True), NOT_MEASURED),
    ],
)
def test_redundancy(args, expected):
    assert _v(V.redundancy_verdict(*args)) == expected


def test_redundancy_not_measured_keeps_the_reason():
    assert V.redundancy_verdict(False, "weights cannot be downloaded here", None, None).reason == "weights cannot be downloaded here"


@pytest.mark.parametrize(
    "args, expected",
    [
        ((18.0, 1.87), HOLDS),
        ((None, 1.87), HOLDS),
        ((0.99, 1.87), FAILS),  # the kernel is not faster
        ((18.0, 1.0), FAILS),  # the model step is not faster
        ((18.0, None), NOT_MEASURED),  # a kernel alone says nothing about the model
        ((None, None), NOT_MEASURED),
    ],
)
def test_compute(args, expected):
    assert _v(V.compute_verdict(*args)) == expected


def _size(width, train, decode, train_flops=None):
    return {"width": width, "vocab": 256, "train_vs_hybrid": train, "decode_vs_hybrid": decode,
            "train_vs_hybrid_flops": train_flops, "decode_vs_hybrid_flops": None}  # fmt: skip


def test_compute_is_judged_against_the_plain_hybrid_at_every_width():
    both = [_size(64, 1.9, 0.8, 2.1), _size(512, 1.3, 1.2)]
    v = V.compute_verdict(18.0, 5.0, both)
    assert _v(v) == HOLDS and "trains cheaper than the plain hybrid at width 64 (1.9x, FLOPs predict 2.1x)" in v.reason
    assert "does not decode cheaper at width 64" in v.reason and "decodes cheaper at width 512" in v.reason
    # a large speed-up over CRAM rho=1 does not rescue a step slower than the plain hybrid at 512
    v = V.compute_verdict(18.0, 5.0, [_size(64, 1.9, 0.8), _size(512, 0.7, 1.0)])
    assert _v(v) == FAILS and "does not train cheaper at width 512 (0.7x)" in v.reason
    assert _v(V.compute_verdict(0.9, 5.0, both)) == FAILS  # the kernel is not faster
    assert _v(V.compute_verdict(None, None, both)) == HOLDS
    assert _v(V.compute_verdict(None, None, [])) == NOT_MEASURED

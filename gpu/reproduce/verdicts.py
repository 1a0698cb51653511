"""The verdict rules of ``cram reproduce``: one small function per claim, numbers in, verdict out.

Every rule is a pure function of plain numbers (no cramkit import, no I/O) and returns a
:class:`Verdict`: one of :data:`VERDICTS` and a one-sentence reason that names the numbers it
compared. ``None`` inputs mean "not measured"; a rule never guesses a missing figure.

The four verdicts:

- ``holds``: the measured figure supports the paper's claim;
- ``holds by construction of the task``: it does, but the figure is fixed by the benchmark's
  design (for example, attention use equal to the episodic share m_e/n_q), so it says nothing about
  the method;
- ``fails``: the measurement contradicts the claim;
- ``not measured``: the figure could not be measured here (the reason says why).

The paper's claims and cram's definitions of each quantity are in docs/reproduce.md and
docs/results/README.md; the thresholds below are the documented tolerances of each rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

HOLDS = "holds"
BY_CONSTRUCTION = "holds by construction of the task"
FAILS = "fails"
NOT_MEASURED = "not measured"
VERDICTS = (HOLDS, BY_CONSTRUCTION, FAILS, NOT_MEASURED)


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")


def _missing(*values) -> bool:
    return any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in values)


# ------------------------------------------------------------------------------------------------
# static-bound: Omega(f n) for static routers, and consolidation's separation on a stream
# ------------------------------------------------------------------------------------------------

#: the stream separation must be at least this factor (ORACLE-POS cumulative attention / CR_K's)
SEPARATION_MIN = 10.0


def static_bound_verdict(p1: bool | None, controls_pass: bool | None, p3: bool | None,
                         p4: bool | None, separation: float | None) -> Verdict:
    """Theorem 1 and 2 in the exact simulator (``cram bound``'s criteria).

    ``p1``: every static router held sits on or above its Omega(f n) bound; ``controls_pass``: the
    negative controls F1-F5 (where the bound must fail) each match their prediction; ``p3``,
    ``p4``: CR_K stays under K·D_T and separates from ORACLE-POS on the stream; ``separation``:
    ORACLE-POS's cumulative recurring attention over CR_2's (or the smallest K's) at the end of
    the stream. Holds when all hold and the separation is at least :data:`SEPARATION_MIN`.
    """
    if _missing(p1, controls_pass, p3, p4, separation):
        return Verdict(NOT_MEASURED, "the bound sweep did not report every criterion")
    if not p1:
        return Verdict(FAILS, "a static router went below its Omega(f n) bound (P1 failed)")
    if not controls_pass:
        return Verdict(FAILS, "a negative control F1-F5 did not match its prediction, so the bound's assumptions are not what fails it")
    if not (p3 and p4):
        return Verdict(FAILS, "consolidation (CR_K) did not stay under K·D_T or did not separate from ORACLE-POS (P3/P4)")
    if separation < SEPARATION_MIN:
        return Verdict(FAILS, f"CR_K saves only {separation:.3g}x over ORACLE-POS on the stream (< {SEPARATION_MIN:g}x)")
    return Verdict(HOLDS, f"every static router sits on its bound, F1-F5 match, and CR_K needs {separation:.4g}x less recurring attention than ORACLE-POS on the stream")


# ------------------------------------------------------------------------------------------------
# accuracy-budget: accuracy at the attention budget against static baselines
# ------------------------------------------------------------------------------------------------

#: accuracy the consolidating router must reach to count as "100 %"
ACC_TARGET = 0.99
#: how far rho_q may sit from the floor m_e/n_q and still be "the floor"
FLOOR_TOL = 0.02


def accuracy_budget_verdict(acc: float | None, acc_ci_low: float | None, rho_q: float | None,
                            floor: float | None, baseline_acc_ci_high: Sequence[float] | None) -> Verdict:
    """The consolidating router's IID accuracy at its attention use against static baselines
    trained at the matched per-query budget.

    Fails when the router's accuracy is below :data:`ACC_TARGET` or the low end of its CI does
    not clear the high end of every baseline's CI. When it passes and its rho_q is within
    :data:`FLOOR_TOL` of m_e/n_q (the least attention any router with perfect episodic accuracy
    needs), the attention figure is the task's episodic share: holds by construction.
    """
    if _missing(acc, acc_ci_low, rho_q, floor) or not baseline_acc_ci_high:
        return Verdict(NOT_MEASURED, "the router or its baselines were not evaluated")
    if acc < ACC_TARGET:
        return Verdict(FAILS, f"accuracy {acc:.3f} < {ACC_TARGET}")
    best = max(baseline_acc_ci_high)
    if acc_ci_low <= best:
        return Verdict(FAILS, f"accuracy CI low {acc_ci_low:.3f} does not clear the best static baseline's CI high {best:.3f}")
    if abs(rho_q - floor) <= FLOOR_TOL:
        return Verdict(BY_CONSTRUCTION, f"accuracy {acc:.3f} beats every static baseline, at rho_q {rho_q:.3f} = the floor m_e/n_q {floor:.3f} that any router attending exactly the episodic queries gets")
    return Verdict(HOLDS, f"accuracy {acc:.3f} beats every static baseline at rho_q {rho_q:.3f} (floor {floor:.3f})")


# ------------------------------------------------------------------------------------------------
# attention-fall: the fall of attention use over training and its sharpness
# ------------------------------------------------------------------------------------------------

#: the reduction factor counts as "the task's ratio" within this relative tolerance
RATIO_TOL = 0.1


def attention_fall_verdict(e_start: float | None, e_end: float | None, sharp: bool | None,
                           reduction: float | None, task_ratio: float | None) -> Verdict:
    """E_rec (recurring queries attended) over training and fit-gamma's sharpness verdict.

    Fails when E_rec does not fall at least by half or the transition is not sharp (fit-gamma's
    rule: logistic width W < 0.5 decades and decisive AIC against a power law). Holds by
    construction when the reduction factor of rho_all equals n/m_e (the task's ratio) within
    :data:`RATIO_TOL`: once recurring queries are skipped, any such router falls by that factor.
    """
    if _missing(e_start, e_end, sharp, reduction, task_ratio):
        return Verdict(NOT_MEASURED, "the run's attention curve or its transition fit is missing")
    if not e_end <= 0.5 * e_start:
        return Verdict(FAILS, f"E_rec does not fall ({e_start:.3f} -> {e_end:.3f})")
    if not sharp:
        return Verdict(FAILS, f"E_rec falls ({e_start:.3f} -> {e_end:.3f}) but the transition is not sharp")
    if abs(reduction / task_ratio - 1) <= RATIO_TOL:
        return Verdict(BY_CONSTRUCTION, f"a sharp fall; its factor {reduction:.3g}x is n/m_e = {task_ratio:.3g}, set by the task")
    return Verdict(HOLDS, f"a sharp fall by {reduction:.3g}x (task ratio n/m_e = {task_ratio:.3g})")


# ------------------------------------------------------------------------------------------------
# gamma: a power-law consolidation curve with gamma = 0.43, like humans' 0.4-0.5
# ------------------------------------------------------------------------------------------------

#: the paper's human range of the exponent
HUMAN_RANGE = (0.4, 0.5)
#: a gamma CI must overlap this range to agree with the paper's 0.43
PAPER_GAMMA_RANGE = (0.38, 0.48)


def gamma_verdict(best_is_power: bool | None, sharp: bool | None, gamma_ci: Sequence[float] | None,
                  gamma_at_bound: bool | None, human_a: Sequence[float] | None,
                  predicted_gamma: float | None = None) -> Verdict:
    """Is the run's consolidation curve a power law with gamma near 0.43, and do human data give
    0.4-0.5?

    Fails when the curve is sharp (a power law's 90 -> 10 % width is >= 1.9 decades), when a
    power law (M1/M2) is not the best model by AIC, when gamma sits at a bound of its fit, when
    its CI misses :data:`PAPER_GAMMA_RANGE`, or when the human exponents fitted by cram miss
    :data:`HUMAN_RANGE`. Holds by construction when gamma's CI contains the count model's
    1 - 1/alpha of the task's Zipf exponent (``predicted_gamma``).
    """
    if _missing(best_is_power, sharp, gamma_at_bound) or not gamma_ci or not human_a or _missing(*gamma_ci):
        return Verdict(NOT_MEASURED, "the curve fit or the human reference fits are missing")
    lo, hi = gamma_ci
    if sharp:
        return Verdict(FAILS, "the curve is a sharp transition, which a power law cannot describe")
    if not best_is_power:
        return Verdict(FAILS, "a power law (M1/M2) is not the best model of the curve by AIC")
    if gamma_at_bound:
        return Verdict(FAILS, "gamma ran to a bound of its fit")
    if hi < PAPER_GAMMA_RANGE[0] or lo > PAPER_GAMMA_RANGE[1]:
        return Verdict(FAILS, f"gamma CI [{lo:.3g}, {hi:.3g}] misses {PAPER_GAMMA_RANGE[0]}-{PAPER_GAMMA_RANGE[1]}")
    if max(human_a) < HUMAN_RANGE[0] or min(human_a) > HUMAN_RANGE[1]:
        return Verdict(FAILS, f"the human exponents fitted here ({min(human_a):.3g}-{max(human_a):.3g}) miss {HUMAN_RANGE[0]}-{HUMAN_RANGE[1]}")
    if predicted_gamma is not None and lo <= predicted_gamma <= hi:
        return Verdict(BY_CONSTRUCTION, f"gamma CI [{lo:.3g}, {hi:.3g}] holds 1 - 1/alpha = {predicted_gamma:.3g}, set by the task's Zipf exponent")
    return Verdict(HOLDS, f"a power law with gamma CI [{lo:.3g}, {hi:.3g}], humans {min(human_a):.3g}-{max(human_a):.3g}")


# ------------------------------------------------------------------------------------------------
# transfer: 48-52 % less attention on unseen tasks
# ------------------------------------------------------------------------------------------------

#: R(s) within this of the slot-level reuse prediction counts as "reuse of the training pool"
REUSE_TOL = 0.03
#: R(0) above this (CI low end) with accuracy kept is real transfer to unseen patterns
R0_TOL = 0.05


def transfer_verdict(guard_acc_ok: bool | None, r0_ci_low: float | None,
                     rows: Sequence[tuple[float, float, float | None]] | None) -> Verdict:
    """Attention reduction R(s) on pools sharing a fraction s of the training pool.

    ``rows`` are ``(s, R, R_pred_slots)`` with ``R_pred_slots`` = share of recurring slots on
    shared patterns x m_r/n_q (what pure reuse of the training pool gives). Fails when accuracy
    drops on the unshared pool (s = 0). Holds when the router skips attention on a pool it never
    saw (R(0)'s CI low end above :data:`R0_TOL`): real transfer. Holds by construction when every
    R(s) equals the reuse prediction within :data:`REUSE_TOL`: the reduction is the overlap.
    Otherwise fails (less reduction than reuse would give).
    """
    if _missing(guard_acc_ok, r0_ci_low) or not rows:
        return Verdict(NOT_MEASURED, "the transfer splits were not evaluated (s = 0 is needed)")
    if not guard_acc_ok:
        return Verdict(FAILS, "accuracy drops on a pool that shares nothing with training")
    if r0_ci_low > R0_TOL:
        return Verdict(HOLDS, f"the router skips attention on an unseen pool (R(0) CI low {r0_ci_low:.3f}) with accuracy kept")
    shared = [(s, r, p) for s, r, p in rows if s > 0 and p is not None and r is not None]
    if not shared:
        return Verdict(NOT_MEASURED, "no overlap s > 0 was evaluated")
    worst = max(abs(r - p) for _s, r, p in shared)
    if worst <= REUSE_TOL:
        return Verdict(BY_CONSTRUCTION, f"R(0) ~ 0 and every R(s) equals the reuse of the training pool (largest gap {worst:.3f}): the reduction is the overlap, not transfer")
    return Verdict(FAILS, f"R(0) ~ 0 and R(s) differs from the reuse prediction by up to {worst:.3f}")


# ------------------------------------------------------------------------------------------------
# redundancy: 88 % of GPT-2's attention is redundant
# ------------------------------------------------------------------------------------------------

#: the paper's headline fraction, and how far a CI may be from it
PAPER_REDUNDANCY = 0.88
REDUNDANCY_TOL = 0.05


def redundancy_verdict(gpt2_measured: bool, reason: str, fraction_ci: Sequence[float] | None,
                       budget_binding: bool | None) -> Verdict:
    """GPT-2's redundant fraction at the ΔNLL budget (``cram redundancy``'s headline).

    Not measured without GPT-2 (``reason`` says why) or when the budget does not bind
    (mean-ablating all attention fits the budget, so the headline measures the budget). Holds
    when the headline CI comes within :data:`REDUNDANCY_TOL` of 0.88, fails otherwise.
    """
    if not gpt2_measured:
        return Verdict(NOT_MEASURED, reason)
    if budget_binding is None or not fraction_ci or _missing(*fraction_ci):
        return Verdict(NOT_MEASURED, "the GPT-2 measurement has no headline CI")
    if not budget_binding:
        return Verdict(NOT_MEASURED, "mean-ablating every attention output fits the ΔNLL budget, so the headline measures the budget, not redundancy")
    lo, hi = fraction_ci
    if lo - REDUNDANCY_TOL <= PAPER_REDUNDANCY <= hi + REDUNDANCY_TOL:
        return Verdict(HOLDS, f"GPT-2's redundant fraction CI [{lo:.3f}, {hi:.3f}] is within {REDUNDANCY_TOL} of 0.88")
    return Verdict(FAILS, f"GPT-2's redundant fraction CI [{lo:.3f}, {hi:.3f}] is not near 0.88")


# ------------------------------------------------------------------------------------------------
# compute: skipped attention is saved compute
# ------------------------------------------------------------------------------------------------

#: a wall-time speedup must exceed this to count (benchmarks on a shared machine are noisy)
SPEEDUP_MIN = 1.1


def _cheaper(sizes: list[dict], mode: str) -> tuple[list[str], list[str]]:
    """Sizes where routed CRAM runs ``mode`` more than SPEEDUP_MIN faster than the plain hybrid,
    and the others (as text, with the measured and FLOP-predicted ratios)."""
    yes, no = [], []
    for s in sizes:
        meas, pred = s.get(f"{mode}_vs_hybrid"), s.get(f"{mode}_vs_hybrid_flops")
        if meas is None:
            continue
        text = f"width {s.get('width')} ({meas:.3g}x" + ("" if pred is None else f", FLOPs predict {pred:.3g}x") + ")"
        (yes if meas > SPEEDUP_MIN else no).append(text)
    return yes, no


def compute_verdict(kernel_speedup: float | None, model_speedup: float | None,
                    vs_hybrid: list[dict] | None = None) -> Verdict:  # fmt: skip
    """Wall-time speedups at the smallest routed fraction measured, candidate and baseline
    interleaved in one run (``cram bench``): the routed attention op against dense SDPA, and
    routed CRAM against what a user would train instead: the plain hybrid (the same S blocks and
    a plain dense attention layer), at every size ``cram bench model`` measured (``vs_hybrid``:
    one dict per size with ``width`` and ``train_vs_hybrid``, ``decode_vs_hybrid`` and their
    ``..._flops`` predictions). Without sizes (older caches), the model step against the same
    model attending everywhere (``model_speedup``).

    Holds when the kernel (if timed) and routed CRAM's training step at every size measured are
    more than :data:`SPEEDUP_MIN` faster; fails when either is not; not measured when nothing was
    measured. The reason says at which widths CRAM trains and decodes cheaper and where not.
    """
    if kernel_speedup is None and model_speedup is None and not vs_hybrid:
        return Verdict(NOT_MEASURED, "no benchmark ran")
    if kernel_speedup is not None and kernel_speedup <= SPEEDUP_MIN:
        return Verdict(FAILS, f"routed attention is only {kernel_speedup:.3g}x dense SDPA at the smallest rho")
    sizes = [s for s in (vs_hybrid or []) if s.get("train_vs_hybrid") is not None]
    if sizes:
        train_yes, train_no = _cheaper(sizes, "train")
        dec_yes, dec_no = _cheaper(sizes, "decode")
        parts = []
        if train_yes:
            parts.append("trains cheaper than the plain hybrid at " + ", ".join(train_yes))
        if train_no:
            parts.append("does not train cheaper at " + ", ".join(train_no))
        if dec_yes:
            parts.append("decodes cheaper at " + ", ".join(dec_yes))
        if dec_no:
            parts.append("does not decode cheaper at " + ", ".join(dec_no))
        text = "routed CRAM " + "; ".join(parts)
        return Verdict(FAILS if train_no else HOLDS, text)
    if model_speedup is None:
        return Verdict(NOT_MEASURED, "only the kernel was timed; the whole model's step was not")
    if model_speedup <= SPEEDUP_MIN:
        return Verdict(FAILS, f"the model step is only {model_speedup:.3g}x the dense model at the smallest rho")
    if kernel_speedup is None:
        return Verdict(HOLDS, f"the model step is {model_speedup:.3g}x the dense model (kernel not timed)")
    return Verdict(HOLDS, f"routed attention {kernel_speedup:.3g}x and the model step {model_speedup:.3g}x faster than dense")

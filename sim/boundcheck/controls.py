"""The negative controls F1–F5 of ``cram bound`` and the criterion P5 (docs/theory.md §7).

Each control breaks one assumption of Theorem 1 and predicts exactly what the L1 simulator must
then measure:

- F1: f_e = 0 with a memory of the pool: SKIP-ALL+M is exact with A = 0;
- F2: LEARNED fitted on the evaluation pool itself: A_rec = 0 and acc_e = 1;
- F3: a type leak (key range, position): LEARNED-STATIC attends exactly the m_e episodic slots;
- F4: a cache that holds every binding: SKIP-ALL+M answers every episodic slot with A = 0;
- F5: overall accuracy only: skipping every episodic slot scores exactly m_r/n_q.

F1, F3, F4 and F5 are measured inside the sweep's loop (:meth:`ControlCounts.collect`, on the
same seeds), F2 once at the largest n (:func:`run_f2`); :func:`evaluate_controls` compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from cramkit.progress import Progress, report_to
from cramkit.sim.boundcheck.common import Timer, fit_static, sweep_batch
from cramkit.sim.boundcheck.config import BoundConfig
from cramkit.sim.boundcheck.result import Control, Criterion
from cramkit.sim.routers import LearnedRouter, SkipAllRouter, fit_learned
from cramkit.sim.simulate import Counts
from cramkit.sim.srcd import SRCDConfig, make_world
from cramkit.theory import bounds

LEAKS = (("key_range", "F3k"), ("position", "F3p"))


@dataclass
class ControlsAtN:
    """What the controls need at one n: F1's config and F3's leaky configs with their routers."""

    f1cfg: SRCDConfig
    leaks: dict[str, tuple[SRCDConfig, LearnedRouter]]


@dataclass
class ControlCounts:
    """The simulator's counts of every control, one entry per (n, seed) (F2: per seed)."""

    runs: dict[str, list[Counts]] = field(
        default_factory=lambda: {k: [] for k in ("F1", "F3k", "F3p", "F4", "F5")}
    )
    f2: list[Counts] = field(default_factory=list)
    f2_unseen: int = 0

    @staticmethod
    def prepare(cfg: BoundConfig, scfg: SRCDConfig, i: int) -> ControlsAtN:
        leaks = {}
        for leak, _ in LEAKS:
            lcfg = scfg.replace(leak=leak)
            leaks[leak] = (lcfg, fit_static(lcfg, cfg.seed, i, cover=leak == "key_range"))
        return ControlsAtN(scfg.replace(m_e=0, d=scfg.n_q), leaks)

    def collect(self, at_n: ControlsAtN, timer: Timer, cfg: BoundConfig, scfg: SRCDConfig,
                batch, world, s: int) -> None:  # fmt: skip
        """F4 and F5 on the sweep's own batch; F1 and F3 on their own worlds of the same seed."""
        skip = SkipAllRouter()
        wseed, B = cfg.seed + s, cfg.batch
        self.runs["F4"].append(timer.static(scfg, batch, skip, w=scfg.n_q + scfg.d, memory=world))
        self.runs["F5"].append(timer.static(scfg, batch, skip, w=0, memory=world))
        fworld = make_world(at_n.f1cfg, wseed)
        fbatch = sweep_batch(at_n.f1cfg, fworld, cfg.seed, s, B)
        self.runs["F1"].append(timer.static(at_n.f1cfg, fbatch, skip, w=cfg.w, memory=fworld))
        for leak, key in LEAKS:
            lcfg, lrouter = at_n.leaks[leak]
            lworld = make_world(lcfg, wseed)
            lbatch = sweep_batch(lcfg, lworld, cfg.seed, s, B)
            self.runs[key].append(timer.static(lcfg, lbatch, lrouter, w=cfg.w, memory=lworld))


def run_f2(cfg: BoundConfig, timer: Timer, counts: ControlCounts,
           progress: Progress | None = None) -> None:  # fmt: skip
    """F2: LEARNED fitted on the evaluation pool itself, at the largest n."""
    tick = report_to(progress)
    ncfg = cfg.srcd(cfg.ns[-1])
    for s in range(cfg.seeds):
        tick("control F2", s, cfg.seeds)
        world = make_world(ncfg, cfg.seed + s)
        own = fit_learned(
            ncfg, [world], cover_pool=True, static=False, name="LEARNED-OWN", seed_start=s << 24
        )
        counts.f2_unseen += int((~own.skip_key[world.keys - ncfg.key_offset]).sum())
        batch = sweep_batch(ncfg, world, cfg.seed, s, cfg.batch)
        counts.f2.append(timer.static(ncfg, batch, own, w=cfg.w, memory=world))
    tick("control F2", cfg.seeds, cfg.seeds)


def _cat(counts: list[Counts], f: str) -> np.ndarray:
    return np.concatenate([getattr(c, f) for c in counts])


def _accuracy(c: list[Counts]) -> float:
    return (_cat(c, "correct_rec") + _cat(c, "correct_epi")).sum() / (_cat(c, "m_r") + _cat(c, "m_e")).sum()


def evaluate_controls(cfg: BoundConfig, counts: ControlCounts, ns: list[int], m_r: np.ndarray,
                      m_e: np.ndarray) -> dict[str, Control]:  # fmt: skip
    """F1–F5, each its prediction against the measured value."""
    return {
        "F1": _f1(counts.runs["F1"]),
        "F2": _f2(counts, ns),
        "F3": _f3(counts.runs["F3k"], counts.runs["F3p"]),
        "F4": _f4(cfg, counts.runs["F4"], ns, m_r, m_e),
        "F5": _f5(counts.runs["F5"], m_r, m_e),
    }


def p5(controls: dict[str, Control]) -> Criterion:
    """P5: every control measures exactly what it predicts."""
    return Criterion(
        "P5",
        all(c.passed for c in controls.values()),
        "F1–F5: each control's measured value equals its predicted value exactly (L1)",
        failures=[
            f"{k}: predicted {c.predicted:g}, measured {c.measured:g}"
            for k, c in controls.items()
            if not c.passed
        ],
    )


def _f1(c: list[Counts]) -> Control:
    """f_e = 0, SKIP-ALL+M: acc = 1 with A = 0."""
    A = _cat(c, "A")
    acc = _accuracy(c)
    return Control(
        "F1", "attention per sequence of SKIP-ALL+M at f_e = 0 (accuracy must be 1)", 0.0, float(A.mean()),
        bool(A.max() == 0 and acc == 1), f"accuracy {acc:.6f} (predicted 1) over {A.size} sequences",
    )  # fmt: skip


def _f2(counts: ControlCounts, ns: list[int]) -> Control:
    """LEARNED fitted on the evaluation pool: A_rec = 0, acc_e = 1."""
    f2 = counts.f2
    arec = _cat(f2, "A_rec")
    acc_e = _cat(f2, "correct_epi").sum() / _cat(f2, "m_e").sum()
    return Control(
        "F2", f"A_rec per sequence of LEARNED fitted on the evaluation pool (n = {ns[-1]})", 0.0, float(arec.mean()),
        bool(arec.max() == 0 and acc_e == 1),
        f"acc_e {acc_e:.6f} (predicted 1); pool keys never seen in fitting: {counts.f2_unseen}",
    )  # fmt: skip


def _f3(key_range: list[Counts], position: list[Counts]) -> Control:
    """Type leaks: LEARNED-STATIC separates the types, so A = m_e exactly."""
    stats = []
    for c in (key_range, position):
        A = _cat(c, "A")
        me = _cat(c, "m_e")
        acc = _accuracy(c)
        stats.append((float(me.sum()), float(A.sum()), bool(np.all(A == me) and acc == 1), acc))
    (pk, mk, okk, acck), (pp, mp, okp, accp) = stats
    return Control(
        "F3", "total attention of LEARNED-STATIC on leaky layouts (key_range + position), predicted Σ m_e",
        pk + pp, mk + mp, okk and okp,
        f"key_range: A {mk:g} vs m_e {pk:g}, acc {acck:.6f}; position: A {mp:g} vs m_e {pp:g}, acc {accp:.6f}",
    )  # fmt: skip


def _f4(cfg: BoundConfig, c: list[Counts], ns: list[int], m_r: np.ndarray, m_e: np.ndarray) -> Control:
    """A cache holding every binding: SKIP-ALL+M answers every episodic slot with A = 0."""
    A = _cat(c, "A")
    ce = _cat(c, "correct_epi")
    me = _cat(c, "m_e")
    S_bits = [bounds.cache_bits(cfg.srcd(n).n_q + cfg.srcd(n).d, cfg.U, cfg.v) for n in ns]
    need = [int(b) * ((cfg.U - 1).bit_length() + (cfg.v - 1).bit_length()) for b in m_e]
    lb0 = [
        float(bounds.lower_bound_l1(int(a), int(b), 0, cfg.srcd(n).n_q + cfg.srcd(n).d))
        for a, b, n in zip(m_r, m_e, ns)
    ]
    return Control(
        "F4", "episodic accuracy of SKIP-ALL+M with a cache of every binding (A = 0)", 1.0, float(ce.sum() / me.sum()),
        bool(A.max() == 0 and np.all(ce == me)),
        f"S = {S_bits[-1]} bits >= m_e(log2 U + log2 v) = {need[-1]} at n = {ns[-1]}; the L1 bound "
        f"(1−0)·m_r − (m_r/m_e)·min(w, m_e) is {max(lb0):g} at every n (vacuous)",
    )  # fmt: skip


def _f5(c: list[Counts], m_r: np.ndarray, m_e: np.ndarray) -> Control:
    """Overall accuracy only: skipping every episodic slot gives acc = m_r/n_q exactly."""
    correct = _cat(c, "correct_rec") + _cat(c, "correct_epi")
    mr_all = _cat(c, "m_r")
    nq_all = mr_all + _cat(c, "m_e")
    pred = float(Fraction(int(mr_all.sum()), int(nq_all.sum())))
    return Control(
        "F5", "overall accuracy of SKIP-ALL+M without a cache (w = 0), predicted m_r/n_q", pred,
        float(correct.sum() / nq_all.sum()), bool(np.all(correct == mr_all) and _cat(c, "A").max() == 0),
        f"meets an overall requirement 1 − ε for every ε >= m_e/n_q = {float(m_e[-1] / (m_r[-1] + m_e[-1])):.4f} with A = 0",
    )  # fmt: skip

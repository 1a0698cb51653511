"""Transfer of a trained CRAM router to new pools without retraining (docs/transfer.md; the splits
of docs/srcd.md, "Splits").

:func:`run` (the library call of ``cram transfer``) evaluates one SRCD checkpoint on the IID
split (the reference) and on TRANSFER(s) and CONFLICT(s) worlds for a list of overlaps ``s``,
using the evaluation library of :mod:`cramkit.gpu.run.eval` (same model loading, same world
derivation, same scoring):

* attention reduction against ORACLE-POS, which attends every query slot in every CRAM layer:
  ``R(s) = 1 - A_CR / A_ORACLE`` with ``A`` = routed positions (all positions, all CRAM layers,
  as in the FLOP model of docs/theory.md §1) over the same sequences; ``R_q(s)`` counts query
  slots only (attended in any CRAM layer). 95% CIs: percentile bootstrap over sequences (``R`` over blocks of ``chunk``
  sequences, the unit :func:`cramkit.gpu.tasks.srcd_eval.evaluate` reports totals for);
* the effective overlap ``s_eff`` of the derived world and the first-order prediction
  ``R ~ s_eff * m_r / n_q`` (plus ``s_eff * R(IID)``, the same idealisation scaled by what the
  router skips on its own pool);
* accuracy kept: overall, recurring on shared patterns, recurring on new patterns, episodic,
  and the change from IID;
* the CONFLICT(s) control: accuracy on the shared keys, whose values changed. A router that
  skips attention there answers from consolidated memory, i.e. the stale value;
* the guard (docs/transfer.md): ``R(0)`` must be about 0 with accuracy kept. A failure is
  flagged with the reason.

The result is a :class:`TransferResult` (the :class:`cramkit.result.Result` contract): its JSON
keys are those of docs/transfer.md, ``report()`` the text ``cram transfer`` prints, ``plot()`` R(s)
and the accuracies against s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cramkit.errors import CramError
from cramkit.jsonable import to_jsonable
from cramkit.progress import Progress, report_to
from cramkit.result import Result
from cramkit.theory.stats import bootstrap_ratio, percentile_ci


@dataclass(frozen=True)
class TransferConfig:
    """Settings of ``cram transfer``: the checkpoint (needed by :func:`run`), the overlaps, the
    evaluation size and bootstrap, the guard's tolerances, and whether to run CONFLICT(s)."""

    checkpoint: str | os.PathLike | None = None
    overlaps: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    sequences: int = 512
    chunk: int = 32
    bootstrap: int = 1000
    r0_tol: float = 0.05
    acc_tol: float = 0.05
    conflict: bool = True
    seed: int = 0

    def __post_init__(self):
        if not self.overlaps or any(
            not (math.isfinite(s) and 0.0 <= s <= 1.0) for s in self.overlaps
        ):
            raise CramError(f"overlaps must be numbers in [0, 1], got {self.overlaps}")
        if len(set(self.overlaps)) != len(self.overlaps):
            raise CramError("overlaps must not repeat")
        if self.sequences < 2:
            raise CramError("sequences must be at least 2")
        from cramkit.gpu.run.eval_report import check_sequence_count

        check_sequence_count(self.sequences)
        if self.chunk < 1:
            raise CramError("chunk must be at least 1")
        if self.bootstrap < 0:
            raise CramError("bootstrap must be non-negative")
        for name in ("r0_tol", "acc_tol"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 1):
                raise CramError(f"{name} must be in [0, 1], got {v}")


@dataclass
class _Records:
    """Per-query records of one split, (S, n_q), plus routed-position totals per chunk."""

    attend: np.ndarray
    correct: np.ndarray
    recurring: np.ndarray
    shared: np.ndarray  # recurring slot whose pattern is shared with the training pool
    chunk_A: np.ndarray  # routed positions per chunk (all positions, all CRAM layers)
    chunk_seqs: np.ndarray  # sequences per chunk
    metrics: dict


def _evaluate_split(ck, split: str, cfg: TransferConfig, progress: Progress, label: str):
    from cramkit.gpu.run.eval import split_data
    from cramkit.gpu.tasks.srcd_eval import evaluate

    scfg, world, seeds = split_data(ck.cfg, split, cfg.sequences)
    n_layers = max(1, len(ck.model.cram_layers))
    parts, a_tot, n_tot = [], [], []
    chunks = range(0, len(seeds), cfg.chunk)
    for ci, i in enumerate(chunks):
        part = seeds[i : i + cfg.chunk]
        res = evaluate(ck.model, scfg, world, part, batch_size=cfg.chunk, router_seed=12345 + ci)
        rho_all = res.metrics["rho_all"] or 0.0
        a_tot.append(rho_all * len(part) * scfg.n * n_layers)
        n_tot.append(len(part))
        parts.append(res)
        progress(label, ci + 1, len(chunks))
    attend = np.concatenate([r.attend for r in parts])
    correct = np.concatenate([r.correct for r in parts])
    recurring = np.concatenate([r.recurring for r in parts])
    rank = np.concatenate([r.rank for r in parts])
    if world.kind == "base":  # IID: every recurring slot is on the training pool itself
        shared = recurring.copy()
    else:
        shared = recurring & np.where(rank >= 0, world.shared[np.clip(rank, 0, None)], False)
    rec = _Records(attend, correct, recurring, shared, np.asarray(a_tot), np.asarray(n_tot), {})
    return scfg, world, rec, n_layers


def _boot(num: np.ndarray, den: np.ndarray, n_res: int, seed: int):
    """Point estimate and percentile CI of sum(num)/sum(den) resampling units (rows)."""
    tot = den.sum()
    point = float(num.sum() / tot) if tot > 0 else None
    if n_res == 0 or len(num) < 2 or point is None:
        return point, None
    vals = bootstrap_ratio(num, den, n_resamples=n_res, seed=seed)
    vals = vals[np.isfinite(vals)]
    return point, (list(percentile_ci(vals)) if vals.size else None)


def _rate(mask_num, mask_den, n_res, seed):
    """Per-sequence bootstrap of a rate over the query slots selected by ``mask_den``."""
    return _boot(mask_num.sum(1).astype(float), mask_den.sum(1).astype(float), n_res, seed)


def _split_summary(rec: _Records, scfg, n_layers: int, cfg: TransferConfig, seed: int) -> dict:
    B = cfg.bootstrap
    S = rec.attend.shape[0]
    a_oracle = rec.chunk_seqs * scfg.n_q * n_layers  # ORACLE-POS: every query slot, every layer
    frac_cr, frac_cr_ci = _boot(rec.chunk_A, a_oracle.astype(float), B, seed)
    R = None if frac_cr is None else 1.0 - frac_cr
    R_ci = None if frac_cr_ci is None else [1.0 - frac_cr_ci[1], 1.0 - frac_cr_ci[0]]
    ones = np.ones_like(rec.attend)
    aq, aq_ci = _rate(rec.attend, ones, B, seed + 1)
    new = rec.recurring & ~rec.shared
    epi = ~rec.recurring
    out = {
        "R": R,
        "R_ci": R_ci,
        "R_q": 1.0 - aq,
        "R_q_ci": None if aq_ci is None else [1.0 - aq_ci[1], 1.0 - aq_ci[0]],
        "n_sequences": int(S),
    }
    for name, sel, k in (("acc", ones.astype(bool), 2), ("acc_shared", rec.shared, 3), ("acc_new", new, 4),
                         ("acc_e", epi, 5), ("acc_r", rec.recurring, 6)):  # fmt: skip
        v, ci = _rate(rec.correct & sel, sel, B, seed + k)
        out[name], out[name + "_ci"] = v, ci
    for name, sel in (("attend_shared", rec.shared), ("attend_new", new), ("attend_epi", epi)):
        n = int(sel.sum())
        out[name] = float(rec.attend[sel].mean()) if n else None
    out["n_shared_queries"] = int(rec.shared.sum())
    out["n_new_queries"] = int(new.sum())
    return out


@dataclass
class TransferResult(Result):
    """The evaluation of one checkpoint; each field is one top-level JSON key, in this order."""

    checkpoint: str
    router: str
    step: int | None
    srcd: dict
    cram_layers: int
    sequences: int
    reference: str
    iid: dict
    transfer: list[dict]
    conflict: list[dict]
    guard: dict

    name = "transfer"

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})

    def report(self) -> str:
        return format_transfer(self.to_json())

    def plot(self, path: str | os.PathLike) -> None:
        plot_transfer(self.to_json(), path)


def run(config: TransferConfig, progress: Progress | None = None) -> TransferResult:
    """Evaluate ``config.checkpoint`` on IID, TRANSFER(s) and CONFLICT(s) (see the module doc)."""
    from cramkit.gpu.run.load import load_checkpoint

    if config.checkpoint is None:
        raise CramError("name the SRCD checkpoint to evaluate")
    tick = report_to(progress)
    ck = load_checkpoint(config.checkpoint)
    if ck.cfg.task != "srcd":
        raise CramError(f"{config.checkpoint} is a {ck.cfg.task!r} checkpoint; cram transfer needs an SRCD checkpoint")
    scfg0 = ck.cfg.srcd_config()
    scfg, _w, iid_rec, n_layers = _evaluate_split(ck, "iid", config, tick, "IID")
    iid = _split_summary(iid_rec, scfg, n_layers, config, config.seed)
    rows, conflicts = [], []
    for i, s in enumerate(sorted(config.overlaps)):
        rows.append(_transfer_row(ck, s, i, iid, scfg0, n_layers, config, tick))
        if config.conflict and s > 0:
            conflicts.append(_conflict_row(ck, s, i, n_layers, config, tick))
    srcd = {"n": scfg0.n, "m_r": scfg0.m_r, "m_e": scfg0.m_e, "n_q": scfg0.n_q, "P": scfg0.P, "alpha": scfg0.alpha}
    return TransferResult(
        checkpoint=str(ck.path), router=ck.cfg.router.name, step=ck.meta.get("step"), srcd=srcd,
        cram_layers=n_layers, sequences=config.sequences,
        reference="ORACLE-POS (attends every query slot in every CRAM layer)", iid=iid, transfer=rows,
        conflict=conflicts, guard=_guard(rows, iid, config),
    )  # fmt: skip


def transfer_report(path: str | Path, config: TransferConfig | None = None, progress: Progress | None = None) -> dict:
    """:func:`run` on the checkpoint ``path``, as its JSON dict."""
    return run(replace(config or TransferConfig(), checkpoint=path), progress).to_json()


def _transfer_row(ck, s: float, i: int, iid: dict, scfg0, n_layers: int, cfg: TransferConfig, tick) -> dict:
    """One overlap ``s`` of TRANSFER(s): R, accuracies and the first-order predictions."""
    scfg, world, rec, _ = _evaluate_split(ck, f"transfer:{s:g}", cfg, tick, f"TRANSFER({s:g})")
    m_r, n_q = scfg0.m_r, scfg0.n_q
    row = {"s": s, "s_eff": world.s_eff, "n_shared_patterns": int(world.shared.sum()),
           **_split_summary(rec, scfg, n_layers, cfg, cfg.seed + 100 * (i + 1))}  # fmt: skip
    row["R_pred_spec"] = world.s_eff * m_r / n_q
    # the share of recurring slots that fall on shared patterns: with m_r distinct patterns
    # drawn per sequence (successive sampling) it differs from s_eff
    n_rec = row["n_shared_queries"] + row["n_new_queries"]
    row["shared_slot_share"] = row["n_shared_queries"] / n_rec if n_rec else None
    row["R_pred_slots"] = row["shared_slot_share"] * m_r / n_q if n_rec else None
    row["R_pred_iid"] = world.s_eff * iid["R"] if iid["R"] is not None else None
    row["delta_acc"] = row["acc"] - iid["acc"] if row["acc"] is not None and iid["acc"] is not None else None
    return row


def _conflict_row(ck, s: float, i: int, n_layers: int, cfg: TransferConfig, tick) -> dict:
    """CONFLICT(s): accuracy on the shared keys (bound to new values), attended and skipped."""
    scfg, world, rec, _ = _evaluate_split(ck, f"conflict:{s:g}", cfg, tick, f"CONFLICT({s:g})")
    summ = _split_summary(rec, scfg, n_layers, cfg, cfg.seed + 100 * (i + 1) + 50)
    sh = rec.shared
    att, skip = sh & rec.attend, sh & ~rec.attend
    return {
        "s": s,
        "s_eff": world.s_eff,
        "acc_shared": summ["acc_shared"],
        "acc_shared_ci": summ["acc_shared_ci"],
        "attend_shared": summ["attend_shared"],
        "acc_shared_attended": float(rec.correct[att].mean()) if att.any() else None,
        "acc_shared_skipped": float(rec.correct[skip].mean()) if skip.any() else None,
        "n_shared_skipped": int(skip.sum()),
        "acc_new": summ["acc_new"],
        "acc_e": summ["acc_e"],
        "R": summ["R"],
        "R_ci": summ["R_ci"],
    }


def _guard(rows, iid, cfg: TransferConfig) -> dict:
    zero = next((r for r in rows if r["s"] == 0.0), None)
    if zero is None:
        return {
            "checked": False,
            "ok": None,
            "messages": ["overlap 0 was not evaluated: the guard R(0) ~ 0 is unchecked"],
        }
    msgs = []
    R0, ci = zero["R"], zero["R_ci"]
    lo, hi = (ci if ci else (R0, R0)) if R0 is not None else (None, None)
    ok_r = R0 is not None and lo <= cfg.r0_tol and hi >= -cfg.r0_tol
    if not ok_r and R0 is not None:
        if lo > cfg.r0_tol:
            msgs.append(
                f"R(0) = {R0:.3f} (CI {lo:.3f}..{hi:.3f}) > {cfg.r0_tol:g}: the router skips queries on a pool "
                "that shares nothing with training, so part of the reduction is not transfer"
            )
        else:
            msgs.append(
                f"R(0) = {R0:.3f} (CI {lo:.3f}..{hi:.3f}) < -{cfg.r0_tol:g}: the router attends more than ORACLE-POS"
            )
    acc0, acc_iid = zero["acc"], iid["acc"]
    ok_acc = acc0 is not None and acc_iid is not None and acc0 >= acc_iid - cfg.acc_tol
    if not ok_acc and acc0 is not None and acc_iid is not None:
        msgs.append(
            f"accuracy at s=0 is {acc0:.3f} against {acc_iid:.3f} on IID (drop > {cfg.acc_tol:g})"
        )
    if ok_r and ok_acc:
        msgs.append(
            f"R(0) = {R0:.3f} is within {cfg.r0_tol:g} of 0 with accuracy kept ({acc0:.3f} vs IID {acc_iid:.3f})"
        )
    return {"checked": True, "ok": bool(ok_r and ok_acc), "R0": R0, "R0_ci": ci, "acc0": acc0,
            "acc_iid": acc_iid, "r0_tol": cfg.r0_tol, "acc_tol": cfg.acc_tol, "messages": msgs}  # fmt: skip


def format_transfer(r: dict) -> str:
    """Plain-text report of a transfer result (its JSON form)."""

    def f(x, nd=3):
        return "n/a" if x is None else f"{x:.{nd}f}"

    def ci(c):
        return "" if not c else f" [{c[0]:.3f}, {c[1]:.3f}]"

    s = r["srcd"]
    iid = r["iid"]
    out = [
        f"cram transfer: {r['checkpoint']} (router {r['router']}, step {r['step']}, {r['cram_layers']} CRAM layer(s))",
        f"SRCD n={s['n']} m_r={s['m_r']} m_e={s['m_e']} P={s['P']} alpha={s['alpha']:g}; "
        f"{r['sequences']} sequences per split; reference {r['reference']}",
        f"IID: R={f(iid['R'])}{ci(iid['R_ci'])}  R_q={f(iid['R_q'])}  acc={f(iid['acc'])}  acc_r={f(iid['acc_r'])}  "
        f"acc_e={f(iid['acc_e'])}",
        "",
        "TRANSFER(s): R = 1 - A_CR/A_ORACLE (95% CI); predictions s_eff*m_r/n_q, s_eff*R(IID) and "
        "(share of recurring slots on shared patterns)*m_r/n_q; accuracy kept",
        f"  {'s':>5}{'s_eff':>7}{'R':>8}{'CI':>18}{'R_q':>8}{'pred':>8}{'pred_iid':>9}{'pred_slot':>10}{'acc':>7}{'d_acc':>8}"
        f"{'acc_shared':>11}{'acc_new':>9}{'acc_e':>7}{'att_sh':>8}{'att_new':>8}",
    ]
    for row in r["transfer"]:
        out.append(
            f"  {row['s']:>5g}{row['s_eff']:>7.3f}{f(row['R']):>8}{ci(row['R_ci']):>18}{f(row['R_q']):>8}"
            f"{row['R_pred_spec']:>8.3f}{f(row['R_pred_iid']):>9}{f(row['R_pred_slots']):>10}{f(row['acc']):>7}"
            f"{f(row['delta_acc']):>8}"
            f"{f(row['acc_shared']):>11}{f(row['acc_new']):>9}{f(row['acc_e']):>7}"
            f"{f(row['attend_shared']):>8}{f(row['attend_new']):>8}"
        )
    if r["conflict"]:
        out += [
            "",
            "CONFLICT(s): the shared keys carry new values; skipping them answers the stale value",
        ]
        out.append(
            f"  {'s':>5}{'acc_shared':>11}{'CI':>18}{'attended':>10}{'acc|att':>9}{'acc|skip':>9}{'skipped':>9}"
        )
        for c in r["conflict"]:
            out.append(
                f"  {c['s']:>5g}{f(c['acc_shared']):>11}{ci(c['acc_shared_ci']):>18}{f(c['attend_shared']):>10}"
                f"{f(c['acc_shared_attended']):>9}{f(c['acc_shared_skipped']):>9}{c['n_shared_skipped']:>9}"
            )
    g = r["guard"]
    status = "unchecked" if not g["checked"] else ("OK" if g["ok"] else "FAILED")
    out += ["", f"guard R(0) ~ 0 with accuracy kept: {status}"]
    out += [f"  {m}" for m in g["messages"]]
    return "\n".join(out)


def plot_transfer(r: dict, path: str | Path) -> None:
    """R(s) with CIs and the predictions, and the accuracies, against the overlap s."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cramkit.io import save_figure

    rows = r["transfer"]
    s = [row["s"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    R = [row["R"] if row["R"] is not None else np.nan for row in rows]
    lo = [row["R_ci"][0] if row["R_ci"] else y for row, y in zip(rows, R)]
    hi = [row["R_ci"][1] if row["R_ci"] else y for row, y in zip(rows, R)]
    ax.errorbar(
        s,
        R,
        yerr=[np.subtract(R, lo), np.subtract(hi, R)],
        marker="o",
        capsize=3,
        label="R(s) measured",
    )
    ax.plot(s, [row["R_pred_spec"] for row in rows], ls="--", label="s_eff m_r / n_q")
    ax.plot(s, [row["R_pred_iid"] if row["R_pred_iid"] is not None else np.nan for row in rows], ls=":",
            label="s_eff R(IID)")  # fmt: skip
    ax.plot(s, [row["R_pred_slots"] if row["R_pred_slots"] is not None else np.nan for row in rows], ls="-.",
            label="shared-slot share m_r / n_q")  # fmt: skip
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("overlap s")
    ax.set_ylabel("attention reduction vs ORACLE-POS")
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, label in (("acc", "accuracy"), ("acc_shared", "shared patterns"), ("acc_new", "new patterns"),
                       ("acc_e", "episodic")):  # fmt: skip
        ax.plot(
            s,
            [row[key] if row[key] is not None else np.nan for row in rows],
            marker="o",
            label=label,
        )
    if r["conflict"]:
        ax.plot([c["s"] for c in r["conflict"]], [c["acc_shared"] if c["acc_shared"] is not None else np.nan
                for c in r["conflict"]], marker="x", ls="--", label="CONFLICT: shared keys")  # fmt: skip
    ax.axhline(r["iid"]["acc"] or 0, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("overlap s")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)

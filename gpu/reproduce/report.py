"""From a step's measured numbers to a report row: the figure, the verdict, and the result views.

:func:`assess` maps one claim's measured dict (what :mod:`cramkit.gpu.reproduce.steps` returned)
to the arguments of its rule in :mod:`cramkit.gpu.reproduce.verdicts` and to the text of the
measured figure. Every number in that text is read from the measured dict, which is written to
report.json with it (tests/gpu/test_reproduce.py checks that every number of report.md is there).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from cramkit.gpu.reproduce import verdicts as V
from cramkit.gpu.reproduce.claims import CLAIMS, Claim
from cramkit.result import Result


@dataclass
class Outcome:
    """One claim's row: the claim, what was measured (None: not run), the verdict and the figure."""

    claim: Claim
    measured: dict[str, Any] | None
    verdict: V.Verdict
    figure: str
    thresholds: dict[str, Any]
    command: str
    cached: bool = False
    seconds: float | None = None
    #: when the step finished and the 1-minute load average then (from the step's cache file)
    finished: str | None = None
    load_end: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.claim.id, "paper": self.claim.paper, "definition": self.claim.definition,
                "commands": list(self.claim.commands), "command": self.command, "measured": self.measured,
                "figure": self.figure, "verdict": self.verdict.verdict, "reason": self.verdict.reason,
                "thresholds": self.thresholds, "cached": self.cached, "seconds": self.seconds,
                "finished": self.finished, "load_end": self.load_end}  # fmt: skip


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ci(ci, nd: int = 3) -> str:
    return "" if not ci or ci[0] is None else f" [{_f(ci[0], nd)}, {_f(ci[1], nd)}]"


def wilson_ci(k: float, n: float, z: float = 1.959964) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of a proportion k/n."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


# ------------------------------------------------------------------------------------------------
# one assessor per claim: measured -> (figure, verdict, thresholds)
# ------------------------------------------------------------------------------------------------


def _static_bound(m: dict) -> tuple[str, V.Verdict, dict]:
    st, ex, c = m["stream"], m["example"], m["criteria"]
    sep = st["oracle_cum"] / st["cr_cum"] if st["cr_cum"] else None
    m["separation"] = sep
    fig = (f"{m['static_passed']} of {m['static_held']} static routers on their bound (e.g. {ex['router']}: slope "
           f"{ex['slope']:.5f}{_ci(ex['ci'], 5)}, bound {ex['bound']:.5f}); controls F1–F5: {m['controls_matched']} of "
           f"{m['controls_total']} match; stream of T = {st['T']}: CR_{st['K']} {st['cr_cum']:.0f} against ORACLE-POS "
           f"{st['oracle_cum']:.0f} cumulative recurring attention ({_f(sep, 1)}×); {m['seeds']} seeds")  # fmt: skip
    v = V.static_bound_verdict(c.get("P1"), m["controls_pass"], c.get("P3"), c.get("P4"), sep)
    return fig, v, {"separation_min": V.SEPARATION_MIN}


def _pool(rows: list[dict]) -> dict:
    n = sum(r["rec_total"] + r["epi_total"] for r in rows if r["acc"] is not None)
    k = sum(r["acc"] * (r["rec_total"] + r["epi_total"]) for r in rows if r["acc"] is not None)
    rho = [r["rho_q"] for r in rows if r["rho_q"] is not None]
    return {"acc": k / n if n else None, "ci": wilson_ci(k, n), "queries": n,
            "rho_q": sum(rho) / len(rho) if rho else None}  # fmt: skip


def _accuracy_budget(m: dict) -> tuple[str, V.Verdict, dict]:
    pooled = {}
    for split, rows in m["rows"].items():
        routers = list(dict.fromkeys(r["router"] for r in rows))
        pooled[split] = {r: _pool([x for x in rows if x["router"] == r]) for r in routers}
    m["pooled"] = pooled
    iid, fresh = pooled["iid"], pooled.get("fresh", {})
    cram = iid.get("cram")
    floor = next((r["floor_rho_q"] for r in m["rows"]["iid"]), None)
    m["floor_rho_q"] = floor
    base = {r: p for r, p in iid.items() if r != "cram"}
    parts = [f"{r} {_f(p['acc'])}{_ci(p['ci'])} at ρ_q {_f(p['rho_q'])}" for r, p in base.items()]
    fresh_txt = ", ".join(f"{r} {_f(p['acc'])}" for r, p in fresh.items())
    fig = (f"cram: acc {_f(cram['acc'])}{_ci(cram['ci'])} at ρ_q {_f(cram['rho_q'])} (floor m_e/n_q {_f(floor)}); "
           f"static routers at the matched budget: {'; '.join(parts)}; FRESH pool: {fresh_txt}; seeds "
           f"{', '.join(str(s) for s in m['seeds'])}, {m['eval_sequences']} probe sequences per split")  # fmt: skip
    v = V.accuracy_budget_verdict(cram["acc"], cram["ci"][0] if cram["ci"] else None, cram["rho_q"], floor,
                                  [p["ci"][1] for p in base.values() if p["ci"]])  # fmt: skip
    return fig, v, {"acc_target": V.ACC_TARGET, "floor_tol": V.FLOOR_TOL}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _attention_fall(m: dict) -> tuple[str, V.Verdict, dict]:
    starts = [next((e for e in c["E_rec"] if e is not None), None) for c in m["curves"]]
    ends = [next((e for e in reversed(c["E_rec"]) if e is not None), None) for c in m["curves"]]
    m["E_rec_start"], m["E_rec_end"] = _mean(starts), _mean(ends)
    red, red_q = _mean(m["reduction_rho_all"]), _mean(m["reduction_rho_q"])
    m["reduction_rho_all_mean"], m["reduction_rho_q_mean"] = red, red_q
    fit = m["fit"]
    steps = ", ".join(_f(s, 1) for s in m["transition_step"])
    fig = (f"E_rec {_f(m['E_rec_start'])} → {_f(m['E_rec_end'])}; transition (midpoint) at step {steps}; fit-gamma: "
           f"W = {_f(fit['W'], 2)} decades ({fit['W_model']}), ΔAIC logistic vs power {_f(fit['delta_aic_logistic_vs_power'], 1)}"
           f" → {'sharp' if fit['sharp'] else 'not sharp'}; ρ_all falls {_f(red, 1)}× (n/m_e = {_f(m['task_ratio'], 1)}), "
           f"ρ_q {_f(red_q, 1)}× (n_q/m_e = {_f(m['task_ratio_q'], 1)}); seeds {', '.join(str(s) for s in m['seeds'])}")  # fmt: skip
    v = V.attention_fall_verdict(m["E_rec_start"], m["E_rec_end"], fit["sharp"], red, m["task_ratio"])
    return fig, v, {"ratio_tol": V.RATIO_TOL, "fall_factor": 0.5}


def _gamma(m: dict) -> tuple[str, V.Verdict, dict]:
    a = [h["a"] for h in m["human"]]
    m["human_a_min"], m["human_a_max"] = (min(a), max(a)) if a else (None, None)
    m["human_sets"] = len(a)
    bound = " (at a bound of the fit)" if m["gamma_at_bound"] else ""
    fig = (f"best model {m['best_model']}; {m['primary_model']} γ = {_f(m['gamma'])}{_ci(m['gamma_ci'])}{bound}, "
           f"{m['resamples']} bootstrap resamples; curve {'sharp' if m['sharp'] else 'not sharp'}; human savings data "
           f"(cram's power fits, {m['human_sets']} sets): a = {_f(m['human_a_min'])}–{_f(m['human_a_max'])}; seeds "
           f"{', '.join(str(s) for s in m['seeds'])}")  # fmt: skip
    v = V.gamma_verdict(m["best_model"] in ("M1", "M2"), m["sharp"], m["gamma_ci"], m["gamma_at_bound"], a,
                        m["predicted_gamma"])  # fmt: skip
    return fig, v, {"paper_gamma_range": list(V.PAPER_GAMMA_RANGE), "human_range": list(V.HUMAN_RANGE)}


_ACC_TOL = 0.05  # the transfer guard's accuracy tolerance (TransferConfig.acc_tol)


def _transfer(m: dict) -> tuple[str, V.Verdict, dict]:
    g = m["guard"]
    rows = "; ".join(f"s = {r['s']:g}: R {_f(r['R'])}{_ci(r['R_ci'])}, reuse {_f(r['R_pred_slots'])}, acc {_f(r['acc'])}"
                     for r in m["rows"])  # fmt: skip
    conf = ", ".join(f"s = {c['s']:g}: {_f(c['acc_shared'])}" for c in m["conflict"])
    fig = (f"{rows}; IID R {_f(m['iid_R'])}" + (f"; CONFLICT accuracy on shared keys {conf}" if conf else "")
           + f"; {m['sequences']} sequences per split, seed {m['seeds'][0]}")  # fmt: skip
    acc_ok = None if g["acc0"] is None or g["acc_iid"] is None else g["acc0"] >= g["acc_iid"] - _ACC_TOL
    r0_low = (g["R0_ci"][0] if g.get("R0_ci") else g["R0"])
    v = V.transfer_verdict(acc_ok, r0_low, [(r["s"], r["R"], r["R_pred_slots"]) for r in m["rows"]])
    return fig, v, {"reuse_tol": V.REUSE_TOL, "r0_tol": V.R0_TOL, "acc_tol": _ACC_TOL}


def _redundancy(m: dict) -> tuple[str, V.Verdict, dict]:
    g, t = m["gpt2"], m["text_model"]
    if g["measured"]:
        gtxt = f"GPT-2: {_f(g['fraction'])}{_ci(g['ci'])}" + ("" if g["budget_binding"] else " (budget does not bind)")
    else:
        gtxt = f"GPT-2: not measured ({g['reason']})"
    traj = t["trajectory"]
    ttxt = ", ".join(f"step {r['step']}: {_f(r['headline'])}{_ci(r['headline_ci'])}"
                     + ("" if r["budget_binding"] else " (budget does not bind)") for r in traj)  # fmt: skip
    fig = (f"{gtxt}; small byte-level model trained here (bits per byte {_f(t['bpb'], 2)}), headline over training: "
           f"{ttxt}; trend {_f(t['trend'])} per checkpoint")  # fmt: skip
    v = V.redundancy_verdict(g["measured"], g.get("reason", ""), g.get("ci"), g.get("budget_binding"))
    return fig, v, {"paper_fraction": V.PAPER_REDUNDANCY, "tol": V.REDUNDANCY_TOL}


def _compute(m: dict) -> tuple[str, V.Verdict, dict]:
    k, s, bm = m["kernel"], m["model_step"], m["bench_model"]
    parts = []
    if k:
        parts.append(f"routed attention fwd+bwd at T = {k['T']}, ρ = {k['rho']:.4f}: {_f(k['speedup'], 2)}× dense SDPA "
                     f"({_f(k['ms'], 1)} ms against {_f(k['baseline_ms'], 1)} ms)")  # fmt: skip
    if s:
        parts.append(f"model step at T = {s['T']}, ρ = {s['rho']:.4f}: {_f(s['speedup'], 2)}× the model at ρ = 1")
    model_speedup = s["speedup"] if s else None
    sizes = [z for z in (m.get("bench_model_sizes") or []) if isinstance(z, dict)]
    for z in sizes:
        if z.get("train_vs_hybrid") is None:
            continue
        parts.append(f"cram bench model, width {z.get('width')}, vocabulary {z.get('vocab')}, T = {z['T']}, "
                     f"ρ = {z['rho']:.4f}, per token against the plain hybrid (measured, FLOP-predicted): training "
                     f"{_f(z['train_vs_hybrid'], 2)}×, {_f(z.get('train_vs_hybrid_flops'), 2)}×; decode "
                     f"{_f(z.get('decode_vs_hybrid'), 2)}×, {_f(z.get('decode_vs_hybrid_flops'), 2)}×; training "
                     f"{_f(z.get('speedup'), 2)}× CRAM at ρ = 1 and {_f(z.get('vs_transformer'), 2)}× a transformer")  # fmt: skip
    if bm and isinstance(bm, dict) and bm.get("speedup") is not None:
        model_speedup = bm["speedup"]
        if not sizes:
            parts.append(f"cram bench model at T = {bm['T']}, ρ = {bm['rho']:.4f}, per token: training {_f(bm['speedup'], 2)}×, "
                         f"prefill {_f(bm.get('prefill_speedup'), 2)}×, decode {_f(bm.get('decode_speedup'), 2)}× the dense "
                         f"hybrid; training {_f(bm.get('over_floor'), 2)}× the no-attention floor's time and "
                         f"{_f(bm.get('vs_transformer'), 2)}× faster than a transformer")  # fmt: skip
    elif not sizes:
        parts.append(m["bench_model_reason"] or "cram bench model: no speedup reported")
    v = V.compute_verdict(k["speedup"] if k else None, model_speedup, sizes or None)
    return "; ".join(parts), v, {"speedup_min": V.SPEEDUP_MIN}


#: the hand-run measurement pages of the repository (their own commands, machines and dates),
#: listed under the generated table; no figure is copied from them
DETAIL_PAGES = (
    ("bound.md", "the static bound and CR_K with every router and control"),
    ("srcd.md", "every router on SRCD at matched budgets, seeds, FRESH, utilization curves, the m_e = 1 control"),
    ("fit-gamma.md", "consolidation-curve fits, the human reference data, the count model"),
    ("transfer.md", "transfer and the CONFLICT control"),
    ("redundancy.md", "attention redundancy: planted-head control, a small text model over training"),
    ("language.md", "CRAM byte-level language models on the King James Bible against dense, SSM-only, window and static routers"),
    ("kernels.md", "routed attention and the SSM scan against dense SDPA and the references, CPU and H200"),
    ("model-speed.md", "per-token time of training, prefill and decode for whole models, CPU and H200"),
)


ASSESSORS = {
    "static-bound": _static_bound,
    "accuracy-budget": _accuracy_budget,
    "attention-fall": _attention_fall,
    "gamma": _gamma,
    "transfer": _transfer,
    "redundancy": _redundancy,
    "compute": _compute,
}


def assess(claim: Claim, measured: dict | None, command: str, *, cached: bool = False,
           seconds: float | None = None, finished: str | None = None, load_end: float | None = None) -> Outcome:
    """The report row of ``claim`` from its measured dict (None: the step was not run)."""
    if measured is None:
        verdict = V.Verdict(V.NOT_MEASURED, "not run in this reproduction (see --only)")
        return Outcome(claim, None, verdict, "not run", {}, command, cached, seconds)
    measured = dict(measured)
    figure, verdict, thresholds = ASSESSORS[claim.id](measured)
    return Outcome(claim, measured, verdict, figure, thresholds, command, cached, seconds, finished, load_end)


# ------------------------------------------------------------------------------------------------
# the Result
# ------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class ReproduceResult(Result):
    """Every claim's row, the machine and the timing of one ``cram reproduce``."""

    scale: str
    out: str
    outcomes: list[Outcome]
    machine: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    name: str = "reproduce"

    def to_json(self) -> dict[str, Any]:
        from cramkit.jsonable import to_jsonable

        return to_jsonable({"scale": self.scale, "out": self.out, "machine": self.machine, "wall_s": self.wall_s,
                            "steps_seconds": self.steps_seconds, "claims": [o.to_json() for o in self.outcomes]})  # fmt: skip

    @property
    def steps_seconds(self) -> float:
        """Seconds the measured steps took when they ran (over every invocation that ran one)."""
        return sum(o.seconds or 0.0 for o in self.outcomes)

    def markdown(self) -> str:
        """report.md: the verdict table, then each claim's reason."""
        mc = self.machine
        lines = [
            "# The CRAM paper's claims, as `cram reproduce` measured them",
            "",
            f"Written by `cram reproduce --scale {self.scale}` on {mc.get('date', '?')} on {mc.get('platform', '?')} "
            f"({mc.get('cpus', '?')} CPUs, {mc.get('gpu') or 'no GPU'}; Python {mc.get('python', '?')}, torch "
            f"{mc.get('torch', '?')}); load average {mc.get('load_start', '?')} at the start and "
            f"{mc.get('load_end', '?')} at the end of this invocation ({self.wall_s:.0f} s); the steps took "
            f"{self.steps_seconds:.0f} s in all when they ran. Every figure in the table is read "
            "from report.json, which holds what each step measured; the verdicts are computed by the rules in "
            "`cramkit.gpu.reproduce.verdicts` (docs/reproduce.md).",
            "",
            "| claim | paper's figure | cram's definition | measured here (95 % CI, seeds) | verdict | reproduce this row |",
            "|---|---|---|---|---|---|",
        ]
        for o in self.outcomes:
            lines.append(f"| {o.claim.id} | {_cell(o.claim.paper)} | {_cell(o.claim.definition)} | {_cell(o.figure)} | "
                         f"**{o.verdict.verdict}** | `{o.command}` |")  # fmt: skip
        lines += ["", "To measure a row again, delete `steps/<claim>.json` in the output folder and run its command.",
                  "", "## Why each verdict", ""]  # fmt: skip
        for o in self.outcomes:
            lines.append(f"- **{o.claim.id}: {o.verdict.verdict}.** {o.verdict.reason}.")
        lines += ["", "## When each row was measured", ""]
        for o in self.outcomes:
            if o.measured is None:
                lines.append(f"- {o.claim.id}: not run")
                continue
            when = o.finished or "an earlier run (time not recorded)"
            took = f"in {o.seconds:.0f} s" if o.seconds is not None else ""
            load = f", 1-minute load average {o.load_end} at its end" if o.load_end is not None else ""
            lines.append(f"- {o.claim.id}: {when} {took}{load}")
        lines += ["", "Commands each step's library calls stand for:", ""]
        for o in self.outcomes:
            lines.append(f"- {o.claim.id}: " + ", ".join(f"`{c}`" for c in o.claim.commands))
        lines += ["", "## The pages with the details", ""]
        lines += [f"- `docs/results/{page}`: {what}" for page, what in DETAIL_PAGES]
        return "\n".join(lines) + "\n"

    def report(self) -> str:
        width = max(len(o.claim.id) for o in self.outcomes) if self.outcomes else 10
        lines = [f"cram reproduce --scale {self.scale}: {len(self.outcomes)} claims, {self.wall_s:.0f} s ({self.out})", ""]
        for o in self.outcomes:
            how = "cached" if o.cached else (f"{o.seconds:.0f} s" if o.seconds is not None else "not run")
            lines.append(f"{o.claim.id:<{width}}  {o.verdict.verdict:<34} ({how})")
            lines.append(f"{'':<{width}}  {o.verdict.reason}")
        lines += ["", f"report: {os.path.join(self.out, 'report.md')}"]
        return "\n".join(lines)

    def plot(self, path) -> None:
        from cramkit.gpu.reproduce.plots import plot_outcomes

        plot_outcomes(self.outcomes, path)


__all__ = ["CLAIMS", "Outcome", "ReproduceResult", "assess", "wilson_ci"]

"""``run``: the whole ``cram bound`` check, one runner after another."""

from __future__ import annotations

import time

from cramkit.progress import Progress, report_to
from cramkit.sim.boundcheck import controls as ctl
from cramkit.sim.boundcheck.common import Timer, warm_up
from cramkit.sim.boundcheck.config import BoundConfig
from cramkit.sim.boundcheck.result import BoundResult
from cramkit.sim.boundcheck.stream import analyse_stream, run_stream
from cramkit.sim.boundcheck.sweep import analyse_sweep, run_sweep


def run(config: BoundConfig, progress: Progress | None = None) -> BoundResult:
    """Run the sweep (with the controls F1, F3–F5 on its seeds), control F2, and the stream;
    decide P1–P5. ``progress(stage, done, total)`` hears of each stage."""
    tick = report_to(progress)
    t_start = time.perf_counter()
    tick("numba warm-up", 0, 1)
    jit = warm_up()
    tick("numba warm-up", 1, 1)
    timer = Timer()
    counts = ctl.ControlCounts()
    sweep = run_sweep(config, timer, counts, progress)
    ctl.run_f2(config, timer, counts, progress)
    stream = run_stream(config, timer, progress)
    rows, p1, p2 = analyse_sweep(config, sweep)
    st = analyse_stream(config, stream)
    for row in rows:
        if row.name.startswith("CR_"):
            row.passed = st.cr_pass[int(row.name[3:])]
    controls = ctl.evaluate_controls(config, counts, sweep.ns, sweep.m_r, sweep.m_e)
    curves = {
        "n": sweep.ns,
        "A_rec_mean": {nm: sweep.seq[nm]["A_rec"].mean(axis=(1, 2)).tolist() for nm in sweep.names},
        "bound": {r.name: sweep.per_n_main_bound(r.name).tolist() for r in rows if r.static},
        "stream": st.curves,
    }
    return BoundResult(
        config=config,
        routers=rows,
        criteria={"P1": p1, "P2": p2, "P3": st.p3, "P4": st.p4, "P5": ctl.p5(controls)},
        controls=controls,
        stream=st.summary,
        curves=curves,
        seconds=time.perf_counter() - t_start,
        jit_seconds=jit,
        decisions=timer.decisions,
        decision_seconds=timer.seconds,
    )

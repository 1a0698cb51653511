"""``cram bound`` as a library: the L1 sweep, the CR_K stream, criteria P1–P5 and negative
controls F1–F5 (docs/theory.md §7).

:func:`run` (``run(BoundConfig(...), progress=None) -> BoundResult``) runs

1. the **sweep** (:mod:`.sweep`): n doubling from ``n_min`` to ``n_max``; per n and seed a world
   drawn from the prior and ``batch`` IID sequences; every static router scored exactly by the L1
   simulator, CR_K run over each seed's sequences; P1 and P2;
2. the **controls** F1–F5 (:mod:`.controls`), each with a value predicted by the theory and the
   measured one; P5;
3. the **stream** (:mod:`.stream`): ``seeds`` streams of T sequences (n = n_min, pool size
   ``stream_P``), CR_K with a persistent table against ORACLE-POS on the stream axis; P3 and P4;

and returns a :class:`BoundResult` (:mod:`.result`): per-router slopes with bootstrap CIs, the
bound each static router is held to, the criteria with what they compared, the controls, the
curves for the figure, wall times and the simulator's decision rate. The closed forms it checks
live in :mod:`cramkit.theory.bounds`.
"""

from cramkit.sim.boundcheck.config import BoundConfig
from cramkit.sim.boundcheck.pipeline import run
from cramkit.sim.boundcheck.result import BoundResult, Control, Criterion, RouterRow

__all__ = ["BoundConfig", "BoundResult", "Control", "Criterion", "RouterRow", "run"]

"""``cram reproduce``: every claim of the CRAM paper re-measured by one command (docs/reproduce.md).

- :mod:`.claims`: the paper's claims (quoted) and cram's definitions, one table;
- :mod:`.scales`: quick / full (and tiny for tests);
- :mod:`.steps`: one thin adapter per claim over the library calls of the individual commands;
- :mod:`.verdicts`: the verdict rules, pure functions of numbers;
- :mod:`.report`: measured numbers -> figure text and verdict; the Result;
- :mod:`.runner`: :func:`run` with the step cache and the report files.
"""

from cramkit.gpu.reproduce.runner import ReproduceConfig, run

__all__ = ["ReproduceConfig", "run"]

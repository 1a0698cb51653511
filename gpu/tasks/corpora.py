"""Real English text for the text task, from a package the operating system installs (docs/tasks.md,
"A real corpus").

cram ships no corpus larger than its 32 KB test text and downloads nothing at run time. The King
James Bible (public domain: translated in 1611) ships in Debian's ``bible-kjv-text`` package and
is printed by the ``bible`` program of the ``bible-kjv`` package (GPL-2+; cram only runs it)::

    apt-get install -y bible-kjv
    bible "gen1:1-rev22:21" > kjv.txt            # 4.3 MB of ASCII, the same bytes every time

:func:`kjv_text` does the second line from Python (an atomic write, one clear line when the
program is missing). The corpus is never committed to the repository.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cramkit.errors import CramError
from cramkit.io import atomic_write_bytes

#: the verse range of the whole Bible in the ``bible`` program's syntax
KJV_RANGE = "gen1:1-rev22:21"
KJV_INSTALL = "apt-get install -y bible-kjv"


def kjv_text(path: str | Path, *, program: str = "bible") -> Path:
    """Write the whole King James Bible, as ``bible "gen1:1-rev22:21"`` prints it, to ``path``.

    Needs the Debian packages ``bible-kjv`` and ``bible-kjv-text`` (``apt-get install -y
    bible-kjv``). Returns the path; raises :class:`CramError` when the program is missing or
    fails, or prints nothing."""
    exe = shutil.which(program)
    if exe is None:
        raise CramError(f"the {program!r} program is not installed; install it with: {KJV_INSTALL}")
    try:
        proc = subprocess.run([exe, KJV_RANGE], capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CramError(f"running {program} failed: {exc}") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        why = err[0] if err else f"exit status {proc.returncode}, {len(proc.stdout)} bytes"
        raise CramError(f"{program} {KJV_RANGE!r} printed no text ({why}); reinstall with: {KJV_INSTALL}")
    path = Path(path)
    try:
        atomic_write_bytes(path, proc.stdout)
    except OSError as exc:
        raise CramError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path

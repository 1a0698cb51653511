"""docs/cli.md is generated from the commands' own help texts and must stay in step with them.

Regenerate with ``CRAM_REGEN_DOCS=1 python -m pytest tests/test_docs_cli.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.testing import CliRunner

from cramkit.cli.main import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

HEADER = """# Command reference

Generated from the commands' own `--help` texts (`CRAM_REGEN_DOCS=1 python -m pytest
tests/test_docs_cli.py` regenerates it; a test fails when it is out of date). Every command
reports bad input as one line and exit status 2; commands that print results take `--json`.
What each command computes, and what it measured on this project's machine, is in the topic
docs: [srcd.md](srcd.md), [theory.md](theory.md), [training.md](training.md),
[fit-gamma.md](fit-gamma.md), [kernels.md](kernels.md), [redundancy.md](redundancy.md),
[transfer.md](transfer.md) and [results/](results/).
"""


def _help(args: list[str]) -> str:
    res = CliRunner().invoke(cli, [*args, "--help"], terminal_width=100, prog_name="cram")
    assert res.exit_code == 0, res.output
    return res.output.rstrip() + "\n"


def render() -> str:
    parts = [HEADER, "## cram\n\n```text\n" + _help([]) + "```\n"]
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        parts.append(f"## cram {name}\n\n```text\n" + _help([name]) + "```\n")
        if isinstance(cmd, click.Group):
            sub_ctx = click.Context(cmd, parent=ctx, info_name=name)
            for sub in cmd.list_commands(sub_ctx):
                parts.append(f"### cram {name} {sub}\n\n```text\n" + _help([name, sub]) + "```\n")
    return "\n".join(parts)


def test_cli_doc_is_current():
    text = render()
    if os.environ.get("CRAM_REGEN_DOCS"):
        DOC.write_text(text, encoding="utf-8")
    assert DOC.exists(), "docs/cli.md is missing; regenerate it (see the module docstring)"
    assert DOC.read_text(encoding="utf-8") == text, (
        "docs/cli.md is out of date; regenerate it with CRAM_REGEN_DOCS=1 python -m pytest "
        "tests/test_docs_cli.py"
    )

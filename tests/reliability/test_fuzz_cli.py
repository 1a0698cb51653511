"""No traceback on any option value: ``cram <cmd> --opt <random text or number>`` ends with exit
status 0, 1 or 2 and one error line at most, never a Python traceback. A few fixed hostile values
per command run by default; the hypothesis sweep over every option of every command is -m slow.

A call that is still computing after a short time budget (a valid value that starts real work) is
stopped and counts as no error: the fuzz looks for crashes, not for slow valid runs."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cramkit.cli.main import COMMANDS, cli

HOSTILE = ["nan", "-1", "1e308", "abc", "", ",", "1,,2", "/nonexistent/dir/x", "-inf", "99999999999999999999"]


class _Budget(BaseException):
    """The call ran past its time budget (valid input doing real work)."""


@contextmanager
def _time_budget(seconds: float):
    def stop(*_):
        raise _Budget

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _leaves() -> dict[str, tuple[list[str], list[click.Parameter]]]:
    """Every runnable command (subcommands of groups such as ``bench`` included): its argv prefix
    and its parameters."""
    out = {}
    ctx = click.Context(cli)
    for name in sorted(COMMANDS):
        cmd = cli.get_command(ctx, name)
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub_name, sub in sorted(subs.items()):
                out[f"{name} {sub_name}"] = ([name, sub_name], list(sub.params))
        else:
            out[name] = ([name], list(cmd.params))
    return out


def _call(args: list[str], budget: float = 4.0) -> None:
    try:
        with _time_budget(budget):
            r = CliRunner().invoke(cli, args)
    except _Budget:
        return
    out = r.output  # stdout and stderr interleaved (click >= 8.2)
    assert "Traceback" not in out, (args, out)
    assert r.exit_code in (0, 1, 2), (args, r.exit_code, out)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"{args}: uncaught {type(r.exception).__name__}: {r.exception}")
    if r.exit_code != 0:
        errors = [ln for ln in out.splitlines() if ln.startswith("Error")]
        assert len(errors) <= 1, (args, out)


def _argv(param: click.Parameter, value: str) -> list[str]:
    if isinstance(param, click.Argument):
        return [value]
    flag = max(param.opts, key=len)
    if param.is_flag:
        return [flag]
    return [flag, value]


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """Import every cram module before any time budget runs: an alarm inside a first import would
    leave a module half-initialised for the rest of the session."""
    import importlib
    import pkgutil

    import torch  # noqa: F401

    names = []
    for root in ("cramkit", "cramkit.theory", "cramkit.sim", "cramkit.gpu", "cramkit.cli"):
        try:
            pkg = importlib.import_module(root)
        except ImportError:
            continue
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, root + ".")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional back ends (e.g. a GPU compiler) may be missing
            pass
    ctx = click.Context(cli)
    for name in COMMANDS:
        cli.get_command(ctx, name)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that does start writes its default output here


def test_every_command_is_fuzzed():
    assert {k.split()[0] for k in _leaves()} == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_hostile_values_for_the_first_options(name):
    for key, (prefix, params) in _leaves().items():
        if key.split()[0] != name:
            continue
        for p in [p for p in params if not getattr(p, "is_flag", False)][:3]:
            for value in HOSTILE[:4]:
                _call([*prefix, *_argv(p, value)], budget=3.0)


_VALUES = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=24).filter(lambda s: "\x00" not in s),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.floats(-1e6, 1e6).map(repr), min_size=1, max_size=4).map(",".join),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_every_option_of_every_command(data):
    leaves = _leaves()
    prefix, params = leaves[data.draw(st.sampled_from(sorted(leaves)), label="command")]
    chosen = data.draw(st.lists(st.sampled_from(params), min_size=1, max_size=3, unique_by=lambda p: p.name), label="params")
    argv = list(prefix)
    for p in chosen:
        argv += _argv(p, data.draw(_VALUES, label=p.name))
    _call(argv)

"""The ``cram`` Click group.

Commands are loaded lazily (``cram bound`` does not import torch). Every command is one module
in this package exposing a Click command; it parses, calls one library function, and prints or
plots the result. Library errors (:class:`cramkit.errors.CramError`) become one clear line and
exit status 2.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from cramkit.errors import CramError

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "bound": "cramkit.cli.bound:bound",
    "train": "cramkit.cli.train:train",
    "eval": "cramkit.cli.eval:eval_cmd",
    "fit-gamma": "cramkit.cli.fit_gamma:fit_gamma",
    "bench": "cramkit.cli.bench:bench",
    "redundancy": "cramkit.cli.redundancy:redundancy",
    "transfer": "cramkit.cli.transfer:transfer",
    "generate": "cramkit.cli.generate:generate",
    "reproduce": "cramkit.cli.reproduce:reproduce",
}


class InputError(click.ClickException):
    """Bad input reported by the library: one line, exit status 2."""

    exit_code = 2


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs (or help lists it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = [n for n, target in COMMANDS.items() if _module_exists(target.split(":")[0])]
        return sorted(set(names) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _module_exists(target.split(":")[0]):
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CramError as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:  # a fault no library call mapped: still one line (cramkit.io)
            from cramkit.io import describe_os_error

            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise InputError(f"{describe_os_error(exc)}{where}") from None
        except MemoryError:
            raise InputError("out of memory; use a smaller model, batch or data set") from None
        except RuntimeError as exc:  # torch's allocator errors (CPU and CUDA) are RuntimeErrors
            text = str(exc)
            if "out of memory" not in text.lower() and "can't allocate memory" not in text:
                raise
            raise InputError("out of memory (" + text.splitlines()[0][:160] + "); use a smaller model, "
                             "batch or data set") from None  # fmt: skip
        except KeyboardInterrupt as exc:  # a subclass may carry how to resume (cramkit.gpu.run.runfolder)
            click.echo(f"interrupted{': ' + str(exc) if str(exc) else ''}", err=True)
            ctx.exit(130)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cram-toolkit")
def cli() -> None:
    """cram: theory, simulation and training for Consolidation-based Routing for Adaptive Memory.

    Train hybrid SSM + attention models whose router learns to skip attention for consolidated
    patterns, check the routing bounds with an exact simulator, and fit consolidation curves.
    Every result printed is measured by the command that prints it.
    """


if __name__ == "__main__":  # pragma: no cover
    cli()

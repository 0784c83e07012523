"""The ``slobench`` command. Each verb lives in its own module; errors become one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer

from slobench import __version__
from slobench.errors import UserError

app = typer.Typer(
    name="slobench",
    help="How much real traffic can this LLM serving setup carry while every application "
    "still meets its SLO?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn UserError (and Ctrl-C outside a run) into one line on stderr and an exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            msg = str(exc).replace("\n", " ")
            sys.stderr.write(f"error: {msg}\n")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slobench {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """slobench: benchmark LLM serving against per-application SLOs."""


from slobench.cli import arena as _arena  # noqa: E402,F401
from slobench.cli import capacity as _capacity  # noqa: E402,F401
from slobench.cli import compare as _compare  # noqa: E402,F401
from slobench.cli import emulate as _emulate  # noqa: E402,F401  (registers the verb)
from slobench.cli import fit as _fit  # noqa: E402,F401
from slobench.cli import generate as _generate  # noqa: E402,F401
from slobench.cli import plan as _plan  # noqa: E402,F401
from slobench.cli import report as _report  # noqa: E402,F401
from slobench.cli import run as _run  # noqa: E402,F401
from slobench.cli import runs as _runs  # noqa: E402,F401  (runs, export)
from slobench.cli import simulate as _simulate  # noqa: E402,F401
from slobench.cli import study as _study  # noqa: E402,F401
from slobench.cli import sweep as _sweep  # noqa: E402,F401
from slobench.cli import workload as _workload  # noqa: E402,F401

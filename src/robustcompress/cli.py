"""The ``robustcompress`` command. Thin: parses arguments and calls the library.

Sub-commands live in :mod:`robustcompress.commands` (one module per area, each exposing
``register(app)``; every module there is picked up). User errors (:class:`robustcompress.errors.UserInputError`) are printed as one
line without a traceback and exit with status 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

from robustcompress.errors import UserInputError


app = typer.Typer(
    name="robustcompress",
    help=(
        "Make neural networks small *and* adversarially robust, and measure honestly how robust "
        "they are.\n\nStart with `robustcompress demo`, then `robustcompress run CONFIG.yaml`. "
        "Every command has --help."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Make neural networks small *and* adversarially robust, and measure how robust they are."""


def _register_commands() -> None:
    """Every module in robustcompress.commands adds its sub-commands (sorted for stable help)."""
    import pkgutil

    import robustcompress.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        importlib.import_module(f"robustcompress.commands.{info.name}").register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status instead of raising for user errors."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except UserInputError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        return 2
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work is saved, re-run the same command to resume",
                    fg="yellow", err=True)
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # usage errors, Exit and Abort of typer's bundled click
        if type(e).__name__ == "Abort":
            return 130
        if type(e).__name__ == "Exit":
            return int(getattr(e, "exit_code", 0))
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return int(e.exit_code)
        raise
    return int(rv) if isinstance(rv, int) else 0


@app.command("version")
def version() -> None:
    """Print the library and torch versions."""
    import torch

    from robustcompress import __version__

    typer.echo(f"robustcompress {__version__} (torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    sys.exit(main())

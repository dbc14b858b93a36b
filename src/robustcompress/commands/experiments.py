"""CLI commands: experiments (see robustcompress.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass

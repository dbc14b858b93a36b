"""CLI commands: data (see robustcompress.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass

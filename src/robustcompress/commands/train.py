"""CLI commands: train (see robustcompress.cli)."""

import typer


def register(app: typer.Typer) -> None:
    pass

"""Device selection shared by the CLI and the library (``auto`` | ``cpu`` | ``cuda[:N]``)."""

from __future__ import annotations

import torch

from robustcompress.errors import UserInputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError(
                "--device cuda was asked for but no CUDA GPU is visible to torch; "
                "use --device cpu (or auto)"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserInputError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")

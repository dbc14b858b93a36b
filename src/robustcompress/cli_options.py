"""The CLI's one vocabulary: every command spells a shared concept with the same flag, help
and default (``--out`` is a run folder, ``--limit`` the number of evaluation points, ``--mc`` /
``--eot`` the draws of a stochastic model), and renamed flags keep working as hidden aliases."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from robustcompress.errors import UserInputError

DATA_DIR_HELP = "Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."
DEVICE_HELP = "auto | cpu | cuda[:N]."
OUT_HELP = "Run folder; the model is written as OUT/model (.safetensors + .json)"
LIMIT_HELP = "Evaluate on N test points, a class-stratified subset"
MC_HELP = ("Draws averaged per prediction of a stochastic model (default 20 for one attack, "
           "100 in the adaptive evaluation; deterministic models use 1)")
EOT_HELP = "EOT draws averaged per gradient of a stochastic model (default 20)"
DATA_ON_DEVICE_HELP = ("auto | true | false: keep the training split on the training device and "
                       "gather (and augment) batches there; auto = on a CUDA GPU when it takes "
                       "at most half its free memory, true = always (an error if it does not "
                       "fit), false = copy every batch from the host. Same results either way")


def out_option(default: Any = ..., extra: str = "") -> Any:
    """``--out``: the run folder of every command that writes something."""
    return typer.Option(default, "--out", help=f"{OUT_HELP}{'; ' + extra if extra else ''}.")


def limit_option(default: Optional[int], extra: str = "") -> Any:
    """``--limit``: how many test points an evaluation uses."""
    return typer.Option(default, "--limit", min=0, help=f"{LIMIT_HELP}{extra}.")


def data_on_device_option() -> Any:
    """``--data-on-device``: TrainConfig.data_on_device (validated by TrainConfig)."""
    return typer.Option("auto", "--data-on-device", help=f"{DATA_ON_DEVICE_HELP}.")


def deprecated(old: str, new: str) -> Any:
    """A hidden alias ``old`` of ``new``; using it prints one line naming the new flag."""
    def warn(value):
        if value not in (None, [], False):
            typer.secho(f"{old} is deprecated; use {new}", err=True, fg="yellow")
        return value
    return typer.Option(None, old, hidden=True, callback=warn)


def given(new: Any, old: Any) -> Any:
    """The value of a renamed flag: the deprecated spelling when it was used, else the new one."""
    return new if old is None else old


def _value(text: str) -> Any:
    """``--param k=v`` values: JSON where it parses (numbers, true/false, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_params(items: Optional[list[str]]) -> dict[str, Any]:
    """``["steps=40", "loss=dlr"]`` -> ``{"steps": 40, "loss": "dlr"}``."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserInputError(f"--param expects key=value (e.g. --param decay=0.9), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _value(v.strip())
    return out


def check_params(kind: str, name: str, problems: list[str], listing: str) -> None:
    """The one message of rejected ``--param`` values: what, why, and where the names are listed."""
    if problems:
        raise UserInputError(f"invalid --param for {kind} {name!r}: {'; '.join(problems)} "
                             f"(see `robustcompress {listing}`)")

"""Where datasets live: the data root search order.

Order: the ``--data-dir`` flag (or ``root=`` argument), then ``$ROBUSTCOMPRESS_DATA``, then
``./data``, then ``../shared/data`` relative to the working directory, then ``../shared/data``
next to this repository's checkout. An explicit flag or environment variable is used alone (a typo
there must not silently fall back to another copy of the data); the default places are searched in
order and the first one that holds the wanted dataset wins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

from robustcompress.errors import DataError

ENV_VAR = "ROBUSTCOMPRESS_DATA"
PathLike = Union[str, "os.PathLike[str]"]

# src/robustcompress/data/roots.py -> parents[3] is the repository checkout.
_REPO = Path(__file__).resolve().parents[3]


def default_root_candidates() -> list[Path]:
    """The default places, in search order (``./data``, ``../shared/data``, repo's ``../shared/data``)."""
    cwd = Path.cwd()
    out: list[Path] = []
    for p in (cwd / "data", cwd.parent / "shared" / "data", _REPO.parent / "shared" / "data"):
        rp = p.resolve()
        if rp not in out:
            out.append(rp)
    return out


def root_candidates(flag: Optional[PathLike] = None) -> tuple[list[Path], str]:
    """The roots to search and where they came from (``"flag"``, ``"env"`` or ``"default"``)."""
    if flag is not None and str(flag) != "":
        return [Path(flag).expanduser()], "flag"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return [Path(env).expanduser()], "env"
    return default_root_candidates(), "default"


def _how_to_fix() -> str:
    return (f"pass --data-dir DIR (root= in Python) or set {ENV_VAR}=DIR to the folder that holds "
            "the datasets (e.g. ../shared/data), or download one with "
            "`robustcompress data download NAME --data-dir DIR`")


def resolve_data_root(flag: Optional[PathLike] = None,
                      contains: Optional[Callable[[Path], bool]] = None) -> Path:
    """Return the data root to use.

    Parameters
    ----------
    flag : explicit root (``--data-dir`` / ``root=``); used alone when given.
    contains : optional predicate; among the *default* places, the first root for which it is
        true is returned (so ``./data`` holding only CIFAR does not hide MNIST in ../shared/data).

    Raises
    ------
    DataError
        When an explicit root does not exist, or no default place exists; the message lists every
        folder searched and how to point robustcompress at the data.
    """
    cands, origin = root_candidates(flag)
    if origin != "default":
        root = cands[0]
        if not root.is_dir():
            src = "--data-dir" if origin == "flag" else f"${ENV_VAR}"
            raise DataError(f"data root {root} (from {src}) is not a directory; {_how_to_fix()}")
        return root
    existing = [c for c in cands if c.is_dir()]
    if contains is not None:
        for c in existing:
            if contains(c):
                return c
    if existing:
        return existing[0]
    searched = ", ".join(str(c) for c in cands)
    raise DataError(f"no data root found (searched --data-dir, ${ENV_VAR}, {searched}); "
                    f"{_how_to_fix()}")

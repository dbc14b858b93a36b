"""Grid expansion of an experiment config: the variants a defense's ``grid:`` makes, their labels,
the fully expanded config (``config show``) and the short stable hashes of run keys."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustcompress.experiments.config import ExperimentConfig


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a ``{param: [values]}`` grid, in key order."""
    if not grid:
        return []
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def _fmt(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if not isinstance(v, str) else v


def variant_label(name: str, combo: dict[str, Any]) -> str:
    if not combo:
        return name
    return name + "[" + ",".join(f"{k}={_fmt(v)}" for k, v in combo.items()) + "]"


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short sha256 of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def expanded_dict(cfg: ExperimentConfig) -> dict:
    """The fully expanded configuration (what ``config show`` prints)."""
    d = cfg.model_dump(mode="json")
    from robustcompress.training import TrainConfig

    d["training"] = TrainConfig(**cfg.training).model_dump(mode="json")
    variants = []
    for dfn in cfg.defenses:
        from robustcompress.defenses import get_defense

        spec = get_defense(dfn.method)
        for combo in expand_grid(dfn.grid) or [{}]:
            params = spec.Params(**{**dfn.params, **combo}).model_dump(mode="json")
            variants.append({"variant": variant_label(dfn.name, combo), "method": dfn.method,
                             "base": dfn.base, "params": params})
    d["variants"] = variants
    return d

"""Checkpoints as ``NAME.safetensors`` (tensors) + ``NAME.json`` (everything else); never pickle.

A model checkpoint records how to rebuild the architecture before loading weights: the spec
(``model.robustcompress_spec``: zoo model name or a user's factory with its declared input, kwargs,
dataset info) and the defenses applied
(``model.robustcompress_defenses``: ``[{"name", "params"}]``), rebuilt with
``get_defense(name).structure(model, Params(**params))``.

Files are written to a temporary name and moved into place, so a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robustcompress.errors import DataError, UserInputError

FORMAT = "robustcompress-checkpoint"
PathLike = Union[str, Path]


def checkpoint_stem(path: PathLike) -> Path:
    """``runs/x/model`` for ``runs/x/model``, ``runs/x/model.json``, ``runs/x/model.safetensors``
    or the run folder ``runs/x`` (which holds ``model.*``)."""
    p = Path(path)
    if p.is_dir():
        return p / "model"
    if p.suffix in (".json", ".safetensors"):
        return p.with_suffix("")
    return p


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path,
                        metadata: Optional[dict[str, str]] = None) -> None:
    """``safetensors.save_file`` through a temporary file (tensors copied to contiguous CPU)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(flat, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_save_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable).encode())


def _jsonable(o: Any):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (Path, torch.device, torch.dtype)):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_checkpoint(model: nn.Module, path: PathLike, meta: Optional[dict] = None) -> Path:
    """Write ``path.safetensors`` (the state dict) and ``path.json`` (spec, defenses, ``meta``).

    ``meta`` may hold ``config``, ``metrics``, ``dataset`` or anything JSON-serialisable.
    Returns the stem. The model must come from :func:`robustcompress.models.build_model` or
    :func:`robustcompress.models.build_foreign` (it carries ``robustcompress_spec``), otherwise it
    could not be rebuilt.
    """
    spec = getattr(model, "robustcompress_spec", None)
    if spec is None:
        raise UserInputError("this model has no robustcompress_spec, so its checkpoint could not be "
                             "rebuilt; build it with robustcompress.models.build_model(name, info), or "
                             "build_foreign(factory, info, bounds=...) for your own model")
    stem = checkpoint_stem(path)
    from robustcompress import __version__

    doc = {
        "format": FORMAT,
        "format_version": 1,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "spec": spec,
        "defenses": list(getattr(model, "robustcompress_defenses", []) or []),
        **(meta or {}),
    }
    atomic_save_tensors(dict(model.state_dict()), stem.with_suffix(".safetensors"),
                        metadata={"format": FORMAT})
    atomic_save_json(doc, stem.with_suffix(".json"))
    return stem


def read_checkpoint_meta(path: PathLike) -> dict:
    """The JSON half of a checkpoint (clear ``DataError`` if missing or not ours)."""
    stem = checkpoint_stem(path)
    js = stem.with_suffix(".json")
    if not js.is_file():
        raise DataError(f"checkpoint {js} not found; pass the path written by `robustcompress "
                        "train --out DIR` (DIR or DIR/model)")
    try:
        doc = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"checkpoint metadata {js} is not valid JSON ({e}); re-create it") from None
    if doc.get("format") != FORMAT:
        raise DataError(f"{js} is not a robustcompress checkpoint (format={doc.get('format')!r})")
    return doc


def rebuild_model(doc: dict) -> nn.Module:
    """Architecture of a checkpoint without weights: zoo or foreign model (see
    :func:`robustcompress.models.build_from_spec`), then each defense's structure."""
    from robustcompress.models import build_from_spec

    model = build_from_spec(doc["spec"])
    defenses = list(doc.get("defenses", []))
    if defenses:
        from robustcompress.defenses.base import get_defense

        for d in defenses:
            spec_d = get_defense(d["name"])
            model = spec_d.structure(model, spec_d.Params(**(d.get("params") or {})))
        model.robustcompress_defenses = defenses
    return model


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights (strict).

    The returned model is in eval mode and carries the JSON as ``model.robustcompress_meta``.
    """
    stem = checkpoint_stem(path)
    doc = read_checkpoint_meta(stem)
    st = stem.with_suffix(".safetensors")
    if not st.is_file():
        raise DataError(f"checkpoint weights {st} not found next to {stem.with_suffix('.json')}")
    try:
        state = load_file(str(st), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise DataError(f"checkpoint weights {st} are unreadable ({e}); re-create the checkpoint") from None
    model = rebuild_model(doc)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(f"checkpoint {st} does not match the architecture recorded in its JSON: "
                        f"{str(e).splitlines()[0]}; it was written by another version") from None
    model.robustcompress_meta = doc
    return model.to(device).eval()

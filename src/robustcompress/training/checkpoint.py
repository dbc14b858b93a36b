"""Checkpoints as ``NAME.safetensors`` (tensors) + ``NAME.json`` (everything else); never pickle.

A model checkpoint records how to rebuild the architecture before loading weights: the spec
(``model.robustcompress_spec``: zoo model name or a user's factory with its declared input, kwargs,
dataset info) and the parts later packages own, each registered here with
:func:`register_checkpoint_part` (``"defenses"``: the defense record ``[{"name", "params"}]``,
registered by :mod:`robustcompress.defenses.base`, which replays each defense's structure). The
packages named in ``robustcompress.CHECKPOINT_PLUGINS`` are imported on first use, so a checkpoint
loads without its caller importing them, and this package never imports them by name.

Files are written to a temporary name, flushed, and moved into place, so a crash never leaves a
half-written checkpoint under the final name; a failed write (full disk, read-only folder) is one
``DataError`` naming the file. The JSON records the sha256 and size of the ``.safetensors`` file
(``weights_sha256``, ``weights_bytes``); loading verifies them and refuses NaN/inf weights.
Checkpoints written before the hash was recorded still load, unverified.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from safetensors.torch import load_file, save
from torch import nn

from robustcompress.errors import DataError, UserInputError

FORMAT = "robustcompress-checkpoint"
PathLike = Union[str, Path]


@dataclass(frozen=True)
class CheckpointPart:
    """A part of a checkpoint's JSON owned by a later package: ``dump(model)`` gives its JSON
    value, ``rebuild(model, value)`` turns the rebuilt base model into the saved architecture."""

    dump: Callable[[nn.Module], Any]
    rebuild: Callable[[nn.Module, Any], nn.Module]


#: Registry: JSON key -> its :class:`CheckpointPart`, filled by the owning packages.
CHECKPOINT_PARTS: dict[str, CheckpointPart] = {}


def register_checkpoint_part(key: str, dump: Callable[[nn.Module], Any],
                             rebuild: Callable[[nn.Module, Any], nn.Module]) -> None:
    """Let the package that owns ``key`` write and rebuild it (one owner per key)."""
    if key in CHECKPOINT_PARTS:
        raise RuntimeError(f"checkpoint part {key!r} registered twice")
    CHECKPOINT_PARTS[key] = CheckpointPart(dump, rebuild)


def checkpoint_parts() -> dict[str, CheckpointPart]:
    """The registered parts, after importing the packages that register them
    (``robustcompress.CHECKPOINT_PLUGINS``, named by the top-level package)."""
    import robustcompress

    for name in robustcompress.CHECKPOINT_PLUGINS:
        importlib.import_module(name)
    return CHECKPOINT_PARTS


def checkpoint_stem(path: PathLike) -> Path:
    """``runs/x/model`` for ``runs/x/model``, ``runs/x/model.json``, ``runs/x/model.safetensors``
    or the run folder ``runs/x`` (which holds ``model.*``)."""
    p = Path(path)
    if p.is_dir():
        return p / "model"
    if p.suffix in (".json", ".safetensors"):
        return p.with_suffix("")
    return p


def write_error(path: Path, e: OSError) -> DataError:
    """The one error of a failed write: the file, the system's reason and the fix."""
    reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free space or choose another --out"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable or choose another --out"
    else:
        fix = "check the folder or choose another --out"
    return DataError(f"cannot write {path}: {reason}; {fix}")


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _write_tmp(path: Path, data: bytes) -> Path:
    """``data`` in a temporary file beside ``path``, flushed to disk; nothing is left on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _discard(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    return tmp


def _commit(pairs: list[tuple[Path, Path]]) -> None:
    """Move each ``(tmp, final)`` into place; on failure the unmoved temporaries are removed."""
    for i, (tmp, path) in enumerate(pairs):
        try:
            os.replace(tmp, path)
        except OSError as e:
            for t, _ in pairs[i:]:
                _discard(t)
            raise write_error(path, e) from None
    try:  # make the renames durable too (POSIX; a folder cannot be opened on Windows)
        fd = os.open(pairs[-1][1].parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` through a temporary file and ``os.replace``; a failure (full disk, read-only
    folder) raises one ``DataError`` and leaves nothing under ``path``."""
    _commit([(_write_tmp(Path(path), data), Path(path))])


def _tensor_bytes(tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]]) -> bytes:
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save(flat, metadata=metadata)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path,
                        metadata: Optional[dict[str, str]] = None) -> str:
    """Safetensors file through a temporary file (tensors copied to contiguous CPU); returns its
    sha256. Failures as in :func:`atomic_write_bytes`."""
    data = _tensor_bytes(tensors, metadata)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=_jsonable).encode()


def atomic_save_json(obj: Any, path: Path) -> None:
    """JSON file (tensors, paths, pydantic models serialised), written as :func:`atomic_write_bytes`."""
    atomic_write_bytes(Path(path), _json_bytes(obj))


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

    st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    blob = _tensor_bytes(dict(model.state_dict()), {"format": FORMAT})
    doc = {
        "format": FORMAT,
        "format_version": 1,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "spec": spec,
        **{key: part.dump(model) for key, part in checkpoint_parts().items()},
        **(meta or {}),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_bytes": len(blob),
    }
    pairs = [(_write_tmp(st, blob), st)]
    try:  # both files are complete on disk before either final name changes
        pairs.append((_write_tmp(js, _json_bytes(doc)), js))
    except BaseException:
        _discard(pairs[0][0])
        raise
    _commit(pairs)
    return stem


def _not_ours(js: PathLike, problem: str) -> DataError:
    return DataError(f"checkpoint metadata {js} {problem}; it was not written by robustcompress "
                     "(save_checkpoint / `robustcompress train`) or was edited: re-create it, or "
                     "pass the path written by `robustcompress train --out DIR` (DIR or DIR/model)")


def _check_doc(js: PathLike, doc: Any) -> None:
    """Refuse a JSON document that is not a checkpoint's, naming what is wrong."""
    if not isinstance(doc, dict):
        raise _not_ours(js, f"holds a JSON {type(doc).__name__}, not a checkpoint's object")
    if doc.get("format") != FORMAT:
        raise _not_ours(js, f"is not a robustcompress checkpoint (format={doc.get('format')!r})")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise _not_ours(js, "has no model spec (the 'spec' object that says how to rebuild it)")
    if not isinstance(spec.get("info"), dict):
        raise _not_ours(js, "has a model spec without its dataset 'info' object")
    if not isinstance(spec.get("model"), str) and "factory" not in spec:
        raise _not_ours(js, "has a model spec naming neither a zoo 'model' nor a 'factory'")
    defenses = doc.get("defenses", [])
    if not isinstance(defenses, list) or not all(
            isinstance(d, dict) and isinstance(d.get("name"), str) for d in defenses):
        raise _not_ours(js, "has 'defenses' that are not a list of {name, params} objects")


def read_checkpoint_meta(path: PathLike) -> dict:
    """The JSON half of a checkpoint (clear ``DataError`` if missing, not JSON or not ours)."""
    stem = checkpoint_stem(path)
    js = stem.with_suffix(".json")
    if not js.is_file():
        raise DataError(f"checkpoint {js} not found; pass the path written by `robustcompress "
                        "train --out DIR` (DIR or DIR/model)")
    try:
        doc = json.loads(js.read_bytes())
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for a binary file
        raise DataError(f"checkpoint metadata {js} is not valid JSON text ({str(e)[:120]}); it is "
                        "not a checkpoint's .json or was damaged: re-create it") from None
    except OSError as e:
        raise DataError(f"cannot read checkpoint metadata {js}: {e}; check its permissions") from None
    _check_doc(js, doc)
    return doc


def rebuild_model(doc: dict, source: Optional[PathLike] = None) -> nn.Module:
    """Architecture of a checkpoint without weights: zoo or foreign model (see
    :func:`robustcompress.models.build_from_spec`), then each registered part's rebuild (the
    defenses' structures).

    ``source`` (the JSON file) only names the file in errors: a spec that cannot be rebuilt (unknown
    model or defense, bad arguments) raises one ``DataError``.
    """
    from robustcompress.models import build_from_spec

    js = source if source is not None else "(given as a dict)"
    _check_doc(js, doc)
    try:
        model = build_from_spec(doc["spec"])
        for key, part in checkpoint_parts().items():
            if doc.get(key):
                model = part.rebuild(model, doc[key])
    except UserInputError as e:  # its message names the fix (unknown model, missing factory)
        raise DataError(f"checkpoint {js} cannot be rebuilt: {e}") from None
    except (TypeError, KeyError) as e:
        raise DataError(f"checkpoint {js} cannot be rebuilt ({type(e).__name__}: {e}); it was "
                        "written by another version of robustcompress or edited: re-create it") from None
    return model


def weights_mismatch(st: Path, doc: dict) -> Optional[str]:
    """How the weights differ from the size and sha256 recorded in the JSON, or None when they
    match. Checkpoints written before the hash was recorded (no ``weights_sha256``) are not
    checked and still load: back-compatibility."""
    want = doc.get("weights_sha256")
    if want is None:
        return None
    size, recorded = st.stat().st_size, doc.get("weights_bytes")
    if recorded is not None and size != recorded:
        return f"{size} bytes != recorded {recorded}"
    from robustcompress.data.integrity import file_sha256

    sha = file_sha256(st)
    return None if sha == want else f"sha256 {sha} != recorded {want}"


def check_finite(st: PathLike, state: dict[str, torch.Tensor]) -> None:
    """Refuse floating-point tensors holding NaN or inf, naming them."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        names = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise DataError(f"checkpoint weights {st} hold NaN or inf values in {names}; the training "
                        "that wrote them diverged (lower the learning rate) or the file was "
                        "edited: re-create it from a good run")


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights (strict).

    The weights must match the sha256 recorded in the JSON (checkpoints from before the hash was
    recorded load unchecked) and hold no NaN/inf; any problem raises one ``DataError``. The
    returned model is in eval mode and carries the JSON as ``model.robustcompress_meta``.
    """
    stem = checkpoint_stem(path)
    doc = read_checkpoint_meta(stem)
    st = stem.with_suffix(".safetensors")
    if not st.is_file():
        raise DataError(f"checkpoint weights {st} not found next to {stem.with_suffix('.json')}")
    mismatch = weights_mismatch(st, doc)
    modified = (f"were modified or corrupted after they were written ({mismatch}); re-create it "
                "(train again, or copy the checkpoint folder again)")
    try:
        state = load_file(str(st), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        why = f": they {modified}" if mismatch else "; re-create the checkpoint"
        raise DataError(f"checkpoint weights {st} are unreadable ({e}){why}") from None
    if mismatch:
        raise DataError(f"checkpoint weights {st} {modified}")
    check_finite(st, state)
    model = rebuild_model(doc, source=stem.with_suffix(".json"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(f"checkpoint {st} does not match the architecture recorded in its JSON: "
                        f"{str(e).splitlines()[0]}; it was written by another version") from None
    model.robustcompress_meta = doc
    return model.to(device).eval()

"""Bring your own model: a factory function, optional weights, and a declared input space.

A *foreign* model is any ``nn.Module`` built by a user's function, named as
``"package.module:function"`` or ``"path/to/file.py:function"``. The evaluator never guesses
its input box: :func:`build_foreign` needs ``bounds`` (equal to the dataset's declared box, so eps
is in the right units) and, when the model expects normalised inputs, ``mean``/``std``, which
:func:`with_normalization` puts inside the model. Weights load from safetensors or a plain
``torch.save(model.state_dict())`` file, never by unpickling objects.

``model.robustcompress_spec`` of a foreign model is
``{"factory", "model_kwargs", "info", "input": {"mean", "std", "bounds"}}``; checkpoints store the
weights, and :func:`build_from_spec` rebuilds either a zoo or a foreign architecture from a spec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import DataError, UserInputError
from robustcompress.models.registry import Normalize

PathLike = Union[str, Path]
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FORMAT = ("write 'package.module:function' or 'path/to/file.py:function', "
           "e.g. 'my_nets.py:resnet18'")


# ---------------------------------------------------------------------------------- factories
def _split_spec(spec: str) -> tuple[str, str, bool]:
    """``(target, attribute, is_file)`` of a factory string; UserInputError if malformed."""
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise UserInputError(f"factory {spec!r} has no ':function' part; {_FORMAT}")
    target, attr = (s.strip() for s in spec.rsplit(":", 1))
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not target or not _DOTTED.match(attr) or not (is_file or _DOTTED.match(target)):
        raise UserInputError(f"factory {spec!r} is malformed; {_FORMAT}")
    return target, attr, is_file


def resolve_factory(spec: str, base_dir: Optional[PathLike] = None) -> str:
    """The factory string with a file path made absolute (relative to ``base_dir`` or cwd);
    module factories are returned unchanged. What the spec of a checkpoint records."""
    target, attr, is_file = _split_spec(spec)
    if not is_file:
        return f"{target}:{attr}"
    return f"{user_path(target, base_dir)}:{attr}"


def user_path(p: PathLike, base_dir: Optional[PathLike] = None) -> Path:
    """A user's file path made absolute: relative to ``base_dir`` (a config's folder, taken as
    written: ``configs/`` may be a link), else to the current folder if only it has the file."""
    path = Path(p).expanduser()
    if path.is_absolute():
        return path
    first = Path(os.path.normpath(Path(os.path.abspath(base_dir or Path.cwd())) / path))
    second = Path(os.path.abspath(path))
    return second if not first.exists() and second.exists() else first


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise UserInputError(f"factory {spec!r}: file {path} not found; paths are relative to the "
                             "config's folder (or the current folder on the command line)")
    name = f"robustcompress_factory_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:  # one module object per file: rebuilding twice gives the same classes
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module


def _import_module(target: str, base_dir: Optional[PathLike]):
    folder = str(Path(base_dir or Path.cwd()).resolve())
    sys.path.insert(0, folder)  # `my_nets:fn` next to the config works like `python -m`
    try:
        return importlib.import_module(target)
    finally:
        sys.path.remove(folder)


def load_factory(spec: str, base_dir: Optional[PathLike] = None) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` or ``"path/to/file.py:function"``.

    A file path is relative to ``base_dir`` (e.g. the config's folder) or the current folder; a
    module is imported with ``base_dir`` (or the current folder) on ``sys.path``.
    Raises :class:`UserInputError` for a malformed string, an import that fails (with the
    underlying error), a missing attribute or one that is not callable.
    """
    target, attr, is_file = _split_spec(spec)
    try:
        if is_file:
            module = _import_file(Path(resolve_factory(spec, base_dir).rsplit(":", 1)[0]), spec)
        else:
            module = _import_module(target, base_dir)
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the user's module is reported as one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserInputError(f"factory {spec!r}: importing {target!r} failed ({type(e).__name__}: "
                             f"{first}); fix that module, install it, or point at a file with "
                             "'path/to/file.py:function'") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise UserInputError(f"factory {spec!r}: {target!r} has no attribute {attr!r}; its callables "
                                 f"are: {', '.join(public[:12]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserInputError(f"factory {spec!r}: {attr!r} is a {type(obj).__name__}, not a function or "
                             "class; point at a function that returns an nn.Module")
    return obj


def call_factory(spec: str, kwargs: Optional[dict] = None,
                 base_dir: Optional[PathLike] = None) -> nn.Module:
    """``load_factory(spec)(**kwargs)``, checked to return an ``nn.Module``."""
    fn = load_factory(spec, base_dir)
    try:
        model = fn(**dict(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - the user's code failed; say where and with what
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserInputError(f"factory {spec!r} failed when called with {dict(kwargs or {})} "
                             f"({type(e).__name__}: {first}); fix the factory or model.kwargs") from None
    if not isinstance(model, nn.Module):
        raise UserInputError(f"factory {spec!r} returned a {type(model).__name__}, not a torch "
                             "nn.Module; make it return the model (e.g. `return MyNet()`)")
    return model


# ---------------------------------------------------------------------------------- weights
def _read_state(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors has its own error types
            raise DataError(f"weights {path} are not a readable safetensors file ({e}); re-save "
                            "them with safetensors.torch.save_file(model.state_dict(), path)") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        import pickle

        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            what = f"e.g. {found.group(1)}" if found else "objects besides tensors"
            raise DataError(f"weights {path} are not a plain state dict: the file holds Python objects "
                            f"({what}) that only full unpickling loads, which can run code; "
                            "re-save it with torch.save(model.state_dict(), path)") from None
        except Exception as e:  # noqa: BLE001 - truncated/corrupt files
            raise DataError(f"weights {path} are unreadable ({type(e).__name__}: {e}); re-save them "
                            "with torch.save(model.state_dict(), path)") from None
    raise UserInputError(f"weights {path}: unknown file type {path.suffix!r}; use .safetensors, or "
                         ".pt/.pth/.bin written by torch.save(model.state_dict(), path)")


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj: Any, path: PathLike = "<weights>") -> dict[str, torch.Tensor]:
    """A plain state dict from ``obj``: itself, or the one under ``state_dict`` / ``model`` /
    ``model_state_dict``; a uniform ``module.`` (or ``_orig_mod.``) prefix is stripped."""
    state = obj
    if not _is_state(obj) and isinstance(obj, dict):
        state = next((obj[k] for k in WRAPPER_KEYS if _is_state(obj.get(k))), obj)
    if not _is_state(state):
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else []
        raise DataError(f"weights {path} hold a {type(obj).__name__}"
                        + (f" with keys {keys}" if keys else "")
                        + f", not a state dict of tensors (nor one under {', '.join(WRAPPER_KEYS)}); "
                        "re-save it with torch.save(model.state_dict(), path)")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> Optional[str]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{what} ({len(ks)}): {', '.join(ks[:5])}{', ...' if len(ks) > 5 else ''}"
             for what, ks in (("missing keys", missing), ("unexpected keys", unexpected),
                              ("shape mismatches (file vs model)", shapes)) if ks]
    return "; ".join(parts) or None


def load_weights(model: nn.Module, path: PathLike) -> nn.Module:
    """Load a state dict file into ``model`` (strict) and return it.

    ``.safetensors`` or ``.pt/.pth/.bin`` read with ``torch.load(weights_only=True)`` only. The
    file may hold the state dict itself or under ``state_dict``/``model``/``model_state_dict``;
    a ``module.`` prefix is stripped. Refuses (DataError) objects that need unpickling, another
    architecture's keys or shapes, and NaN/inf weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"weights file {path} not found; check the path (relative paths start at "
                        "the config's folder, or the current folder on the command line)")
    state = unwrap_state_dict(_read_state(path), path)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise DataError(f"weights {path} contain NaN or inf in {len(bad)} tensor(s): "
                        f"{', '.join(bad[:5])}; the training that wrote them diverged, use another file")
    problem = _mismatch(model, state)
    if problem:
        raise DataError(f"weights {path} do not fit the factory's model: {problem}; build the "
                        "architecture they were saved from (factory and model kwargs, e.g. "
                        "num_classes) or pass the weights of this architecture")
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------- input space
class Normalized(nn.Module):
    """``model(normalize(x))``: takes inputs in ``input_bounds``; the inner model's state-dict keys
    are kept under ``model.`` (``normalize`` has no persistent state)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 bounds: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.input_bounds = (float(bounds[0]), float(bounds[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float],
                       bounds: Sequence[float] = (0.0, 1.0)) -> Normalized:
    """Wrap ``model`` so it takes inputs in ``bounds`` and sees ``(x - mean) / std``."""
    return Normalized(model, mean, std, bounds)


def _check_input(info: DatasetInfo, mean, std, bounds) -> None:
    lo, hi = info.bounds
    if bounds is None:
        raise UserInputError(
            f"a foreign model must declare the input box it takes; the evaluator never guesses it. "
            f"Declare `input: {{bounds: [{lo:g}, {hi:g}]}}` (the {info.name} box; --bounds {lo:g} "
            f"{hi:g} on the command line) and, if the model expects normalised inputs, mean/std")
    if len(bounds) != 2 or not all(math.isclose(float(a), float(b)) for a, b in zip(bounds, info.bounds)):
        raise UserInputError(
            f"the model declares inputs in {list(bounds)} but {info.name} yields inputs in "
            f"[{lo:g}, {hi:g}]; eps is measured in the dataset's units, so attacks would use the "
            f"wrong scale. Declare bounds [{lo:g}, {hi:g}] and put any rescaling in mean/std "
            f"(a model expecting 0-255 pixels: mean 0, std {1 / 255:.6g})")
    if (mean is None) != (std is None):
        raise UserInputError("declare both mean and std of the model's input normalisation, or neither")
    for name, vals in (("mean", mean), ("std", std)):
        if vals is not None and len(vals) not in (1, info.channels):
            raise UserInputError(f"input {name} has {len(vals)} values but {info.name} has "
                                 f"{info.channels} channel(s); give one value per channel (or one)")
    if std is not None and any(float(s) <= 0 for s in std):
        raise UserInputError(f"input std {list(std)} must be positive")


def _check_forward(model: nn.Module, info: DatasetInfo, factory: str) -> None:
    x = torch.zeros(2, *info.shape)
    was_training = model.training
    model.eval()  # no BatchNorm statistics touched by the probe
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - wrong input shape inside the user's model
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserInputError(f"factory {factory!r}: the model does not accept {info.name} inputs of "
                             f"shape [B, {', '.join(map(str, info.shape))}] ({type(e).__name__}: "
                             f"{first}); build it for this input (channels, size) or use its dataset") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, info.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserInputError(f"factory {factory!r}: the model outputs {got} for a batch of 2, but "
                             f"{info.name} needs logits of shape (2, {info.num_classes}) "
                             f"({info.num_classes} classes); build it with that many outputs "
                             "(e.g. model kwargs num_classes) and return plain logits")


def build_foreign(factory: str, info: DatasetInfo, *, kwargs: Optional[dict] = None,
                  weights: Optional[PathLike] = None, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, bounds: Optional[Sequence[float]] = None,
                  base_dir: Optional[PathLike] = None) -> nn.Module:
    """Build a user's model for dataset ``info`` with a declared input space.

    ``factory(**kwargs)`` is built, ``weights`` loaded into it (see :func:`load_weights`), and,
    when ``mean``/``std`` are given, wrapped by :func:`with_normalization` (its keys then live
    under ``model.``). ``bounds`` is required and must equal ``info.bounds``. One forward pass on
    a zero batch checks the input shape and the number of classes. The result carries
    ``robustcompress_spec`` (factory with an absolute file path, kwargs, info, input), so
    :func:`robustcompress.training.save_checkpoint` can store it.
    """
    _check_input(info, mean, std, bounds)
    resolved = resolve_factory(factory, base_dir)
    model = call_factory(resolved, kwargs, base_dir)
    if weights is not None:
        wpath = Path(weights).expanduser()
        load_weights(model, wpath if wpath.is_absolute() else Path(base_dir or Path.cwd()) / wpath)
    if mean is not None:
        model = with_normalization(model, mean, std, bounds)
    _check_forward(model, info, factory)
    model.robustcompress_spec = {
        "factory": resolved, "model_kwargs": dict(kwargs or {}), "info": info.to_dict(),
        "input": {"mean": None if mean is None else [float(m) for m in mean],
                  "std": None if std is None else [float(s) for s in std],
                  "bounds": [float(b) for b in bounds]},
    }
    return model


def build_from_spec(spec: dict) -> nn.Module:
    """The architecture (fresh weights) of a ``robustcompress_spec``: a zoo model
    (``{"model", ...}``) or a foreign one (``{"factory", ..., "input"}``)."""
    from robustcompress.models.registry import build_model

    info = DatasetInfo.from_dict(spec["info"])
    if "factory" not in spec:
        return build_model(spec["model"], info, **spec.get("model_kwargs", {}))
    inp = spec.get("input") or {}
    return build_foreign(spec["factory"], info, kwargs=spec.get("model_kwargs"),
                         mean=inp.get("mean"), std=inp.get("std"), bounds=inp.get("bounds"))

"""Your own arrays as a dataset: ``x_train, y_train, x_test, y_test`` in one ``.npz`` or
``.safetensors`` file (``load_dataset("tensors", root="data.npz", bounds=(0, 1))``).

Inputs must be floating point, finite and inside the declared box ``bounds`` (the evaluator never
guesses it: pass ``bounds`` or store a 2-value ``bounds`` array in the file); labels are integers
``0..num_classes-1`` (``num_classes`` defaults to the largest label + 1). Optional ``mean``/``std``
(per channel, used by zoo models' ``Normalize``) default to the training inputs' statistics. The
file is read without unpickling (``np.load(allow_pickle=False)``). Shape ``(C, H, W)`` is treated
as an image, ``(C, L)`` as audio, anything else as a plain vector.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from robustcompress.data.info import Dataset, DatasetInfo
from robustcompress.data.splits import channel_stats, check_limit, make_dataset
from robustcompress.errors import DataError, UserInputError

NAME = "tensors"
KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("bounds", "mean", "std")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` or ``.safetensors`` file, as numpy (DataError if unreadable)."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise DataError(f"{path} holds Python objects (pickled arrays); store plain numeric "
                            "arrays: np.savez(path, x_train=..., y_train=..., ...)") from None
        raise DataError(f"{path} is not a readable {path.suffix} file ({e}); re-create it") from None
    except Exception as e:  # noqa: BLE001 - zip/safetensors errors of a corrupt file
        raise DataError(f"{path} is not a readable {path.suffix} file ({type(e).__name__}: {e}); "
                        "re-create it") from None
    raise UserInputError(f"tensors dataset {path}: unknown file type {path.suffix!r}; use .npz "
                         "(np.savez) or .safetensors with x_train, y_train, x_test, y_test")


def _declared(arrays: dict, key: str, given: Optional[Sequence[float]], path: Path):
    """A value declared by the caller, the file (a small array), or neither; both must agree."""
    stored = None if key not in arrays else tuple(float(v) for v in np.asarray(arrays[key]).ravel())
    if given is not None and stored is not None and not np.allclose(stored, [float(v) for v in given]):
        raise UserInputError(f"{path} stores {key} {list(stored)} but {list(given)} was declared; "
                             "remove one of them or make them agree")
    return tuple(float(v) for v in given) if given is not None else stored


def check_arrays(arrays: dict[str, np.ndarray], bounds: tuple[float, float],
                 num_classes: Optional[int], path: Path) -> int:
    """Validate keys, dtypes, lengths, finiteness, the box and the labels; return num_classes."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)} (found: {', '.join(sorted(arrays)) or 'none'});"
                        " store x_train, y_train, x_test, y_test")
    lo, hi = bounds
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{path}: x_{split} has dtype {x.dtype}; store float inputs already in the "
                            f"box [{lo:g}, {hi:g}] (e.g. uint8 images / 255)")
        if not (np.issubdtype(y.dtype, np.integer) and y.ndim == 1):
            raise DataError(f"{path}: y_{split} must be a 1-D integer array of class indices, got "
                            f"dtype {y.dtype} and shape {y.shape}")
        if x.ndim < 2 or len(x) != len(y) or len(y) == 0:
            raise DataError(f"{path}: x_{split} {x.shape} and y_{split} {y.shape} must hold the same "
                            "non-zero number of samples (x: [N, ...], y: [N])")
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DataError(f"{path}: x_{split} has {bad} NaN/inf value(s); clean the data")
        if float(x.min()) < lo or float(x.max()) > hi:
            raise DataError(f"{path}: x_{split} spans [{float(x.min()):g}, {float(x.max()):g}], outside the "
                            f"declared bounds [{lo:g}, {hi:g}]; declare the box the data lies in or "
                            "rescale the data (attacks clip to this box)")
        if int(y.min()) < 0:
            raise DataError(f"{path}: y_{split} has negative labels; use class indices 0..C-1")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train samples {arrays['x_train'].shape[1:]} and x_test samples "
                        f"{arrays['x_test'].shape[1:]} differ in shape")
    top = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    if num_classes is not None and top > num_classes:
        raise DataError(f"{path}: label {top - 1} is out of range for num_classes={num_classes}; "
                        "labels must be 0..num_classes-1")
    return int(num_classes or top)


def _check_bounds(bounds, path: Path) -> tuple[float, float]:
    if bounds is None:
        raise UserInputError(f"tensors dataset {path}: declare the box the inputs lie in (the "
                             "evaluator never guesses it): `dataset: {name: tensors, path: ..., "
                             "bounds: [0, 1]}` in a config, bounds=(0, 1) in Python, or a 2-value "
                             "`bounds` array stored in the file")
    if len(bounds) != 2 or not all(math.isfinite(b) for b in bounds) or bounds[0] >= bounds[1]:
        raise UserInputError(f"tensors dataset {path}: bounds {list(bounds)} must be two finite "
                             "numbers [low, high] with low < high")
    return float(bounds[0]), float(bounds[1])


def _modality(shape: tuple[int, ...]) -> str:
    return {3: "image", 2: "audio"}.get(len(shape), "vector")


def load(root=None, *, download: bool = False, cache_dir=None, train_limit: Optional[int] = None,
         test_limit: Optional[int] = None, bounds: Optional[Sequence[float]] = None,
         mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
         num_classes: Optional[int] = None) -> Dataset:
    """Load a tensors file: ``root`` is the ``.npz``/``.safetensors`` file itself.

    Parameters
    ----------
    root : the file (``--data-dir FILE`` on the command line, ``path:`` in a config).
    download, cache_dir : ignored (your own file has no download, and needs no cache).
    bounds : the input box; required here or as a ``bounds`` array in the file.
    mean, std : per-channel statistics for zoo models (default: from ``x_train``).
    num_classes : number of classes (default: the largest label + 1).
    """
    if root is None:
        raise UserInputError("the tensors dataset needs its file: load_dataset('tensors', "
                             "root='data.npz', bounds=(0, 1)), --data-dir data.npz, or `path:` in a config")
    path = Path(root).expanduser()
    if not path.is_file():
        raise DataError(f"tensors file {path} not found; pass the .npz/.safetensors file holding "
                        "x_train, y_train, x_test, y_test")
    train_limit, test_limit = check_limit("train_limit", train_limit), check_limit("test_limit", test_limit)
    arrays = read_arrays(path)
    box = _check_bounds(_declared(arrays, "bounds", bounds, path), path)
    n_classes = check_arrays(arrays, box, num_classes, path)
    shape = tuple(int(s) for s in arrays["x_train"].shape[1:])
    mean, std = _declared(arrays, "mean", mean, path), _declared(arrays, "std", std, path)
    if mean is None or std is None:
        stats = channel_stats(arrays["x_train"])
        mean, std = mean or stats[0], std or tuple(s if s > 0 else 1.0 for s in stats[1])
    info = DatasetInfo(name=NAME, shape=shape, num_classes=n_classes,
                       class_names=tuple(str(i) for i in range(n_classes)), bounds=box,
                       mean=tuple(mean), std=tuple(std), modality=_modality(shape),
                       note=f"user tensors from {path.name}")
    data = {k: arrays[k] for k in KEYS}
    return make_dataset(info, data, train_limit, test_limit,
                        extra={"source": str(path), "cache_hit": False})

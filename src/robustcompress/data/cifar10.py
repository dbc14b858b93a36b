"""CIFAR-10 (Krizhevsky 2009): 32x32 RGB images, 10 classes, 50,000 train / 10,000 test.

Two layouts are read:

* the canonical ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` folder
  (``data_batch_1..5``, ``test_batch``, ``batches.meta``). The batches are Python pickles; they are
  parsed by a restricted unpickler that only builds dicts, lists, strings, numbers and *inert
  stand-ins* for numpy arrays (raw bytes + shape + plain numeric dtype) and for latin-1
  ``_codecs.encode`` (how Python 3 protocol-2 pickles store bytes), so a malicious file cannot
  run code: any other global is refused with a DataError;
* an image-folder archive ``train/<class>/*.jpg``, ``test/<class>/...`` (folder or .tar/.tar.gz),
  such as ``../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz``. That copy is **lossy** (JPEG q75,
  4:2:0): :attr:`DatasetInfo.note` says so, and its results are not comparable to published
  CIFAR-10 numbers.

The canonical layout is preferred when both are present; ``source="jpeg"``/``"python"`` forces one.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Optional

import numpy as np

from robustcompress.data.archives import is_archive, iter_files, list_files
from robustcompress.data.cache import cache_key, get_or_build
from robustcompress.data.imagefolder import load_from
from robustcompress.data.info import Dataset, DatasetInfo
from robustcompress.data.sources import cache_dir_for, first_existing, fingerprint, locate
from robustcompress.data.splits import channel_stats, check_limit, make_dataset
from robustcompress.errors import DataError, UserInputError

NAME = "cifar10"
VERSION = 1
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PYTHON_PLACES = ("cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz", "cifar-10-batches-py",
                 "cifar10/cifar-10-batches-py", "CIFAR10/cifar-10-batches-py")
JPEG_PLACES = ("cifar10-jpeg/cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar10")
JPEG_NOTE = ("lossy JPEG (quality 75, 4:2:0) re-encoding of CIFAR-10, not bit-identical to the "
             "original: robustness numbers are not directly comparable to published CIFAR-10 results")
BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


# ---------------------------------------------------------------- restricted unpickling

class _ArrayStandIn:
    """What ``numpy.core.multiarray._reconstruct`` becomes: it records the state, runs nothing."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def to_numpy(self, where: str) -> np.ndarray:
        try:
            _, shape, dtype, fortran, raw = self.state
            arr = np.frombuffer(raw if isinstance(raw, bytes) else bytes(raw, "latin1"),
                                dtype=dtype.to_numpy())
            return arr.reshape(shape, order="F" if fortran else "C")
        except (TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{where}: unexpected array layout in the CIFAR-10 batch ({e})") from e


class _DtypeStandIn:
    """What ``numpy.dtype`` becomes: only plain integer/float type codes are accepted."""

    def __init__(self, code, *args):
        self.code = code.decode() if isinstance(code, bytes) else str(code)
        self.order = "|"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1:
            o = state[1]
            self.order = o.decode() if isinstance(o, bytes) else str(o)

    def to_numpy(self) -> np.dtype:
        if self.code not in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"):
            raise ValueError(f"dtype {self.code!r} not allowed")
        return np.dtype(("<" if self.order in ("|", "<", "=") else ">") + self.code)


def _latin1_encode(text, encoding="latin1"):
    """What ``_codecs.encode`` becomes: Python 3 protocol-2 pickles store bytes this way."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1":
        raise ValueError("only latin1 str -> bytes is allowed")
    return text.encode("latin1")


def _frombuffer(buf, dtype, shape, order):
    """What numpy's protocol-5 ``_frombuffer`` becomes (a copy of plain numeric data)."""
    if not isinstance(dtype, _DtypeStandIn):
        raise ValueError("unexpected dtype")
    return np.frombuffer(bytes(buf), dtype=dtype.to_numpy()).reshape(shape, order=order)


_ALLOWED = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "_reconstruct"): _ArrayStandIn,
    ("numpy._core.multiarray", "_reconstruct"): _ArrayStandIn,
    ("numpy", "ndarray"): object,
    ("numpy", "dtype"): _DtypeStandIn,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, where: str):
        super().__init__(f, encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"{self.where} asks to load {module}.{name}, which a CIFAR-10 batch "
                            "never does; refusing to read it (the file is not a genuine "
                            "cifar-10-batches-py pickle)") from None


def _plain(obj, where: str):
    """Decode bytes keys and turn array stand-ins into numpy arrays (recursively)."""
    if isinstance(obj, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _plain(v, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v, where) for v in obj]
    if isinstance(obj, _ArrayStandIn):
        return obj.to_numpy(where)
    return obj


def read_batch(data: bytes, where: str) -> dict:
    """Safely parse one ``cifar-10-batches-py`` pickle into a dict with str keys."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), where).load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                        "re-download it with `robustcompress data download cifar10`") from e
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR-10 batch (top level is {type(obj).__name__})")
    return _plain(obj, where)


def decode_python(source: Path) -> tuple[dict, dict]:
    """Arrays from the canonical batches (folder or archive)."""
    names = {n.split("/")[-1]: n for n in list_files(source) if n.split("/")[-1] in BATCHES}
    missing = [b for b in BATCHES if b not in names]
    if missing:
        raise DataError(f"{source} lacks CIFAR-10 batches {missing}; re-download it with "
                        "`robustcompress data download cifar10`")
    batches = {n.split("/")[-1]: read_batch(d, f"{source}:{n}")
               for n, d in iter_files(source, names.values())}
    xs, ys = {}, {}
    for split, keys in (("train", BATCHES[:5]), ("test", BATCHES[5:])):
        parts = [batches[k] for k in keys]
        try:
            x = np.concatenate([np.asarray(p["data"], np.uint8).reshape(-1, 3, 32, 32) for p in parts])
            y = np.concatenate([np.asarray(p["labels"], np.int64) for p in parts])
        except (KeyError, ValueError) as e:
            raise DataError(f"{source}: CIFAR-10 batch without the expected data/labels ({e})") from e
        xs[split], ys[split] = x, y
    arrays = {"x_train": xs["train"], "y_train": ys["train"], "x_test": xs["test"], "y_test": ys["test"]}
    mean, std = channel_stats(arrays["x_train"])
    return arrays, {"class_names": list(CLASSES), "mean": mean, "std": std}


def _has_batches(p: Path) -> bool:
    return (p.is_dir() and (p / "data_batch_1").is_file()) or is_archive(p)


def _has_jpeg_layout(p: Path) -> bool:
    return is_archive(p) or (p.is_dir() and (p / "train").is_dir() and (p / "test").is_dir())


def find(root: Path, source: str = "auto") -> Optional[tuple[str, Path]]:
    """``("python", path)`` or ``("jpeg", path)`` under ``root``, canonical first; None if absent."""
    if source in ("auto", "python"):
        p = first_existing(root, PYTHON_PLACES, _has_batches)
        if p is not None:
            return "python", p
    if source in ("auto", "jpeg"):
        p = first_existing(root, JPEG_PLACES, _has_jpeg_layout)
        if p is not None:
            return "jpeg", p
    return None


def load(root=None, *, download: bool = False, cache_dir=None, train_limit: Optional[int] = None,
         test_limit: Optional[int] = None, source: str = "auto") -> Dataset:
    """Load CIFAR-10 with images in [0, 1], shape (3, 32, 32).

    Parameters
    ----------
    source : ``"auto"`` (canonical if present, else the JPEG copy), ``"python"`` or ``"jpeg"``.
    """
    if source not in ("auto", "python", "jpeg"):
        raise UserInputError(f"cifar10 source must be auto, python or jpeg, got {source!r}")
    train_limit, test_limit = check_limit("train_limit", train_limit), check_limit("test_limit", test_limit)
    data_root, (kind, path) = locate(NAME, root, lambda r: find(r, source),
                                     PYTHON_PLACES + JPEG_PLACES, download=download)
    if kind == "jpeg":
        ds = load_from(path, name=NAME, data_root=data_root, cache_dir=cache_dir,
                       train_limit=train_limit, test_limit=test_limit, mode="RGB", note=JPEG_NOTE)
        if ds.info.shape != (3, 32, 32) or ds.info.class_names != CLASSES:
            raise DataError(f"{path} is not CIFAR-10: images {ds.info.shape}, classes "
                            f"{ds.info.class_names}")
        return ds
    cdir = cache_dir_for(cache_dir, data_root)
    key = cache_key(name=NAME, version=VERSION, source=fingerprint(path, cdir, NAME))
    arrays, meta, hit = get_or_build(cdir, NAME, key, lambda: decode_python(path))
    info = DatasetInfo(name=NAME, shape=(3, 32, 32), num_classes=10, class_names=CLASSES,
                       bounds=(0.0, 1.0), mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                       modality="image", note="")
    return make_dataset(info, arrays, train_limit, test_limit,
                        extra={"source": str(path), "cache_hit": hit})

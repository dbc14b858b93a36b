"""MNIST (LeCun et al. 1998): 28x28 grey digits, 60,000 train / 10,000 test, from the IDX files.

Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each ``.gz`` or uncompressed) from ``<root>/mnist/``,
``<root>/MNIST/raw/``, ``<root>/MNIST/`` or ``<root>/``. Each file is checked against the known
checksums (the shared repack's sha256, LeCun's ``.gz`` MD5, or the MD5 of the official
decompressed content). Images are scaled to [0, 1], shape (1, 28, 28).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from robustcompress.data.cache import cache_key, get_or_build
from robustcompress.data.info import Dataset, DatasetInfo
from robustcompress.data.sources import cache_dir_for, fingerprint, locate
from robustcompress.data.splits import channel_stats, check_limit, make_dataset
from robustcompress.errors import DataError

NAME = "mnist"
VERSION = 1
FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
PLACES = ("mnist", "MNIST/raw", "MNIST", ".")


def find(root: Path) -> Optional[dict[str, Path]]:
    """The four IDX files (``.gz`` preferred) in the first place that has all of them.

    A place with only some of them is returned too (the missing ones as ``<name>.gz``), so that
    loading names the missing file and its checksum instead of saying "not found".
    """
    partial = None
    for place in PLACES:
        d = root / place
        got = {}
        for k, base in FILES.items():
            for cand in (d / f"{base}.gz", d / base):
                if cand.is_file():
                    got[k] = cand
                    break
        if len(got) == len(FILES):
            return got
        if got and partial is None:
            partial = {k: got.get(k, d / f"{base}.gz") for k, base in FILES.items()}
    return partial


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """Parse an IDX file (unsigned-byte payload) into a uint8 array of its declared shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{where} is not an unsigned-byte IDX file (bad magic {data[:4].hex()}); "
                        "re-download it with `robustcompress data download mnist`")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    off = 4 + 4 * ndim
    if len(data) - off != int(np.prod(dims)):
        raise DataError(f"{where} is truncated: header says {dims}, payload has {len(data) - off} "
                        "bytes; re-download it with `robustcompress data download mnist`")
    return np.frombuffer(data, np.uint8, offset=off).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read a (possibly gzip-compressed) IDX file."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be decompressed ({e}); re-download it with "
                        "`robustcompress data download mnist`") from e
    return parse_idx(data, str(path))


def decode(files: dict[str, Path]) -> tuple[dict, dict]:
    """uint8 images [N, 1, 28, 28] and int64 labels for both splits."""
    arrays = {k: read_idx(p) for k, p in files.items()}
    for s in ("train", "test"):
        x, y = arrays[f"x_{s}"], arrays[f"y_{s}"]
        if x.ndim != 3 or len(x) != len(y):
            raise DataError(f"MNIST {s} images {x.shape} and labels {y.shape} do not match")
        arrays[f"x_{s}"] = x.reshape(-1, 1, x.shape[1], x.shape[2])
        arrays[f"y_{s}"] = y.astype(np.int64)
    mean, std = channel_stats(arrays["x_train"])
    return arrays, {"mean": mean, "std": std}


def load(root=None, *, download: bool = False, cache_dir=None, train_limit: Optional[int] = None,
         test_limit: Optional[int] = None) -> Dataset:
    """Load MNIST (images in [0, 1], shape (1, 28, 28), classes "0".."9")."""
    train_limit, test_limit = check_limit("train_limit", train_limit), check_limit("test_limit", test_limit)
    data_root, files = locate(NAME, root, find, PLACES, download=download)
    cdir = cache_dir_for(cache_dir, data_root)
    shas = {k: fingerprint(p, cdir, NAME) for k, p in sorted(files.items())}
    key = cache_key(name=NAME, version=VERSION, sources=shas)
    arrays, meta, hit = get_or_build(cdir, NAME, key, lambda: decode(files))
    info = DatasetInfo(name=NAME, shape=(1, 28, 28), num_classes=10,
                       class_names=tuple(str(i) for i in range(10)), bounds=(0.0, 1.0),
                       mean=tuple(meta["mean"]), std=tuple(meta["std"]), modality="image")
    return make_dataset(info, arrays, train_limit, test_limit,
                        extra={"source": str(files["x_train"].parent), "cache_hit": hit})

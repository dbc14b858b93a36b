"""Datasets in a declared input space: ``load_dataset(name, root=None, ...) -> Dataset``.

Names: ``digits`` (scikit-learn 8x8, embedded), ``mnist``, ``cifar10`` (canonical pickles or the
JPEG image-folder copy), ``speech_commands`` (12 labels, 16 kHz), ``fsdd`` (8 kHz spoken digits),
``imagefolder`` (your own images; ``root`` is the folder), ``tensors`` (your own arrays in an
``.npz``/``.safetensors`` file; ``root`` is the file, ``bounds=`` declares the box). Images are
float32 in [0, 1], audio in [-1, 1). Roots are searched as described in :mod:`robustcompress.data.roots`; decoded arrays are
cached (:mod:`robustcompress.data.cache`); files are checked against known checksums
(:mod:`robustcompress.data.integrity`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from robustcompress.data import cifar10, digits, fsdd, imagefolder, mnist, speech_commands, tensors
from robustcompress.data.info import Dataset, DatasetInfo, Split
from robustcompress.data.roots import resolve_data_root, root_candidates
from robustcompress.errors import UserInputError


@dataclass(frozen=True)
class Catalog:
    """What ``data list`` shows about a dataset before loading it."""

    load: Callable[..., Dataset]
    find: Optional[Callable[[Path], object]]
    shape: tuple[int, ...]
    num_classes: int
    bounds: tuple[float, float]
    description: str


DATASETS: dict[str, Catalog] = {
    "digits": Catalog(digits.load, None, (1, 8, 8), 10, (0.0, 1.0),
                      "scikit-learn 8x8 digits, fixed stratified 1437/360 split (embedded)"),
    "mnist": Catalog(mnist.load, mnist.find, (1, 28, 28), 10, (0.0, 1.0), "MNIST IDX files"),
    "cifar10": Catalog(cifar10.load, cifar10.find, (3, 32, 32), 10, (0.0, 1.0),
                       "CIFAR-10: cifar-10-python pickles, or the JPEG image-folder copy"),
    "speech_commands": Catalog(speech_commands.load, speech_commands.find, (1, 16000), 12,
                               (-1.0, 1.0), "Speech Commands v0.02, 10 words + unknown + silence"),
    "fsdd": Catalog(fsdd.load, fsdd.find, (1, 8000), 10, (-1.0, 1.0),
                    "Free Spoken Digit Dataset, 8 kHz, index 0-4 test"),
    "imagefolder": Catalog(imagefolder.load, None, (), 0, (0.0, 1.0),
                           "your images: root/train/<class>/*, root/test/<class>/*"),
    # bounds are declared per file (option or stored array); (0, 1) is only the catalog's placeholder
    "tensors": Catalog(tensors.load, None, (), 0, (0.0, 1.0),
                       "your arrays: x_train/y_train/x_test/y_test in .npz or .safetensors"),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def _entry(name: str) -> Catalog:
    if name not in DATASETS:
        raise UserInputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def find_dataset(name: str, root=None) -> Optional[tuple[Path, object]]:
    """``(data_root, source)`` where dataset ``name`` would be loaded from, or None if absent."""
    e = _entry(name)
    if e.find is None:
        return None
    cands, _ = root_candidates(root)
    for c in cands:
        if c.is_dir():
            got = e.find(c)
            if got is not None:
                return c, got
    return None


def load_dataset(name: str, root=None, *, download: bool = False, cache_dir=None,
                 train_limit: Optional[int] = None, test_limit: Optional[int] = None,
                 **kw) -> Dataset:
    """Load dataset ``name`` as float tensors in its declared box plus a :class:`DatasetInfo`.

    Parameters
    ----------
    name : one of :func:`list_datasets`.
    root : data root (or, for ``imagefolder``, the image folder); default: the search order of
        :func:`resolve_data_root` (--data-dir, $ROBUSTCOMPRESS_DATA, ./data, ../shared/data).
    download : fetch a missing canonical dataset (mnist, cifar10, speech_commands), verified.
    cache_dir : where decoded arrays go (default: ``<root>/.robustcompress-cache`` if writable,
        else ``~/.cache/robustcompress``).
    train_limit, test_limit : keep a deterministic class-stratified subset of this size.
    **kw : dataset options (``cifar10``: ``source="auto"|"python"|"jpeg"``; ``fsdd``: ``length``;
        ``imagefolder``: ``mode="L"|"RGB"``; ``tensors``: ``bounds``, ``mean``, ``std``,
        ``num_classes``).

    Returns
    -------
    Dataset
        ``train``/``test`` splits (float32 ``x`` in ``info.bounds``, int64 ``y``), ``info``, and
        ``extra``: ``source`` (file or folder read), ``cache_hit`` (bool), and per dataset
        ``val`` (Speech Commands, official split), ``speakers`` / ``indices`` (audio),
        ``split_rule`` (Speech Commands).

    Raises
    ------
    UserInputError
        Unknown name or option, bad limit.
    DataError
        Data root or dataset not found, file missing or corrupted, unreadable archive or file.

    Examples
    --------
    >>> ds = load_dataset("digits", train_limit=100)
    >>> ds.info.shape, len(ds.train), float(ds.train.x.max()) <= 1.0
    ((1, 8, 8), 100, True)
    """
    loader = _entry(name).load
    allowed = set(inspect.signature(loader).parameters) - {"root", "download", "cache_dir",
                                                            "train_limit", "test_limit"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise UserInputError(f"dataset {name!r} has no option(s) {unknown}; its options are "
                             f"{sorted(allowed) or 'none'}")
    return loader(root, download=download, cache_dir=cache_dir, train_limit=train_limit,
                  test_limit=test_limit, **kw)


__all__ = ["Dataset", "DatasetInfo", "Split", "DATASETS", "find_dataset", "list_datasets",
           "load_dataset", "resolve_data_root"]

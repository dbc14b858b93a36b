"""Generic image-folder datasets (users' own data, and the CIFAR-10 JPEG copy).

Layout: ``[prefix/]train/<class>/<image>`` and ``[prefix/]test/<class>/<image>`` in a folder or a
tar archive (.tar, .tar.gz, .tar.xz). Classes are the sorted ``train`` sub-folder names (label
``i`` = i-th name). Without ``train``/``test`` folders (plain ``<class>/<image>``), a deterministic
split puts the files whose ``sha1(relative name)`` is divisible by 5 (about 20%) in ``test``.
Images: any format Pillow reads; all must have one size and one mode (``L`` or ``RGB``,
``mode=`` converts), values scaled to [0, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from robustcompress.data.archives import is_archive, iter_files, list_files
from robustcompress.data.cache import cache_key, get_or_build, load_entry
from robustcompress.data.images import IMAGE_SUFFIXES, decode_images
from robustcompress.data.info import Dataset, DatasetInfo
from robustcompress.data.sources import cache_dir_for, fingerprint
from robustcompress.data.splits import channel_stats, check_limit, make_dataset, stratified_first
from robustcompress.errors import DataError, UserInputError

NAME = "imagefolder"
VERSION = 1


class Entry(NamedTuple):
    name: str   # relative name inside the folder / archive
    split: str  # "train" | "test"
    cls: str


def parse_layout(names: list[str]) -> list[Entry]:
    """Image files as ``Entry(name, split, class)``, sorted by (split, class, name)."""
    imgs = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    split = [Entry(n, n.split("/")[-3], n.split("/")[-2]) for n in imgs
             if len(n.split("/")) >= 3 and n.split("/")[-3] in ("train", "test")]
    if not split:
        split = [Entry(n, "test" if int(hashlib.sha1(n.encode()).hexdigest(), 16) % 5 == 0
                       else "train", n.split("/")[-2]) for n in imgs if len(n.split("/")) >= 2]
    return sorted(split, key=lambda e: (e.split, e.cls, e.name))


def class_names(entries: list[Entry], source: Path) -> tuple[str, ...]:
    """Sorted class names of ``train``; test classes must be among them."""
    train = sorted({e.cls for e in entries if e.split == "train"})
    test = {e.cls for e in entries if e.split == "test"}
    if not train or not test:
        raise DataError(f"{source} has no images in the expected layout train/<class>/<image> and "
                        "test/<class>/<image> (or <class>/<image>); found "
                        f"{len(entries)} usable images")
    extra = sorted(test - set(train))
    if extra:
        raise DataError(f"{source}: test classes {extra} have no train folder; every class needs "
                        "train/<class>/")
    return tuple(train)


def select(entries: list[Entry], classes: tuple[str, ...], split: str,
           limit: Optional[int]) -> list[Entry]:
    """The stratified first ``limit`` entries of ``split`` (see :func:`stratified_first`)."""
    es = [e for e in entries if e.split == split]
    y = np.array([classes.index(e.cls) for e in es], dtype=np.int64)
    return [es[i] for i in stratified_first(y, limit)]


def decode(source: Path, entries: list[Entry], classes: tuple[str, ...],
           mode: Optional[str]) -> tuple[dict, dict]:
    """Decode ``entries`` into uint8 arrays ``x_train``/``x_test`` [N, C, H, W] and int labels."""
    images = decode_images(iter_files(source, {e.name for e in entries}), mode)
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        es = [e for e in entries if e.split == split]
        arrays[f"x_{split}"] = np.stack([images[e.name] for e in es])
        arrays[f"y_{split}"] = np.array([classes.index(e.cls) for e in es], dtype=np.int64)
    mean, std = channel_stats(arrays["x_train"])
    return arrays, {"class_names": list(classes), "mean": mean, "std": std}


def load_from(source: Path, *, name: str = NAME, data_root: Optional[Path] = None,
              cache_dir=None, train_limit: Optional[int] = None, test_limit: Optional[int] = None,
              mode: Optional[str] = None, note: str = "") -> Dataset:
    """Load an image-folder source (folder or archive) with caching.

    A complete-dataset cache entry serves every limit; without one, a limited load decodes only
    the selected images (and caches that subset), so quick runs stay quick on the first call.
    """
    train_limit, test_limit = check_limit("train_limit", train_limit), check_limit("test_limit", test_limit)
    cdir = cache_dir_for(cache_dir, data_root)
    fp = fingerprint(source, cdir, name)
    full_key = cache_key(name=name, version=VERSION, source=fp, mode=mode, limits=None)
    hit = load_entry(cdir / f"{name}-{full_key}")
    if hit is not None:
        arrays, meta, was_hit = hit[0], hit[1], True
    else:
        entries = parse_layout(list_files(source))
        classes = class_names(entries, source)
        limited = train_limit is not None or test_limit is not None
        if limited:
            entries = (select(entries, classes, "train", train_limit)
                       + select(entries, classes, "test", test_limit))
        key = full_key if not limited else cache_key(
            name=name, version=VERSION, source=fp, mode=mode, limits=[train_limit, test_limit])
        arrays, meta, was_hit = get_or_build(cdir, name, key,
                                             lambda: decode(source, entries, classes, mode))
    x = arrays["x_train"]
    classes = tuple(meta["class_names"])
    info = DatasetInfo(name=name, shape=tuple(int(s) for s in x.shape[1:]),
                       num_classes=len(classes), class_names=classes, bounds=(0.0, 1.0),
                       mean=tuple(meta["mean"]), std=tuple(meta["std"]), modality="image",
                       note=note)
    return make_dataset(info, arrays, train_limit, test_limit,
                        extra={"source": str(source), "cache_hit": was_hit})


def load(root=None, *, download: bool = False, cache_dir=None, train_limit: Optional[int] = None,
         test_limit: Optional[int] = None, mode: Optional[str] = None) -> Dataset:
    """Load a user's image folder: ``root`` is the folder or archive itself (not a data root).

    Parameters
    ----------
    root : path to ``train/<class>/...`` + ``test/<class>/...`` (folder, .tar, .tar.gz, .tar.xz).
    download : ignored (your own data has no download).
    mode : ``"L"`` or ``"RGB"`` to convert every image; default: all images must agree.
    """
    if root is None:
        raise UserInputError("imagefolder needs the folder: load_dataset('imagefolder', "
                             "root='path/to/folder') or --data-dir path/to/folder")
    source = Path(root).expanduser()
    if not (source.is_dir() or is_archive(source)):
        raise DataError(f"image folder {source} does not exist or is not a folder/.tar archive; "
                        "pass the folder that contains train/<class>/ and test/<class>/")
    return load_from(source, cache_dir=cache_dir, train_limit=train_limit,
                     test_limit=test_limit, mode=mode)

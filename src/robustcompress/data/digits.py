"""scikit-learn's bundled 8x8 digits (UCI optical recognition of handwritten digits), the embedded
default that needs no files.

1,797 images of 8x8 pixels with values 0..16, scaled by ``/ 16`` to [0, 1], shape (1, 8, 8).
Split: ``sklearn.model_selection.train_test_split(test_size=360, stratify=y, random_state=0)``,
i.e. a fixed stratified 1,437 / 360 split (the same on every call and machine).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from robustcompress.data.info import Dataset, DatasetInfo, Split
from robustcompress.data.splits import check_limit, stratified_first

NAME = "digits"
TEST_SIZE = 360
SEED = 0


def split_indices(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified train/test indices (sorted)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=TEST_SIZE, stratify=y, random_state=SEED)
    return np.sort(tr), np.sort(te)


def _split(x: np.ndarray, y: np.ndarray, idx: np.ndarray, limit: Optional[int]) -> Split:
    idx = idx[stratified_first(y[idx], limit)]
    return Split(torch.from_numpy((x[idx] / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8),
                 torch.from_numpy(y[idx].astype(np.int64)))


def load(root=None, *, download: bool = False, cache_dir=None, train_limit: Optional[int] = None,
         test_limit: Optional[int] = None) -> Dataset:
    """Load the 8x8 digits; ``root``, ``download`` and ``cache_dir`` are accepted and unused."""
    from sklearn.datasets import load_digits

    train_limit, test_limit = check_limit("train_limit", train_limit), check_limit("test_limit", test_limit)
    d = load_digits()
    x, y = np.asarray(d.data, np.float64), np.asarray(d.target, np.int64)
    tr, te = split_indices(y)
    xt = x[tr] / 16.0
    info = DatasetInfo(name=NAME, shape=(1, 8, 8), num_classes=10,
                       class_names=tuple(str(i) for i in range(10)), bounds=(0.0, 1.0),
                       mean=(round(float(xt.mean()), 4),), std=(round(float(xt.std()), 4),),
                       modality="image", note="scikit-learn 8x8 digits (values 0..16 scaled /16)")
    return Dataset(info=info, train=_split(x, y, tr, train_limit), test=_split(x, y, te, test_limit),
                   extra={"source": "sklearn.datasets.load_digits", "cache_hit": False})

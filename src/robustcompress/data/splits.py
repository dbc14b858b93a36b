"""Pure helpers shared by the loaders: stratified limits, array -> tensor scaling, statistics.

:func:`stratified_first` lives in :mod:`robustcompress.data.info` (``Split.sample`` uses it) and
is importable from here too.

Arrays are stored compactly (uint8 images, int16 audio) and turned into float32 tensors in the
declared box only at the end: uint8 ``/ 255`` -> [0, 1]; int16 ``/ 32768`` -> [-1, 1).
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

from robustcompress.data.info import Dataset, DatasetInfo, Split, stratified_first
from robustcompress.errors import UserInputError


def check_limit(name: str, n: Optional[int]) -> Optional[int]:
    """Validate a ``train_limit``/``test_limit`` value (None or a positive int)."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserInputError(f"{name} must be a positive integer or None, got {n!r}")
    return int(n)


def to_float(x: np.ndarray) -> torch.Tensor:
    """float32 tensor in the declared box: uint8 -> [0, 1], int16 -> [-1, 1), floats unchanged."""
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    with warnings.catch_warnings():  # read-only (memory-mapped) source: only read, never written
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(x)
    if x.dtype == np.uint8:
        return t.to(torch.float32).div_(255.0)  # exactly k/255 as float32, like ToTensor
    if x.dtype == np.int16:
        return t.to(torch.float32).mul_(1.0 / 32768.0)
    return t.to(torch.float32, copy=True)


def to_split(x: np.ndarray, y: np.ndarray, limit: Optional[int] = None) -> Split:
    """A :class:`Split` of the stratified first ``limit`` samples (all when None)."""
    idx = stratified_first(y, limit)
    if len(idx) != len(y):
        x, y = x[idx], y[idx]
    return Split(to_float(x), torch.from_numpy(np.array(y, dtype=np.int64)))


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``x`` [N, C, ...] in float units (same scaling as to_float).

    Accumulated in float64 over chunks of float32 samples (no full-size float64 copy).
    """
    scale = 1 / 255.0 if x.dtype == np.uint8 else (1 / 32768.0 if x.dtype == np.int16 else 1.0)
    n, c = x.shape[0], x.shape[1]
    s1, s2, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, n, chunk):
        v = x[i:i + chunk].reshape(-1, c, int(np.prod(x.shape[2:], dtype=np.int64))).astype(np.float32)
        s1 += v.sum(axis=(0, 2), dtype=np.float64)
        s2 += np.einsum("ncl,ncl->c", v, v, dtype=np.float64)
        count += v.shape[0] * v.shape[2]
    mean = s1 / max(count, 1)
    var = np.maximum(s2 / max(count, 1) - mean ** 2, 0.0)
    return (tuple(round(float(m * scale), 4) + 0.0 for m in mean),
            tuple(round(float(np.sqrt(v) * scale), 4) for v in var))


def make_dataset(info: DatasetInfo, arrays: dict[str, np.ndarray], train_limit: Optional[int],
                 test_limit: Optional[int], extra: Optional[dict] = None) -> Dataset:
    """Assemble a :class:`Dataset` from cached arrays; a ``x_val``/``y_val`` pair goes to
    ``extra["val"]`` (limited like the test split)."""
    extra = dict(extra or {})
    if "x_val" in arrays:
        extra["val"] = to_split(arrays["x_val"], arrays["y_val"], test_limit)
    return Dataset(info=info,
                   train=to_split(arrays["x_train"], arrays["y_train"], train_limit),
                   test=to_split(arrays["x_test"], arrays["y_test"], test_limit),
                   extra=extra)

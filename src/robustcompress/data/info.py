"""The declared input space of a dataset, and the tensors a loader returns.

Every loader returns a :class:`Dataset`: float32 tensors already in the declared box
(images in [0, 1], audio in [-1, 1]), integer labels, and a :class:`DatasetInfo` that says what the
box is. Normalisation (mean/std) is *not* applied to the tensors: models apply it inside
``forward`` (see :class:`robustcompress.models.Normalize`), so that attacks work in input units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch


def stratified_first(labels: np.ndarray, n: Optional[int]) -> np.ndarray:
    """Indices of a deterministic class-stratified subset of size ``min(n, len(labels))``.

    Samples are ranked within their class in their stored order; the subset takes rank 0 of
    every class, then rank 1 of every class, ... (classes in label order) until ``n`` are taken,
    so each class gets ``n // C`` or one more (a class that runs out leaves its share to the
    others). The indices are returned sorted, i.e. in the stored order. ``n=None``: all.
    """
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts
    pick = np.lexsort((labels, rank))[:n]  # by rank, then by class
    return np.sort(pick)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attacker need to know about a dataset's inputs.

    Attributes
    ----------
    name : registry name (``"mnist"``, ``"cifar10"``, ...).
    shape : shape of one input, e.g. ``(1, 28, 28)`` or ``(1, 16000)`` for audio.
    num_classes, class_names : the label set; labels are ``0..num_classes-1``.
    bounds : the box every input lies in, ``(0.0, 1.0)`` for images, ``(-1.0, 1.0)`` for audio.
    mean, std : per-channel statistics of the training inputs, used by the model's ``Normalize``.
    modality : ``"image"`` or ``"audio"``.
    sample_rate : Hz, for audio only.
    note : anything a user must know when reading results (e.g. "lossy JPEG copy of CIFAR-10").
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    bounds: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    modality: str = "image"
    sample_rate: Optional[int] = None
    note: str = ""

    @property
    def channels(self) -> int:
        return int(self.shape[0])

    @property
    def eps_scale(self) -> float:
        """Size of the box: 1 for [0, 1] images, 2 for [-1, 1] audio.

        The papers quote image eps on the 0-255 scale; ``eps / 255 * eps_scale`` maps it here.
        """
        return float(self.bounds[1] - self.bounds[0])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        d = dict(d)
        for k in ("shape", "class_names", "bounds", "mean", "std"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass
class Split:
    """One split: inputs ``x`` (float32, in ``info.bounds``) and labels ``y`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: Optional[int] = None, *, start: int = 0) -> "Split":
        """The first ``n`` samples after ``start`` (all if ``n`` is None); no copy.

        For *evaluating* on ``n`` points use :meth:`sample`: several datasets are stored sorted by
        class (the CIFAR-10 image folders, FSDD, Speech Commands), so their first ``n`` samples
        can be a single class."""
        end = len(self) if n is None else min(len(self), start + n)
        return Split(self.x[start:end], self.y[start:end])

    def sample(self, n: Optional[int] = None) -> "Split":
        """A deterministic class-stratified subset of ``n`` samples in stored order (all if ``n``
        is None or ``>= len``): what every evaluation on "``n`` test points" uses.
        See :func:`stratified_first`."""
        if n is None or n >= len(self):
            return self
        idx = torch.from_numpy(stratified_first(self.y.cpu().numpy(), n)).to(self.y.device)
        return Split(self.x.index_select(0, idx.to(self.x.device)), self.y.index_select(0, idx))


@dataclass
class Dataset:
    """A train and a test split plus the declared input space."""

    info: DatasetInfo
    train: Split
    test: Split
    extra: dict = field(default_factory=dict)

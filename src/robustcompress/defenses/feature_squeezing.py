"""Feature squeezing (Xu, Evans & Qi, NDSS 2018): squeezed classification and the joint detector.

* :class:`FeatureSqueezing` wraps a classifier. ``forward`` classifies the squeezed input
  (bit depth, then median filter), the form the defensive-tensorization paper compares against
  ("5 bits ... combined with a 2x2 median filter"); ``classify="original"`` leaves the
  classification unchanged and uses the squeezers only for detection, as Xu et al. do.
* :meth:`FeatureSqueezing.score` is the joint detector score
  ``max_i ||softmax(f(x)) - softmax(f(squeeze_i(x)))||_1`` over the individual squeezers;
  :func:`calibrate_threshold` picks the threshold for a 5% false-positive rate on clean
  validation data; :meth:`FeatureSqueezing.detect` flags inputs above it.

Squeezers are non-differentiable modules (:mod:`robustcompress.nn.squeeze`); the evaluator attacks
them with BPDA (identity) through :func:`robustcompress.nn.straight_through`, the adaptive attack
that breaks the defense (He et al. 2017; Sharma & Chen 2018). Non-local means (used by the paper
for CIFAR-10/ImageNet) is not implemented.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional, Sequence

import torch
from torch import nn

from robustcompress.defenses.base import (
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    defense_records,
    register_defense,
    set_defense_records,
)
from robustcompress.errors import UserInputError
from robustcompress.nn.squeeze import BitDepth, MedianFilter


def default_bits(info) -> int:
    """The paper's bit depth: 1 bit for MNIST-like grayscale images, 5 bits otherwise."""
    return 1 if info.modality == "image" and info.channels == 1 else 5


def make_squeezers(info, bits: Optional[int] = None, median: int = 2) -> list[nn.Module]:
    """``[BitDepth(bits), MedianFilter(median)]`` for the dataset's box (``median <= 1``: none)."""
    sq: list[nn.Module] = [BitDepth(default_bits(info) if bits is None else bits, info.bounds)]
    if median and median > 1:
        sq.append(MedianFilter(median))
    return sq


class FeatureSqueezing(nn.Module):
    """A classifier behind feature squeezers, with the joint detector.

    Parameters
    ----------
    model : the classifier (inputs in the declared box).
    squeezers : applied in order for classification (``classify="squeezed"``), individually for
        the detector score.
    classify : ``"squeezed"`` or ``"original"``.
    threshold : detector threshold (``None``: not calibrated yet; stored as a buffer).
    """

    def __init__(self, model: nn.Module, squeezers: Sequence[nn.Module],
                 classify: str = "squeezed", threshold: Optional[float] = None):
        super().__init__()
        if classify not in ("squeezed", "original"):
            raise UserInputError(f"classify must be 'squeezed' or 'original', got {classify!r}")
        if not squeezers:
            raise UserInputError("feature squeezing needs at least one squeezer")
        self.model = model
        self.squeezers = nn.ModuleList(squeezers)
        self.classify = classify
        self.register_buffer("threshold", torch.tensor(float("nan") if threshold is None else threshold))

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.squeezers:
            x = s(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.squeeze(x) if self.classify == "squeezed" else x)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Joint detector score per input (differentiable through the squeezers' surrogates)."""
        p = torch.softmax(self.model(x), dim=1)
        scores = [(p - torch.softmax(self.model(s(x)), dim=1)).abs().sum(1) for s in self.squeezers]
        return torch.stack(scores).amax(0)

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """True where the score exceeds the calibrated threshold."""
        if torch.isnan(self.threshold):
            raise UserInputError("the detector threshold is not calibrated; call "
                                 "calibrate_threshold(...) or use the feature_squeezing defense")
        return self.score(x) > self.threshold


@torch.no_grad()
def calibrate_threshold(wrapper: FeatureSqueezing, x_clean: torch.Tensor, fpr: float = 0.05,
                        batch_size: int = 512) -> float:
    """Set (and return) the threshold flagging a fraction ``fpr`` of clean inputs: the
    ``1 - fpr`` quantile of their scores (Xu et al. choose it on clean validation data)."""
    if not 0.0 < fpr < 1.0:
        raise UserInputError(f"fpr must be in (0, 1), got {fpr}")
    was = wrapper.training
    wrapper.eval()
    try:
        scores = torch.cat([wrapper.score(x_clean[i:i + batch_size])
                            for i in range(0, len(x_clean), batch_size)])
    finally:
        wrapper.train(was)
    t = float(torch.quantile(scores.double().cpu(), 1.0 - fpr))
    wrapper.threshold.fill_(t)
    return t


def feature_squeezing(model: nn.Module, info, *, bits: Optional[int] = None, median: int = 2,
                      classify: str = "squeezed", calibration: Optional[torch.Tensor] = None,
                      fpr: float = 0.05) -> FeatureSqueezing:
    """Wrap a deep copy of ``model``; calibrate the detector on ``calibration`` inputs if given."""
    wrapper = FeatureSqueezing(copy.deepcopy(model), make_squeezers(info, bits, median), classify)
    if calibration is not None:
        calibrate_threshold(wrapper, calibration.to(next(model.parameters()).device), fpr)
    return wrapper


def _info(model: nn.Module):
    from robustcompress.data.info import DatasetInfo

    spec = getattr(model, "robustcompress_spec", None)
    if spec is None:
        raise UserInputError("feature squeezing needs the model's dataset info (build it with "
                             "build_model) to choose the bit depth and the input box")
    return DatasetInfo.from_dict(spec["info"])


@register_defense
class FeatureSqueezingDefense(DefenseSpec):
    """Bit-depth reduction + median filter in front of the classifier, plus the joint detector."""

    name = "feature_squeezing"
    paper = "Xu, Evans & Qi, NDSS 2018"

    class Params(DefenseParams):
        bits: Optional[int] = None  # None: 1 for grayscale images, 5 otherwise (the paper's)
        median: int = 2
        classify: Literal["squeezed", "original"] = "squeezed"
        fpr: float = 0.05
        n_calibration: int = 1000  # clean inputs from the END of the training split

    def apply(self, model: nn.Module, params, ctx: DefenseContext) -> dict[str, nn.Module]:
        train = ctx.dataset.train
        n = min(params.n_calibration, len(train))
        calib = train.x[len(train) - n:]
        out = feature_squeezing(model, ctx.dataset.info, bits=params.bits, median=params.median,
                                classify=params.classify, calibration=calib, fpr=params.fpr)
        _copy_meta(model, out, {"name": self.name, "params": params.model_dump(mode="json")})
        return {"": out}

    def structure(self, model: nn.Module, params) -> nn.Module:
        out = FeatureSqueezing(model, make_squeezers(_info(model), params.bits, params.median),
                               params.classify)
        _copy_meta(model, out, None)
        return out


def _copy_meta(src: nn.Module, dst: nn.Module, entry: Optional[dict]) -> None:
    if hasattr(src, "robustcompress_spec"):
        dst.robustcompress_spec = src.robustcompress_spec
    set_defense_records(dst, defense_records(src) + ([entry] if entry else []))

"""The stochastic baselines of the SAP paper (Dhillon et al., ICLR 2018, Sec. 4.1.2 and App. B),
each a post-hoc layer or weight parametrisation with an explicit random source.

Activation layers (inserted after a ReLU, like SAP; independent per sample, ``granularity="sample"``):

* :class:`TestTimeDropout` (DRO): keep each activation with probability ``1 - rate``, scale kept
  ones by ``1 / (1 - rate)`` ("inverted" dropout, so ``E[out] = h``), active at test time;
* :class:`ActivationNoise` ``kind="additive"`` (RNA, App. B.5): ``h + N(0, s^2)``;
  ``kind="multiplicative"`` (RSA, App. B.6): ``h * N(1, s^2)``.

Weight parametrisations (``torch.nn.utils.parametrize`` on ``weight``; one draw per forward
shared by the batch, ``granularity="batch"``):

* :class:`WeightNoise` ``kind="additive"`` (RNW, App. B.1): ``W + N(0, s^2)``;
  ``kind="multiplicative"`` (RSW, App. B.2): ``W * N(1, s^2)``;
  ``kind="sap"`` (SWP, App. B.4): SAP's sampling applied to the flattened weight tensor
  (``p_j = |W_j| / sum |W|``, ``r = frac * numel`` draws with replacement, drawn entries scaled by
  ``1 / (1 - (1 - p_j)^r)``, others 0), via :func:`robustcompress.nn.sap.sap`;
* DWP (App. B.3, deterministic): :func:`topk_keep_mask` keeps the top ``keep`` fraction of a weight
  tensor by ``|W|`` and is applied with :class:`robustcompress.nn.masks.MagnitudeMask`.

Deviations and choices: the paper gives ``s`` as an absolute standard deviation for every layer
(we do the same; it is not scaled by the layer's weight scale). The weight noise is drawn once per
forward for the whole batch (a per-sample weight draw would need a per-sample convolution); the
evaluator knows this from ``granularity="batch"`` and loops EOT draws instead of stacking them.
While ``stochastic`` is False every layer returns its mean (input/weight unchanged; SWP: ``W``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.errors import UserInputError
from robustcompress.nn.sap import random_draw, sap

NOISE_KINDS = ("additive", "multiplicative")
WEIGHT_KINDS = ("additive", "multiplicative", "sap")


def _normal(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    gdev = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=gdev,
                       dtype=like.dtype).to(like.device)


def _check_positive(name: str, value: float, upper: Optional[float] = None) -> None:
    if not value >= 0 or (upper is not None and not value < upper):
        bound = f"[0, {upper})" if upper is not None else ">= 0"
        raise UserInputError(f"{name}={value} must be in {bound}")


def dropout(h: torch.Tensor, rate: float, *, generator: Optional[torch.Generator] = None
            ) -> torch.Tensor:
    """Inverted dropout, always on: ``h * Bernoulli(1 - rate) / (1 - rate)``, mask constant in
    backward. ``rate`` is the drop probability."""
    if rate == 0:
        return h
    keep = random_draw("rand", h.shape, generator, h.device, dtype=h.dtype) >= rate
    return h * (keep.to(h.dtype) / (1.0 - rate))


def gaussian_noise(t: torch.Tensor, s: float, kind: str, *,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``t + N(0, s^2)`` (``"additive"``) or ``t * N(1, s^2)`` (``"multiplicative"``)."""
    if kind not in NOISE_KINDS:
        raise UserInputError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
    if s == 0:
        return t
    z = _normal(t, generator).mul_(s)
    return t + z if kind == "additive" else t * (1.0 + z)


def topk_keep_mask(w: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean mask keeping exactly ``round(keep * numel)`` entries of ``w`` with the largest
    ``|w|`` (ties broken by ``torch.topk``). DWP of the SAP paper, App. B.3 (no fine-tuning)."""
    if not 0.0 < keep <= 1.0:
        raise UserInputError(f"DWP keep fraction {keep} must be in (0, 1] (e.g. 0.5 keeps 50%)")
    n = max(1, int(round(keep * w.numel())))
    flat = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    flat[w.detach().abs().reshape(-1).topk(n).indices] = True
    return flat.view_as(w)


class _Stochastic(nn.Module):
    """Protocol attributes shared by the layers here (see :mod:`robustcompress.nn.protocol`)."""

    non_differentiable = False

    def __init__(self, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.generator = generator
        self.stochastic = True


class TestTimeDropout(_Stochastic):
    """DRO baseline: inverted dropout that stays on in eval mode (post hoc, no training)."""

    granularity = "sample"
    __test__ = False  # not a pytest test class

    def __init__(self, rate: float = 0.1, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        _check_positive("dropout rate", rate, 1.0)
        self.rate = float(rate)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return dropout(h, self.rate, generator=self.generator) if self.stochastic else h

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class ActivationNoise(_Stochastic):
    """RNA (``kind="additive"``) / RSA (``kind="multiplicative"``) baselines on activations."""

    granularity = "sample"

    def __init__(self, s: float, kind: str = "additive",
                 generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        _check_positive("noise std s", s)
        if kind not in NOISE_KINDS:
            raise UserInputError(f"unknown noise kind {kind!r}; choose one of {NOISE_KINDS}")
        self.s, self.kind = float(s), kind

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.stochastic:
            return h
        return gaussian_noise(h, self.s, self.kind, generator=self.generator)

    def extra_repr(self) -> str:
        return f"s={self.s}, kind={self.kind!r}"


class WeightNoise(_Stochastic):
    """RNW / RSW / SWP as a weight parametrisation: a fresh draw each time the weight is read
    (once per forward of a Conv/Linear), shared by the batch.

    ``value`` is ``s`` for ``"additive"``/``"multiplicative"`` and the draw fraction ``frac``
    (``k/100`` in the paper's legend) for ``"sap"``.
    """

    granularity = "batch"

    def __init__(self, kind: str, value: float, generator: Optional[torch.Generator] = None):
        super().__init__(generator)
        if kind not in WEIGHT_KINDS:
            raise UserInputError(f"unknown weight noise {kind!r}; choose one of {WEIGHT_KINDS}")
        _check_positive("weight noise parameter", value)
        if kind == "sap" and value == 0:
            raise UserInputError("SWP frac must be > 0 (draws per weight; 1.0 draws numel times)")
        self.kind, self.value = kind, float(value)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.stochastic:
            return w
        if self.kind == "sap":
            return sap(w.reshape(1, -1), self.value, generator=self.generator).view_as(w)
        return gaussian_noise(w, self.value, self.kind, generator=self.generator)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, value={self.value}"

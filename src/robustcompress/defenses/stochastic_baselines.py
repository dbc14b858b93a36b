"""The stochastic baselines SAP is compared with (Dhillon et al., ICLR 2018, Sec. 4.1.2, App. B),
each applied post hoc to a trained model, without fine-tuning.

==========  ===============================  ==============================================
name        method                           parameter
==========  ===============================  ==============================================
``dropout`` DRO: test-time inverted dropout  ``rate`` (drop probability) after every ReLU
``rna``     random noisy activations         ``s``: ``h + N(0, s^2)`` after every ReLU
``rsa``     randomly scaled activations      ``s``: ``h * N(1, s^2)`` after every ReLU
``rnw``     random noisy weights             ``s``: ``W + N(0, s^2)`` on every Conv/Linear
``rsw``     randomly scaled weights          ``s``: ``W * N(1, s^2)`` on every Conv/Linear
``swp``     stochastic weight pruning        ``frac``: SAP sampling on each weight tensor
``dwp``     deterministic weight pruning     ``keep``: top ``keep`` fraction by ``|W|`` kept
==========  ===============================  ==============================================

Functions: :func:`dropout_after_relu`, :func:`activation_noise`, :func:`weight_noise`,
:func:`deterministic_weight_pruning`; each returns a defended deep copy that records itself in
``robustcompress_defenses``. Layers and parametrisations are in :mod:`robustcompress.nn.noise`.
Weight baselines act on every Conv1d/Conv2d/Linear (``layers`` restricts them by name), including
the first and last layer, as "each weight tensor W^i" in App. B. DRO's paper variant (b)/(c) that
*trains* with dropout is a training-config matter (a model with dropout layers), not this post-hoc
transform. ADV+SAP is documented in :mod:`robustcompress.defenses.sap`.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional, Sequence, Union

from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from robustcompress.defenses.base import (
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    activation_coverage,
    layer_coverage,
    record_defense,
    register_defense,
)
from robustcompress.defenses.sap import Layers, insert_after
from robustcompress.nn.masks import MagnitudeMask, prunable_layers
from robustcompress.nn.noise import ActivationNoise, TestTimeDropout, WeightNoise, topk_keep_mask

_PAPER = "Dhillon et al., ICLR 2018, App. B (baselines of Stochastic Activation Pruning)"


def _layers_param(layers) -> Union[str, list[str], None]:
    return layers if layers is None or isinstance(layers, str) else list(layers)


def dropout_after_relu(model: nn.Module, rate: float = 0.1, layers: Layers = "relu") -> nn.Module:
    """DRO: a deep copy with test-time inverted dropout (drop probability ``rate``) after every ReLU."""
    out = insert_after(copy.deepcopy(model), lambda _: TestTimeDropout(rate), layers)
    return record_defense(out, "dropout", {"rate": float(rate), "layers": _layers_param(layers)})


def activation_noise(model: nn.Module, s: float, kind: str = "additive",
                     layers: Layers = "relu") -> nn.Module:
    """RNA (``kind="additive"``) / RSA (``"multiplicative"``) after every ReLU, on a deep copy."""
    out = insert_after(copy.deepcopy(model), lambda _: ActivationNoise(s, kind), layers)
    name = "rna" if kind == "additive" else "rsa"
    return record_defense(out, name, {"s": float(s), "layers": _layers_param(layers)})


def _parametrize(model: nn.Module, make, layers: Optional[Sequence[str]]) -> nn.Module:
    for _, module in prunable_layers(model, names=layers):
        parametrize.register_parametrization(module, "weight", make(module))
    return model


_WEIGHT_NAMES = {"additive": "rnw", "multiplicative": "rsw", "sap": "swp"}


def weight_noise(model: nn.Module, kind: str, value: float,
                 layers: Optional[Sequence[str]] = None) -> nn.Module:
    """RNW (``kind="additive"``, ``value=s``), RSW (``"multiplicative"``, ``s``) or SWP
    (``"sap"``, ``value=frac``) on every Conv/Linear weight of a deep copy (one draw per forward)."""
    out = _parametrize(copy.deepcopy(model), lambda _: WeightNoise(kind, value), layers)
    key = "frac" if kind == "sap" else "s"
    return record_defense(out, _WEIGHT_NAMES[kind],
                          {key: float(value), "layers": _layers_param(layers)})


def deterministic_weight_pruning(model: nn.Module, keep: float,
                                 layers: Optional[Sequence[str]] = None) -> nn.Module:
    """DWP: keep the top ``keep`` fraction of every Conv/Linear weight tensor by ``|W|`` (exact
    count ``round(keep * numel)``), zero the rest, no fine-tuning. The mask is a
    :class:`robustcompress.nn.masks.MagnitudeMask`, so compression metrics see the zeros."""
    out = _parametrize(copy.deepcopy(model), lambda m: MagnitudeMask(topk_keep_mask(m.weight, keep)),
                       layers)
    return record_defense(out, "dwp", {"keep": float(keep), "layers": _layers_param(layers)})


class _Baseline(DefenseSpec):
    """A post-hoc baseline: ``structure`` is the transform itself (no training, and the only
    state, DWP's mask, is a buffer the checkpoint restores)."""

    paper = _PAPER

    def build(self, model: nn.Module, params) -> nn.Module:
        raise NotImplementedError

    def apply(self, model: nn.Module, params, ctx: DefenseContext) -> dict[str, nn.Module]:
        return {"": self.build(model, params)}

    def structure(self, model: nn.Module, params) -> nn.Module:
        return self.build(model, params)

    def coverage(self, model: nn.Module, params):
        if isinstance(params, _ActParams):
            return activation_coverage(self.name, model, params.layers)
        return layer_coverage(self.name, model, params.layers)


class _ActParams(DefenseParams):
    layers: Union[Literal["relu", "activations"], list[str]] = "relu"


class _WeightParams(DefenseParams):
    layers: Optional[list[str]] = None


@register_defense
class DropoutDefense(_Baseline):
    """``dropout`` (DRO): test-time inverted dropout after every ReLU."""

    name = "dropout"

    class Params(_ActParams):
        rate: float = Field(0.1, ge=0, lt=1, description="drop probability")

    def build(self, model, params):
        return dropout_after_relu(model, params.rate, params.layers)


@register_defense
class RNADefense(_Baseline):
    """``rna``: additive Gaussian noise N(0, s^2) on activations after every ReLU."""

    name = "rna"

    class Params(_ActParams):
        s: float = Field(0.1, ge=0)

    def build(self, model, params):
        return activation_noise(model, params.s, "additive", params.layers)


@register_defense
class RSADefense(_Baseline):
    """``rsa``: multiplicative Gaussian noise N(1, s^2) on activations after every ReLU."""

    name = "rsa"

    class Params(_ActParams):
        s: float = Field(0.1, ge=0)

    def build(self, model, params):
        return activation_noise(model, params.s, "multiplicative", params.layers)


@register_defense
class RNWDefense(_Baseline):
    """``rnw``: additive Gaussian noise N(0, s^2) on every Conv/Linear weight, per forward."""

    name = "rnw"

    class Params(_WeightParams):
        s: float = Field(0.01, ge=0)

    def build(self, model, params):
        return weight_noise(model, "additive", params.s, params.layers)


@register_defense
class RSWDefense(_Baseline):
    """``rsw``: multiplicative Gaussian noise N(1, s^2) on every Conv/Linear weight, per forward."""

    name = "rsw"

    class Params(_WeightParams):
        s: float = Field(0.1, ge=0)

    def build(self, model, params):
        return weight_noise(model, "multiplicative", params.s, params.layers)


@register_defense
class SWPDefense(_Baseline):
    """``swp``: SAP-style sampling of each weight tensor (``frac * numel`` draws), per forward."""

    name = "swp"

    class Params(_WeightParams):
        frac: float = Field(1.0, gt=0, description="draws per weight (k/100 in the paper)")

    def build(self, model, params):
        return weight_noise(model, "sap", params.frac, params.layers)


@register_defense
class DWPDefense(_Baseline):
    """``dwp``: deterministic top-k magnitude weight pruning without fine-tuning."""

    name = "dwp"

    class Params(_WeightParams):
        keep: float = Field(0.5, gt=0, le=1, description="fraction of each weight tensor kept")

    def build(self, model, params):
        return deterministic_weight_pruning(model, params.keep, params.layers)

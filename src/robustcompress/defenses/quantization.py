"""Robust k-bit weight quantisation with mu-law mapping (Song, Fallon & Li, AAAI-21 RSEML workshop).

"Improving Adversarial Robustness in Weight-quantized Neural Networks" (arXiv 2012.14965):
post-training 3-bit weight quantisation, a mu-law nonlinear weight mapping on the last layers, the
spectral norm of the quantisation error ``||dW||_2`` per layer as the criterion, and feedback
learning (:mod:`robustcompress.defenses.feedback_learning`) before quantising.

Implementation: each Linear/Conv weight gets a :class:`robustcompress.nn.quant.FakeQuantize`
parametrisation (so the float weights stay trainable for quantisation-aware training with
straight-through gradients, and a pruning mask, if any, is applied first), and an
``export_tensors()`` that stores packed k-bit codes plus one float scale per layer/channel, so an
exported 3-bit model is about 3/32 of the float size.

Choices the paper leaves open (documented defaults, configurable): symmetric restricted-range
quantiser with ``2^k - 1`` levels, per layer; biases stay float; every Linear/Conv is quantised
(first and last included); mu = 255 (telephony); the mu-law mapping is a companding grid
(``mu_mode="grid"``), or stays in the deployed weights with ``mu_mode="map"``; no QAT by default
(the paper quantises post-training only). Our extension ``qat_epochs > 0`` fine-tunes the
quantised model with straight-through gradients using the run's training recipe (batch size,
optimizer, lr, schedule, crops, ...; :meth:`~robustcompress.defenses.base.DefenseContext.train`)
with only the epochs overridden; give the stage its own lr in the defense's ``training:``.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional, Sequence

from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from robustcompress.defenses.base import (
    DefenseParams,
    DefenseSpec,
    record_defense,
    register_defense,
    replace_last_params,
)
from robustcompress.errors import UserInputError
from robustcompress.nn.masks import attach_export, get_quantizer, prunable_layers
from robustcompress.nn.quant import FakeQuantize


def add_quantizers(model: nn.Module, bits: Optional[int] = 3, *, per_channel: bool = False,
                   mu_law_layers: int = 0, mu: float = 255.0, mu_mode: str = "grid",
                   layers: Optional[Sequence[str]] = None,
                   surrogate: str = "identity") -> nn.Module:
    """Put a weight fake-quantiser on every Linear/Conv layer of ``model`` in place.

    Parameters
    ----------
    bits : weight bit width (2..8); ``None`` with ``mu_law_layers > 0`` applies only the float
        mu-law map to those layers (the paper's "+mu" rows without quantisation, ``mu_mode="map"``).
    per_channel : one scale per output channel instead of per layer.
    mu_law_layers : the last this many layers use the mu-law quantiser (paper: the last layers;
        e.g. 1 for the MNIST CNN).
    layers : restrict to these layer names (default: all Linear/Conv layers).
    """
    chosen = prunable_layers(model, names=layers)
    if mu_law_layers < 0 or mu_law_layers > len(chosen):
        raise UserInputError(f"mu_law_layers must be in [0, {len(chosen)}] for this model, "
                             f"got {mu_law_layers}")
    for i, (name, module) in enumerate(chosen):
        use_mu = i >= len(chosen) - mu_law_layers
        if bits is None and not use_mu:
            continue
        if get_quantizer(module) is not None:
            raise UserInputError(f"layer {name!r} is already quantised")
        fq = FakeQuantize(bits, per_channel, mu=mu if use_mu else None, mu_mode=mu_mode,
                          surrogate=surrogate)
        parametrize.register_parametrization(module, "weight", fq)
        module.weight_bits = bits if bits is not None else 32  # read by metrics.compression
        attach_export(module)
    return model


def quantize(model: nn.Module, bits: Optional[int] = 3, **kw) -> nn.Module:
    """A weight-quantised deep copy of ``model`` (see :func:`add_quantizers` for ``kw``).

    The copy records ``{"name": "quantize", "params": ...}`` in ``robustcompress_defenses``.
    """
    q = add_quantizers(copy.deepcopy(model), bits, **kw)
    params = {"bits": bits, **{k: v for k, v in kw.items() if k in (
        "per_channel", "mu_law_layers", "mu", "mu_mode")}}
    return record_defense(q, "quantize", params, base=model)


def float_reference(model: nn.Module) -> nn.Module:
    """A copy of a quantised model with the quantisers removed (the float weights they act on)."""
    ref = copy.deepcopy(model)
    for _, module in list(ref.named_modules()):
        fq = get_quantizer(module)
        if fq is not None:
            plist = module.parametrizations.weight
            idx = [i for i, p in enumerate(plist) if p is fq][0]
            if idx != len(plist) - 1:
                raise UserInputError("the quantiser must be the last weight parametrisation")
            plist[idx] = nn.Identity()
    return ref


@register_defense
class QuantizeDefense(DefenseSpec):
    """k-bit weight quantisation (PTQ, optional QAT) with mu-law on the last layers."""

    name = "quantize"
    paper = ("Song, Fallon & Li, Improving Adversarial Robustness in Weight-quantized Neural "
             "Networks, AAAI-21 RSEML workshop")

    class Params(DefenseParams):
        bits: Optional[int] = Field(3, ge=2, le=8)
        per_channel: bool = False
        mu_law_layers: int = Field(0, ge=0, description="the last N layers use mu-law")
        mu: float = Field(255.0, gt=0)
        mu_mode: Literal["grid", "map"] = "grid"
        qat_epochs: int = Field(0, ge=0, description="quantisation-aware fine-tuning epochs (STE)")

    def apply(self, model, params, ctx):
        q = quantize(model, params.bits, per_channel=params.per_channel,
                     mu_law_layers=params.mu_law_layers, mu=params.mu, mu_mode=params.mu_mode)
        replace_last_params(q, params.model_dump())
        if params.qat_epochs > 0:
            q = ctx.train(q, epochs=params.qat_epochs)
        return {"": q}

    def coverage(self, model, params):
        from robustcompress.defenses.base import layer_coverage

        return layer_coverage(self.name, model)

    def structure(self, model, params):
        return add_quantizers(model, params.bits, per_channel=params.per_channel,
                              mu_law_layers=params.mu_law_layers, mu=params.mu,
                              mu_mode=params.mu_mode)

"""Stochastic Activation Pruning as a post-hoc defense (Dhillon et al., ICLR 2018).

``sap(model, frac=1.0)`` returns a deep copy of ``model`` with a :class:`robustcompress.nn.sap.SAP`
layer after every ReLU *application* (the paper: "we apply the method to the ReLU activation maps
at each layer"; the original code puts it after every ReLU of a pre-activation ResNet-20, including
the last one before global pooling). No fine-tuning. Sites are found by
:mod:`robustcompress.nn.surgery`: ``nn.ReLU``/``nn.ReLU6`` modules, a module used several times
(one SAP per call), ``F.relu``/``torch.relu``/``x.relu()``; ``layers="activations"`` also covers
GELU, SiLU, ... (SAP then samples by ``|h|``). Where each site is the only call of its module, the
module is replaced by ``nn.Sequential(relu, SAP(...))``; otherwise the traced graph is rewritten.
SAP has no parameters or buffers, so the state dict keys are unchanged: a checkpoint of the
defended model loads into the base architecture plus :meth:`SAPDefense.structure`.

Predictions of a SAP model are random; the evaluator averages ``mc_samples`` softmax outputs
(:func:`robustcompress.attacks.mc_predict`; the paper uses 100) and attacks with EOT, because the
layers declare ``stochastic=True`` and ``granularity="sample"``. :func:`predict` is a shortcut.

ADV+SAP (the paper's Sec. 4.1.3) is SAP applied post hoc to an adversarially trained model: train
the base model with an adversarial objective (config: ``training.objective`` / the
``adversarial`` defense), then apply ``sap`` to it (a ``sap`` entry after it in the config's
defense list, or ``robustcompress sap --checkpoint ADV_CHECKPOINT``). See the SAP section of README.md.

Deviations from the original: see :mod:`robustcompress.nn.sap` (draw count at least 1; the
exact sampler's float resolution). The original seeds its RNG from the wall clock on every
forward; we draw from a ``torch.Generator`` the evaluator controls (or the global RNG).
"""

from __future__ import annotations

import copy
from typing import Callable, Literal, Optional, Sequence, Union

import torch
from pydantic import Field
from torch import nn

from robustcompress.defenses.base import (
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    activation_coverage,
    record_defense,
    register_defense,
)
from robustcompress.errors import UserInputError
from robustcompress.nn import surgery
from robustcompress.nn.sap import METHODS, SAP

Layers = Union[Literal["relu", "activations"], Sequence[str]]


def insert_after(model: nn.Module, make: Callable[[str], nn.Module], layers: Layers = "relu",
                 example: Optional[torch.Tensor] = None) -> nn.Module:
    """Put ``make(site name)`` after every selected activation application of ``model`` (in place
    where the module tree allows it; see :func:`robustcompress.nn.surgery.insert_after`) and
    return the rewritten model. ``layers``: ``"relu"`` (every ReLU/ReLU6 application: module,
    reused module or ``F.relu``), ``"activations"`` (every activation) or a list of site/module
    names. A site that cannot be rewritten raises :class:`~robustcompress.nn.surgery.SiteError`."""
    return surgery.insert_after(model, lambda site: make(site.name), layers, example=example)


def sap(model: nn.Module, frac: float = 1.0, layers: Layers = "relu", method: str = "exact",
        generator: Optional[torch.Generator] = None,
        example: Optional[torch.Tensor] = None) -> nn.Module:
    """A deep copy of ``model`` with stochastic activation pruning after every ReLU.

    Parameters
    ----------
    model : any ``nn.Module`` (see :mod:`robustcompress.nn.surgery` for what is found).
    frac : draws per activation, ``r = int(frac * numel)`` per sample; 1.0 is SAP-100.
    layers : ``"relu"`` (every ReLU/ReLU6 application), ``"activations"`` (every activation), or
        a list of site names (``robustcompress defenses inspect``) or module names to put SAP after
        (e.g. convs, as Athalye et al.'s reimplementation does; SAP then uses ``|h|``).
    method : ``"exact"`` (default) or ``"bernoulli"`` (approximation), see :mod:`robustcompress.nn.sap`.
    generator : random source of every SAP layer (``None``: global RNG; the evaluator sets its
        own with :func:`robustcompress.nn.use_generator`).
    example : a batch of inputs, needed only if the model does not trace with ``torch.fx`` and
        was not built by the library (sites are then found by running it once).

    Returns
    -------
    The defended copy; ``model`` is not modified. The copy records
    ``{"name": "sap", "params": {...}}`` in ``robustcompress_defenses``.
    """
    if method not in METHODS:
        raise UserInputError(f"unknown SAP method {method!r}; choose one of {', '.join(METHODS)}")
    out = insert_after(copy.deepcopy(model), lambda _: SAP(frac, method, generator), layers, example)
    params = {"frac": float(frac), "layers": layers if isinstance(layers, str) else list(layers),
              "method": method}
    return record_defense(out, "sap", params)


def predict(model: nn.Module, x: torch.Tensor, mc_samples: Optional[int] = None, *,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """MC-averaged class probabilities ``[B, C]`` (the paper averages 100 draws); a thin alias of
    :func:`robustcompress.attacks.mc_predict`."""
    from robustcompress.attacks import mc_predict

    return mc_predict(model, x, mc_samples=mc_samples, generator=generator)


@register_defense
class SAPDefense(DefenseSpec):
    """``sap``: stochastic activation pruning after every ReLU, post hoc (no training)."""

    name = "sap"
    paper = "Dhillon et al., Stochastic Activation Pruning for Robust Adversarial Defense, ICLR 2018"

    class Params(DefenseParams):
        frac: float = Field(1.0, gt=0, description="draws per activation; 1.0 = SAP-100")
        layers: Union[Literal["relu", "activations"], list[str]] = "relu"
        method: Literal["exact", "bernoulli"] = "exact"

    def apply(self, model: nn.Module, params: "SAPDefense.Params",
              ctx: DefenseContext) -> dict[str, nn.Module]:
        return {"": sap(model, params.frac, params.layers, params.method)}

    def coverage(self, model: nn.Module, params: "SAPDefense.Params"):
        return activation_coverage(self.name, model, params.layers)

    def structure(self, model: nn.Module, params: "SAPDefense.Params") -> nn.Module:
        return sap(model, params.frac, params.layers, params.method)

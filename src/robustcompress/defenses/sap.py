"""Stochastic Activation Pruning as a post-hoc defense (Dhillon et al., ICLR 2018).

``sap(model, frac=1.0)`` returns a deep copy of ``model`` with a :class:`robustcompress.nn.sap.SAP`
layer after every ``nn.ReLU`` (the paper: "we apply the method to the ReLU activation maps at each
layer"; the original code puts it after every ReLU of a pre-activation ResNet-20, including the
last one before global pooling). No fine-tuning. Each ReLU module is replaced by
``nn.Sequential(relu, SAP(...))``, so the module tree shows the defense and the state dict keys are
unchanged (SAP has no parameters or buffers): a checkpoint of the defended model loads into the
base architecture plus :meth:`SAPDefense.structure`.

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

from robustcompress.defenses.base import DefenseContext, DefenseParams, DefenseSpec, register_defense
from robustcompress.errors import UserInputError
from robustcompress.nn.sap import METHODS, SAP

Layers = Union[Literal["relu"], Sequence[str]]


def _targets(model: nn.Module, layers: Layers) -> list[str]:
    """Names of the modules to put a layer after: every ``nn.ReLU`` or the given names."""
    if isinstance(layers, str):
        if layers != "relu":
            raise UserInputError(f"layers={layers!r}: use 'relu' (after every ReLU) or a list of "
                                 "module names (see `print(model)`)")
        names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
        if not names:
            raise UserInputError("the model has no nn.ReLU module to put the layer after; pass "
                                 "layers=[module names] (functional relu cannot be found)")
        return names
    names = list(layers)
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known or n == ""]
    if missing:
        raise UserInputError(f"no module named {missing} in the model; choose among "
                             f"{[n for n in known if n][:40]}")
    return names


def insert_after(model: nn.Module, make: Callable[[str], nn.Module],
                 layers: Layers = "relu") -> nn.Module:
    """Replace each target module ``m`` (see ``layers``) by ``nn.Sequential(m, make(name))``,
    in place, and return ``model``. ``layers="relu"`` targets every ``nn.ReLU`` instance."""
    for name in _targets(model, layers):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Sequential(getattr(parent, child), make(name)))
    return model


def record(model: nn.Module, name: str, params: dict) -> nn.Module:
    """Append ``{"name", "params"}`` to ``model.robustcompress_defenses`` (the checkpoint recipe)."""
    model.robustcompress_defenses = list(getattr(model, "robustcompress_defenses", []) or []) + [
        {"name": name, "params": dict(params)}]
    return model


def sap(model: nn.Module, frac: float = 1.0, layers: Layers = "relu", method: str = "exact",
        generator: Optional[torch.Generator] = None) -> nn.Module:
    """A deep copy of ``model`` with stochastic activation pruning after every ReLU.

    Parameters
    ----------
    model : any ``nn.Module`` whose ReLUs are separate ``nn.ReLU`` modules (all zoo models).
    frac : draws per activation, ``r = int(frac * numel)`` per sample; 1.0 is SAP-100.
    layers : ``"relu"`` or a list of module names to put SAP after (e.g. convs, as Athalye et
        al.'s reimplementation does; SAP then uses ``|h|``).
    method : ``"exact"`` (default) or ``"bernoulli"`` (approximation), see :mod:`robustcompress.nn.sap`.
    generator : random source of every SAP layer (``None``: global RNG; the evaluator sets its
        own with :func:`robustcompress.nn.use_generator`).

    Returns
    -------
    The defended copy; ``model`` is not modified. The copy records
    ``{"name": "sap", "params": {...}}`` in ``robustcompress_defenses``.
    """
    if method not in METHODS:
        raise UserInputError(f"unknown SAP method {method!r}; choose one of {', '.join(METHODS)}")
    out = insert_after(copy.deepcopy(model), lambda _: SAP(frac, method, generator), layers)
    params = {"frac": float(frac), "layers": layers if isinstance(layers, str) else list(layers),
              "method": method}
    return record(out, "sap", params)


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
        layers: Union[Literal["relu"], list[str]] = "relu"
        method: Literal["exact", "bernoulli"] = "exact"

    def apply(self, model: nn.Module, params: "SAPDefense.Params",
              ctx: DefenseContext) -> dict[str, nn.Module]:
        return {"": sap(model, params.frac, params.layers, params.method)}

    def structure(self, model: nn.Module, params: "SAPDefense.Params") -> nn.Module:
        return sap(model, params.frac, params.layers, params.method)

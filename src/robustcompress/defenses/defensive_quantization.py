"""Defensive Quantization (Lin, Gan & Han, ICLR 2019): k-bit activations + Lipschitz regulariser.

Every ``nn.ReLU`` of the model is replaced by its own :class:`~robustcompress.nn.act_quant.ActQuant`
(clip to ``[0, hi]``, ``2^bits`` uniform levels, straight-through backward), and the model is
fine-tuned with :class:`~robustcompress.training.objectives.LipschitzRegularized`, i.e.
cross-entropy (or adversarial training, ``adversarial=True``) plus
``beta / 2 * sum_l ||W_l^T W_l - I||_F^2``.

[unspecified] in the paper as recalled (defenses.md): the activation range (here ``hi = 1``, or
learned when ``learn_range``), whether weights are quantised too (here: full precision weights),
beta (``3e-4``, the order recalled from the paper). Deviation: the Gram of the smaller side of
non-square weights is penalised (see :mod:`robustcompress.nn.act_quant`). Fine-tuning (our
choice: from the given model, ``epochs`` epochs) uses the run's training recipe (batch size,
optimizer, lr, schedule, crops, ...) with only the epochs overridden
(:meth:`~robustcompress.defenses.base.DefenseContext.train`; outside a run TrainConfig's defaults).

Evaluation note: the quantisers are declared non-differentiable; an honest white-box attack uses
the BPDA/STE surrogate (:func:`robustcompress.nn.straight_through`), never the zero gradient.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from robustcompress.defenses.base import (
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    record_defense,
    register_defense,
)
from robustcompress.nn.act_quant import replace_relus


def defensive_quantization(model: nn.Module, dataset=None, *, bits: Optional[int] = 4,
                           beta: float = 3e-4, epochs: int = 3, hi: float = 1.0,
                           learn_range: bool = False, base_objective=None, config=None,
                           fit_fn=None, progress: bool = False) -> nn.Module:
    """Quantise the activations of a deep copy of ``model`` and fine-tune it with the Lipschitz
    regulariser (skipped when ``dataset`` is None or ``epochs == 0``); returns it in eval mode."""
    from robustcompress.training import TrainConfig, fit
    from robustcompress.training.objectives import LipschitzRegularized

    net = replace_relus(copy.deepcopy(model), bits, hi=hi, learn_range=learn_range)
    obj = LipschitzRegularized(beta, base_objective)
    if fit_fn is not None:
        net = fit_fn(net, obj) or net
    elif dataset is not None and epochs > 0:
        fit(net, dataset, config or TrainConfig(epochs=epochs), objective=obj, progress=progress)
    net.eval()
    return net


@register_defense
class DefensiveQuantizationDefense(DefenseSpec):
    """k-bit activation quantisation + orthogonality (Lipschitz) regulariser, fine-tuned."""

    name = "defensive_quantization"
    paper = "Lin, Gan & Han, ICLR 2019"

    class Params(DefenseParams):
        bits: Optional[int] = 4
        beta: float = 3e-4
        epochs: int = 3
        hi: float = 1.0
        learn_range: bool = False
        adversarial: bool = False  # DQ + PGD adversarial training
        eps: float = 0.3
        steps: int = 10

    def apply(self, model: nn.Module, params, ctx: DefenseContext) -> dict[str, nn.Module]:
        base = None
        if params.adversarial:
            from robustcompress.attacks import ThreatModel
            from robustcompress.training.objectives import AdversarialTraining

            base = AdversarialTraining(ThreatModel.from_spec("linf", params.eps, ctx.dataset.info),
                                       steps=params.steps,
                                       generator=torch.Generator().manual_seed(ctx.seed))
        fit_fn = None
        if params.epochs > 0:
            def fit_fn(net, obj):  # the run's recipe, this stage's epochs
                return ctx.train(net, obj, epochs=params.epochs)
        net = defensive_quantization(
            model, ctx.dataset, bits=params.bits, beta=params.beta, epochs=params.epochs,
            hi=params.hi, learn_range=params.learn_range, base_objective=base, fit_fn=fit_fn,
            progress=ctx.progress)
        return {"": record_defense(net, self.name, params.model_dump(mode="json"), base=model)}

    def coverage(self, model: nn.Module, params):
        from robustcompress.defenses.base import activation_coverage
        from robustcompress.nn.surgery import find_sites

        cov = activation_coverage(self.name, model, "relu")
        other = sorted({s.kind for s in find_sites(model).sites} - {"relu"})
        if other and not cov.error:
            cov.error = f"DQ quantises ReLU outputs only; the model also applies {', '.join(other)}"
        return cov

    def structure(self, model: nn.Module, params) -> nn.Module:
        return replace_relus(model, params.bits, hi=params.hi, learn_range=params.learn_range)

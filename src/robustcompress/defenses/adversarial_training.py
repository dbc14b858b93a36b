"""Adversarial training baselines: FGSM (Goodfellow et al. 2015), R+FGSM (Tramer et al. 2018) and
PGD (Madry et al. 2018), including the random-steps / random-eps variant used by the defensive
tensorization paper.

The objective is :class:`robustcompress.training.objectives.AdversarialTraining`; the attacks are
the library's own (:mod:`robustcompress.attacks`), crafted in the input box of the dataset (eps in
input units; normalisation lives inside the model).

Deviation from the papers' recipes: by default the defense *fine-tunes* the model it is given (the
pipeline's standard-trained base) for ``epochs`` epochs instead of training from scratch for the
full schedule; ``from_scratch=True`` re-initialises the weights first (needs a zoo model). The
registered defense trains with the run's training recipe (batch size, optimizer, lr, flips/crops,
...; :meth:`~robustcompress.defenses.base.DefenseContext.train`), overriding only ``epochs``,
and ``lr_steps`` / ``weight_decay`` when given.

The AT baseline of the ANP-VS code (Madaan et al. 2020, ``run.py`` in mode ``base`` with
``adv_train``) is ``mix=1/3`` (``(CE(x) + 2 CE(x_adv)) / 3``), Adam 1e-3 with L2 1e-4
(``weight_decay``) and the lr x0.1 at 50% and 70% of training (``lr_steps=[0.5, 0.7]``), i.e. the
ANP-VS weight optimiser without masks, KL and VS term.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional, Union

import torch
from pydantic import Field
from torch import nn

from robustcompress.defenses.base import (
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    record_defense,
    register_defense,
)
from robustcompress.errors import UserInputError
from robustcompress.training.config import LrSteps, recipe_overrides

#: Default weight of the clean loss per attack: Goodfellow et al. (and Tramer et al.) mix half
#: clean / half adversarial; Madry et al. train on adversarial examples only.
DEFAULT_MIX = {"fgsm": 0.5, "rfgsm": 0.5, "pgd": 0.0}


def make_objective(threat, attack: str = "pgd", *, steps: int = 10, step_size: Optional[float] = None,
                   mix: Optional[float] = None, random_steps: bool = False,
                   random_eps: bool = False, min_eps_fraction: float = 0.0,
                   attack_mode: str = "eval", generator: Optional[torch.Generator] = None):
    """The :class:`~robustcompress.training.objectives.AdversarialTraining` objective with the
    paper default mix for ``attack`` when ``mix`` is None."""
    from robustcompress.training.objectives import AdversarialTraining

    return AdversarialTraining(
        threat, attack=attack, steps=steps, step_size=step_size,
        mix=DEFAULT_MIX.get(attack, 0.0) if mix is None else mix, random_steps=random_steps,
        random_eps=random_eps, min_eps_fraction=min_eps_fraction, attack_mode=attack_mode,
        generator=generator)


def _reinit(model: nn.Module, seed: int) -> nn.Module:
    from robustcompress.models import build_from_spec

    spec = getattr(model, "robustcompress_spec", None)
    if spec is None:
        raise UserInputError("from_scratch=True needs a zoo model (built with build_model); "
                             "use from_scratch=False to fine-tune this model")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = build_from_spec(spec)
    return fresh.to(next(model.parameters()).device)


def adversarial_training(model: nn.Module, dataset, *, attack: str = "pgd",
                         eps: Union[float, str] = 0.3, norm: str = "linf",
                         eps_scale: Optional[float] = None, epochs: int = 5, config=None,
                         fit_fn=None, generator: Optional[torch.Generator] = None,
                         progress: bool = False, **objective_kw) -> nn.Module:
    """Adversarially train a deep copy of ``model`` on ``dataset``; returns it in eval mode.

    ``objective_kw`` go to :func:`make_objective` (``steps``, ``step_size``, ``mix``,
    ``random_steps``, ``random_eps``, ``min_eps_fraction``, ``attack_mode``). ``fit_fn(model,
    objective) -> model`` overrides the training call (the experiment runner passes its own).
    """
    from robustcompress.attacks import ThreatModel
    from robustcompress.training import TrainConfig, fit

    threat = ThreatModel.from_spec(norm, eps, dataset.info, eps_scale=eps_scale)
    net = copy.deepcopy(model)
    obj = make_objective(threat, attack, generator=generator, **objective_kw)
    if fit_fn is not None:
        net = fit_fn(net, obj) or net
    else:
        fit(net, dataset, config or TrainConfig(epochs=epochs), objective=obj, progress=progress)
    net.eval()
    return net


@register_defense
class AdversarialTrainingDefense(DefenseSpec):
    """FGSM / R+FGSM / PGD adversarial training (the papers' common baseline)."""

    name = "adversarial_training"
    paper = "Goodfellow et al. 2015; Tramer et al. 2018; Madry et al. 2018"

    class Params(DefenseParams):
        attack: Literal["fgsm", "rfgsm", "pgd"] = "pgd"
        eps: Union[float, str] = 0.3
        eps_scale: Optional[float] = None
        norm: str = "linf"
        steps: int = 10
        step_size: Optional[float] = None
        mix: Optional[float] = None
        random_steps: bool = False
        random_eps: bool = False
        min_eps_fraction: float = 0.0
        attack_mode: Literal["eval", "train"] = "eval"
        epochs: int = 5
        from_scratch: bool = False
        #: fractions of training at which the lr is multiplied by 0.1 (ANP_VS code: [0.5, 0.7])
        lr_steps: LrSteps = []
        #: L2 weight decay of this stage (None: the run's training setting; ANP_VS code: 1e-4)
        weight_decay: Optional[float] = Field(None, ge=0)

    def apply(self, model: nn.Module, params, ctx: DefenseContext) -> dict[str, nn.Module]:
        start = _reinit(model, ctx.seed) if params.from_scratch else model
        if params.from_scratch:
            start.robustcompress_spec = model.robustcompress_spec
        gen = torch.Generator().manual_seed(ctx.seed)
        recipe = recipe_overrides(params.epochs, params.lr_steps, params.weight_decay)

        def fit_fn(net, obj):  # the run's recipe; this stage's epochs, lr steps, weight decay
            return ctx.train(net, obj, epochs=params.epochs, **recipe)

        net = adversarial_training(
            start, ctx.dataset, attack=params.attack, eps=params.eps, norm=params.norm,
            eps_scale=params.eps_scale, epochs=params.epochs, fit_fn=fit_fn, generator=gen,
            progress=ctx.progress, steps=params.steps, step_size=params.step_size, mix=params.mix,
            random_steps=params.random_steps, random_eps=params.random_eps,
            min_eps_fraction=params.min_eps_fraction, attack_mode=params.attack_mode)
        return {"": record_defense(net, self.name, params.model_dump(mode="json"), base=model)}

"""An independently trained copy of the base architecture: the black-box surrogate.

The weight-quantization paper (Song et al., AAAI-21 RSEML) and ANP-VS report *black-box*
accuracy: adversarial examples crafted on a separately trained model and transferred to the
defended one. ``method: independent`` trains the same architecture from a fresh initialisation
with another seed (same data and training settings unless overridden); refer to it from a
paper-protocol attack with ``{attack: transfer, surrogate: <its name>}``.

``seed`` is an offset from the run's seed (the surrogate uses ``run seed + seed``), so a run
repeated with ``run --seed N`` still gets a surrogate that differs from its base model (an
absolute seed 1 made the surrogate of a seed-1 run the base's own early checkpoint: same init,
same batches). For seed-0 runs this is the absolute seed, as before.

It is not a defense; it is registered here so that a config can build it like any variant.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from robustcompress.defenses.base import DefenseContext, DefenseParams, DefenseSpec, register_defense
from robustcompress.errors import UserInputError


class IndependentParams(DefenseParams):
    seed: int = Field(default=1, description="offset from the run's seed (not 0: that is the base)")
    epochs: Optional[int] = Field(default=None, ge=1)


def fresh_copy(model: nn.Module, info, seed: int) -> nn.Module:
    """The same zoo architecture, newly initialised from ``seed`` (global RNG left untouched)."""
    from robustcompress.models import build_from_spec

    spec = getattr(model, "robustcompress_spec", None)
    if spec is None:
        raise UserInputError("method 'independent' needs a zoo model (built by build_model) as its base")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_from_spec(spec)


@register_defense
class IndependentModel(DefenseSpec):
    name = "independent"
    paper = "black-box surrogate: the base architecture trained from scratch with another seed"
    Params = IndependentParams

    def apply(self, model: nn.Module, params: IndependentParams, ctx: DefenseContext) -> dict[str, nn.Module]:
        if ctx.fit is None:
            raise UserInputError("method 'independent' trains a model: run it through `robustcompress run`")
        if params.seed == 0:
            raise UserInputError("method 'independent': seed is an offset from the run's seed; 0 "
                                 "would train the base model again (use 1, 2, ...)")
        seed = ctx.seed + params.seed
        overrides = {"seed": seed, **({"epochs": params.epochs} if params.epochs else {})}
        return {"": ctx.fit(fresh_copy(model, ctx.dataset.info, seed), **overrides)}

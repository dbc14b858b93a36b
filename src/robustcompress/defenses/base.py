"""Defense registry: how a method plugs into the config schema, the runner, the demo and reports.

Each defense lives in one file named after the method (``defenses/sap.py``, ...) with a plain
Python API (e.g. ``sap(model, frac=1.0)``) *and* a registered :class:`DefenseSpec` adapter::

    @register_defense
    class SAPDefense(DefenseSpec):
        name = "sap"
        paper = "Dhillon et al., ICLR 2018"
        class Params(DefenseParams):
            frac: float = 1.0
        def apply(self, model, params, ctx):
            return {"": sap(copy.deepcopy(model), frac=params.frac)}

``apply`` must not modify ``model`` in place (deep-copy it), and returns a dict from a variant
suffix (``""`` for one variant, ``"round3"`` for progressive pruning rounds, ...) to a model.
The returned models declare their own randomness / non-differentiability through
:mod:`robustcompress.nn.protocol`, so the evaluator needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from robustcompress.data.info import Dataset
from robustcompress.errors import UserInputError


class DefenseParams(BaseModel):
    """Base of every defense's parameter schema (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class DefenseContext:
    """What a defense may use besides the base model.

    ``fit(model, objective=None, **train_overrides) -> nn.Module`` trains with the run's training
    settings (see :func:`robustcompress.training.fit`); ``workdir`` is a private folder for
    checkpoints so fine-tuning resumes after a crash; ``base_models`` holds other trained models
    of the run (e.g. a separately trained surrogate) by name.
    """

    dataset: Dataset
    device: torch.device
    seed: int = 0
    workdir: Optional[Path] = None
    fit: Optional[Callable[..., nn.Module]] = None
    progress: bool = True
    base_models: dict[str, nn.Module] = field(default_factory=dict)


class DefenseSpec:
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Params: ClassVar[type[DefenseParams]] = DefenseParams

    def apply(self, model: nn.Module, params: DefenseParams, ctx: DefenseContext) -> dict[str, nn.Module]:
        """Convert (and, if the method needs it, train/fine-tune) a deep copy of ``model``."""
        raise NotImplementedError

    def structure(self, model: nn.Module, params: DefenseParams) -> nn.Module:
        """The defended *architecture* without any training, used to rebuild a checkpoint.

        ``load_checkpoint`` builds the base model, calls ``structure`` for each recorded defense
        (in order), then loads the saved state dict. The default assumes the defense does not
        change the module tree's parameters/buffers (e.g. adversarial training).
        """
        return model


_DEFENSES: dict[str, DefenseSpec] = {}


def register_defense(cls: type[DefenseSpec]) -> type[DefenseSpec]:
    if not cls.name or cls.name in _DEFENSES:
        raise RuntimeError(f"defense name {cls.name!r} missing or registered twice")
    _DEFENSES[cls.name] = cls()
    return cls


def get_defense(name: str) -> DefenseSpec:
    import robustcompress.defenses  # noqa: F401  (registers all)

    if name not in _DEFENSES:
        raise UserInputError(
            f"unknown defense {name!r}; choose one of: {', '.join(sorted(_DEFENSES))}"
        )
    return _DEFENSES[name]


def list_defenses() -> dict[str, DefenseSpec]:
    import robustcompress.defenses  # noqa: F401

    return dict(sorted(_DEFENSES.items()))


def parse_params(name: str, raw: dict[str, Any]) -> DefenseParams:
    return get_defense(name).Params(**(raw or {}))

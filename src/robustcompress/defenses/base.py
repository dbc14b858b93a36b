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

Every defended model carries its *defense record* (:func:`record_defense`,
:func:`defense_records`): ``[{"name", "params"}]`` in the order applied, which a checkpoint stores
and :func:`rebuild_defenses` replays through each :meth:`DefenseSpec.structure`. This module owns
it and registers it with the checkpoint code
(:func:`~robustcompress.training.checkpoint.register_checkpoint_part`), so ``training`` never
imports ``defenses``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from robustcompress.data.info import Dataset
from robustcompress.errors import UserInputError
from robustcompress.training.checkpoint import register_checkpoint_part


class DefenseParams(BaseModel):
    """Base of every defense's parameter schema (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class DefenseContext:
    """What a defense may use besides the base model.

    A defense that trains calls :meth:`train`, never ``fit`` with a TrainConfig of its own, so
    that inside an experiment it trains with the run's recipe. ``recipe`` is that recipe (the
    run's ``training:`` section, the defense's own ``training:`` on top, and the run seed; None
    outside a run); ``fit(model, objective=None, dataset=None, **overrides) -> nn.Module`` is the
    runner's resumable training call (checkpoints in the run folder, the run's device);
    ``workdir`` is a private folder for checkpoints so fine-tuning resumes after a crash;
    ``base_models`` holds other trained models of the run (e.g. a separately trained surrogate)
    by name.
    """

    dataset: Dataset
    device: torch.device
    seed: int = 0
    workdir: Optional[Path] = None
    fit: Optional[Callable[..., nn.Module]] = None
    progress: bool = True
    base_models: dict[str, nn.Module] = field(default_factory=dict)
    recipe: Optional[dict[str, Any]] = None

    def train_config(self, defaults: Optional[dict[str, Any]] = None, **overrides):
        """The :class:`~robustcompress.training.TrainConfig` of a training a defense runs: the
        run's ``recipe`` (outside a run: TrainConfig's defaults with ``seed``, and the defense's
        standalone ``defaults``, e.g. ANP-VS's batch of 64), then ``overrides``: only what the
        defense itself prescribes (its epochs, its paper's schedule, a per-round seed), each
        listed in the defense's docstring. The one place a defense's training recipe is made."""
        from robustcompress.training import TrainConfig

        base = dict(self.recipe) if self.recipe is not None else {"seed": self.seed, **(defaults or {})}
        return TrainConfig(**{**base, **overrides})

    def train(self, model: nn.Module, objective=None, *, dataset: Optional[Dataset] = None,
              defaults: Optional[dict[str, Any]] = None, checkpoint_dir=None,
              **overrides) -> nn.Module:
        """Train ``model`` (in place; returned) with :meth:`train_config` on ``dataset``
        (default: the context's; feedback learning passes its augmented set): through the
        runner's ``fit`` when there is one, else :func:`robustcompress.training.fit` on
        ``device`` (``checkpoint_dir``: resumable there; the runner chooses its own)."""
        if self.fit is not None:
            extra = {} if dataset is None else {"dataset": dataset}
            return self.fit(model, objective=objective, **extra, **overrides)
        from robustcompress.training import fit

        return fit(model, self.dataset if dataset is None else dataset,
                   self.train_config(defaults, **overrides), objective=objective,
                   checkpoint_dir=checkpoint_dir, device=self.device, progress=self.progress).model


@dataclass
class Coverage:
    """What a defense would touch in a model (``robustcompress defenses inspect``).

    ``scope`` says what kind of site it acts on; ``sites`` the ones it covers; ``left`` the ones
    it leaves as they are, each with the reason; ``error`` the message if it refuses the model.
    """

    method: str
    scope: str
    sites: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    error: str = ""


def activation_coverage(method: str, model: nn.Module, selector="relu") -> Coverage:
    """Coverage of a method acting after each selected activation application."""
    from robustcompress.nn import surgery

    scope = f"activation applications ({selector if isinstance(selector, str) else 'named'})"
    try:
        report = surgery.find_sites(model)
        chosen = report.select(selector)
    except UserInputError as e:
        return Coverage(method, scope, error=str(e))
    names = {s.name for s in chosen}
    left = {s.name: f"{s.kind} not selected" for s in report.sites if s.name not in names}
    return Coverage(method, scope, [s.name for s in chosen], left)


def layer_coverage(method: str, model: nn.Module, names=None) -> Coverage:
    """Coverage of a method acting on every conv/linear module (or the named ones)."""
    from robustcompress.nn import surgery

    layers = [s.name for s in surgery.layer_sites(model)]
    chosen = layers if names is None else [n for n in layers if n in set(names)]
    left = {n: "not in layers" for n in layers if n not in chosen}
    for f in surgery.functional_layers(model) or []:
        left[f] = "functional weight op (F.conv/F.linear): not a module, cannot be changed"
    return Coverage(method, "conv/linear layers (incl. grouped)", chosen, left)


class DefenseSpec:
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Params: ClassVar[type[DefenseParams]] = DefenseParams
    #: Raised by one when a change makes :meth:`apply` produce another model from the same
    #: params and recipe (a fix); run-folder keys include it when > 0, so a re-run rebuilds the
    #: variants made before the fix instead of reusing them.
    revision: ClassVar[int] = 0

    def apply(self, model: nn.Module, params: DefenseParams, ctx: DefenseContext) -> dict[str, nn.Module]:
        """Convert (and, if the method needs it, train/fine-tune) a deep copy of ``model``."""
        raise NotImplementedError

    def coverage(self, model: nn.Module, params: DefenseParams) -> Coverage:
        """The sites :meth:`apply` would touch in ``model`` (default: the whole model, no site
        surgery, e.g. adversarial training or an input transform)."""
        return Coverage(self.name, "whole model (training or input transform; no site surgery)")

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


def coverage_report(model: nn.Module) -> list[Coverage]:
    """Every registered defense's :class:`Coverage` of ``model`` with its default parameters."""
    out = []
    for name, spec in list_defenses().items():
        try:
            out.append(spec.coverage(model, spec.Params()))
        except UserInputError as e:
            out.append(Coverage(name, "", error=str(e)))
    return out


def describe_coverage(report: list[Coverage], sites: bool = False) -> list[str]:
    """Plain lines for a coverage report: per defense what it acts on, how many sites it covers,
    what it leaves and why (grouped by reason), or why it refuses the model."""
    lines = []
    for c in report:
        if c.error:
            lines.append(f"{c.method}: REFUSES this model: {c.error}")
            continue
        head = f"{c.method}: {c.scope}" + (f": covers {len(c.sites)}" if c.sites else "")
        reasons: dict[str, list[str]] = {}
        for name, why in c.left.items():
            reasons.setdefault(why, []).append(name)
        tail = "; ".join(f"leaves {len(v)} ({k})" for k, v in reasons.items())
        lines.append(head + (f"; {tail}" if tail else ""))
        if sites and c.sites:
            lines.append("    covers: " + ", ".join(c.sites))
        if sites:
            lines += [f"    leaves ({k}): " + ", ".join(v) for k, v in reasons.items()]
    return lines


def parse_params(name: str, raw: dict[str, Any]) -> DefenseParams:
    return get_defense(name).Params(**(raw or {}))


# ============================================================================ defense record
#: The model attribute holding the record (a JSON list ``[{"name", "params"}]``); the checkpoint's
#: ``"defenses"`` entry stores it unchanged.
RECORD_ATTR = "robustcompress_defenses"


@dataclass(frozen=True)
class DefenseRecord:
    """One applied defense: its registered name and the parameters that rebuild its structure."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": copy.deepcopy(dict(self.params))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DefenseRecord":
        return cls(str(d["name"]), dict(d.get("params") or {}))


def defense_records(model: nn.Module) -> list[dict[str, Any]]:
    """A copy of ``model``'s defense record (``[]`` for an undefended model)."""
    return copy.deepcopy(list(getattr(model, RECORD_ATTR, None) or []))


def set_defense_records(model: nn.Module, records: list[dict[str, Any]]) -> nn.Module:
    """Give ``model`` (a copy of) ``records`` as its defense record; returns ``model``."""
    setattr(model, RECORD_ATTR, copy.deepcopy(list(records)))
    return model


def record_defense(model: nn.Module, name: str, params: dict[str, Any],
                   base: Optional[nn.Module] = None) -> nn.Module:
    """Append ``{"name": name, "params": params}`` to the record of ``base`` (default ``model``
    itself) and store it on ``model``; returns ``model``."""
    records = defense_records(model if base is None else base)
    return set_defense_records(model, records + [DefenseRecord(name, dict(params)).to_dict()])


def replace_last_params(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Replace the parameters of the last recorded defense (an adapter records its full schema
    over the plain API's subset); returns ``model``."""
    records = defense_records(model)
    records[-1]["params"] = copy.deepcopy(dict(params))
    return set_defense_records(model, records)


def rebuild_defenses(model: nn.Module, records: list[dict[str, Any]]) -> nn.Module:
    """The defended architecture (weights undefined) of ``model`` after ``records``: each
    defense's :meth:`DefenseSpec.structure`, in order; the result carries ``records``."""
    for d in map(DefenseRecord.from_dict, records):
        spec = get_defense(d.name)
        model = spec.structure(model, spec.Params(**d.params))
    return set_defense_records(model, records) if records else model


register_checkpoint_part("defenses", defense_records, rebuild_defenses)

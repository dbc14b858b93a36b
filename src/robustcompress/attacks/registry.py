"""Attack registry and the one entry point that runs any attack by name.

Attacks are plain functions ``attack(model, x, y, threat, *, ...) -> AttackResult`` living in
``attacks/<name>.py`` and registered with::

    @register_attack("pgd", kind="white-box")
    def pgd(model, x, y, threat, *, steps=10, ...): ...

``kind`` is one of :data:`KINDS`. :func:`run_attack` validates the inputs against the threat model,
checks the parameters against the function's signature (unknown names are refused with the list
of accepted ones), fills in EOT / MC defaults for stochastic models, optionally splits the data
into batches, and times the call.
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from robustcompress.attacks.draws import DEFAULT_EOT_SAMPLES, resolve_draws
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel
from robustcompress.attacks.validation import (
    RESERVED,
    check_attack_inputs,
    check_param_values,
    check_within_threat,
    first_forward_checked,
    warn_if_dropout_trains,
)
from robustcompress.errors import UserInputError

KINDS = ("white-box", "black-box", "minimal", "noise", "transfer")
#: keyword parameters that run_attack sets itself (generator=, eot_samples=, mc_samples=)
RESERVED_NAMES = tuple(RESERVED)
_COMMON = ("model", "x", "y", "threat")


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its name, kind, function and one-line description."""

    name: str
    kind: str
    fn: Callable[..., AttackResult]
    doc: str

    def __call__(self, *args, **kwargs) -> AttackResult:
        return self.fn(*args, **kwargs)

    @property
    def parameters(self) -> dict[str, Any]:
        """Keyword parameters and their defaults (``inspect.Parameter.empty`` if required)."""
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in sig.parameters.items() if k not in _COMMON}

    def accepts(self, name: str) -> bool:
        return name in self.parameters


_ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, kind: str = "white-box"):
    """Decorator: register ``fn(model, x, y, threat, **params) -> AttackResult`` under ``name``."""
    if kind not in KINDS:
        raise ValueError(f"attack kind must be one of {KINDS}, got {kind!r}")

    def deco(fn):
        if name in _ATTACKS:
            raise RuntimeError(f"attack {name!r} registered twice")
        doc = ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _ATTACKS[name] = AttackSpec(name, kind, fn, doc)
        return fn

    return deco


def _ensure_loaded() -> None:
    import robustcompress.attacks  # noqa: F401  (importing the package registers every attack)


def get_attack(name: str) -> AttackSpec:
    """The registered attack ``name`` (callable like the function itself)."""
    _ensure_loaded()
    key = name.strip().lower()
    if key not in _ATTACKS:
        raise UserInputError(f"unknown attack {name!r}; choose one of: {', '.join(sorted(_ATTACKS))}")
    return _ATTACKS[key]


def list_attacks() -> dict[str, AttackSpec]:
    """Every registered attack by name (sorted)."""
    _ensure_loaded()
    return dict(sorted(_ATTACKS.items()))


def validate_attack_params(name: str, params: dict[str, Any], *, strict: bool = True) -> list[str]:
    """Every problem with ``params`` for attack ``name`` (empty list: fine): unknown names, and
    values that are not of the parameter's kind or range (see
    :data:`~robustcompress.attacks.validation.PARAM_RULES`). The one rule book of
    :func:`run_attack`, ``config check`` and the CLI. ``strict=False`` (calls from Python) still
    lets pgd take ``steps=0`` (it then judges the random start, e.g. the clean verdict at eps 0);
    configs and the CLI are strict (0 steps would report a robust accuracy for no attack)."""
    spec = get_attack(name)
    accepted = spec.parameters
    unknown = sorted(set(params) - set(accepted) - set(RESERVED_NAMES))
    out = [f"attack {spec.name!r} has no parameter(s) {', '.join(unknown)}; it accepts: "
           f"{', '.join(sorted(k for k in accepted if k not in RESERVED_NAMES)) or 'none'}"] if unknown else []
    known = {k: v for k, v in params.items() if k not in unknown}
    min_steps = 0 if spec.name == "pgd" and not strict else 1
    out += check_param_values(spec.name, known, accepted, min_steps=min_steps)
    inner = params.get("attack_params") if spec.kind == "transfer" else None
    if inner is not None:
        craft = params.get("attack", accepted.get("attack"))
        if not isinstance(inner, dict) or not isinstance(craft, str):
            return out + [f"{spec.name}: attack must be an attack name and attack_params a mapping "
                          f"of its parameters, got {craft!r} and {inner!r}"]
        out += validate_attack_params(craft, inner, strict=strict)
    return out


def run_attack(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    generator: Optional[torch.Generator] = None,
    eot_samples: Optional[int] = None,
    mc_samples: Optional[int] = None,
    batch_size: Optional[int] = None,
    **params,
) -> AttackResult:
    """Run attack ``name`` on ``(x, y)`` under ``threat`` and return its :class:`AttackResult`.

    Parameters
    ----------
    generator : all randomness of the attack and of the model's stochastic modules comes from it
        (the global RNG is left alone when it is given).
    eot_samples : draws per gradient for stochastic models. ``None``: 1 for deterministic models
        and :data:`~robustcompress.attacks.draws.DEFAULT_EOT_SAMPLES` for stochastic ones (honest
        by default; pass 1 explicitly for the papers' plain protocol).
    mc_samples : draws averaged for the final verdict (``None``: the default of
        :func:`~robustcompress.attacks.draws.mc_predict`).
    batch_size : split the inputs into batches of this size (results are concatenated in order;
        with a generator, random starts are the same as without splitting).
    params : the attack's own keyword parameters (see ``get_attack(name).parameters``).
    """
    spec = get_attack(name)
    if not isinstance(threat, ThreatModel):
        raise UserInputError("threat must be a ThreatModel; build one with ThreatModel.from_spec(...)")
    problems = validate_attack_params(spec.name, params, strict=False)
    if problems:
        raise UserInputError("; ".join(problems))
    check_attack_inputs(model, x, y, threat)
    accepted = spec.parameters
    kwargs = dict(params)
    if "generator" in accepted:
        kwargs["generator"] = generator
    if "eot_samples" in accepted:
        kwargs["eot_samples"] = resolve_draws(model, eot_samples, DEFAULT_EOT_SAMPLES)
    elif eot_samples not in (None, 1):
        raise UserInputError(
            f"attack {spec.name!r} takes no gradients, so eot_samples does not apply; leave it unset"
        )
    if "mc_samples" in accepted:
        kwargs["mc_samples"] = mc_samples
    elif mc_samples is not None:
        raise UserInputError(f"attack {spec.name!r} does not take mc_samples")
    if batch_size is not None and batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
    _warn_if_batchnorm_trains(model)
    warn_if_dropout_trains(model)
    y = y.long()
    start = time.perf_counter()
    with first_forward_checked(model, y):  # finite logits, labels within the model's classes
        if batch_size is None or batch_size >= x.shape[0]:
            result = spec.fn(model, x, y, threat, **kwargs)
        else:
            result = AttackResult.concat([spec.fn(model, xb, yb, threat, **kwargs)
                                          for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    result.time_s = time.perf_counter() - start
    # a minimal-perturbation attack without a budget (eps 0) has no ball to stay in
    check_within_threat(result.x_adv[result.success], x[result.success], threat, spec.name,
                        ball=threat.eps > 0 or spec.kind != "minimal")
    return result


def _warn_if_batchnorm_trains(model: nn.Module) -> None:
    """Attacks leave the mode alone; a BatchNorm in training mode would update its statistics."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()):
        warnings.warn(
            "the model has BatchNorm layers in training mode: they use batch statistics and update "
            "their running averages while it is attacked; call model.eval() first unless the "
            "training-mode model is what you mean to attack",
            stacklevel=3,
        )

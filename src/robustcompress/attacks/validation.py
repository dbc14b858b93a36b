"""Checks every attack entry point shares, so each mistake ends in one message naming the fix.

* :func:`check_param_values`: the values of an attack's keyword parameters (whole numbers >= 1
  for step and query counts, positive step sizes, booleans, loss names), with the same rules for
  :func:`~robustcompress.attacks.registry.run_attack`, ``config check`` and the CLI (they reach
  it through :func:`~robustcompress.attacks.registry.validate_attack_params`).
* :func:`check_attack_inputs`: inputs, labels, devices and dtypes every attack checks first
  (through :func:`check_batch_and_dtype`: a non-empty batch whose dtype is the model's).
* :func:`check_logits` (on the clean forward of the adaptive evaluation, and through
  :func:`first_forward_checked` on an attack's first forward): the model's output is a finite
  ``[batch, classes]`` tensor and every label is one of its classes.
* :func:`warn_if_dropout_trains`: ``nn.Dropout`` left in training mode (undeclared randomness).
* :func:`check_within_threat`: every point counted as a break lies in the eps-ball and the box
  (re-checked after the attack, so an attack that does not project cannot inflate its score).
* :func:`no_side_effects`: debug guard that an attack left the model's mode and ``.grad`` alone.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from types import MappingProxyType
from typing import Any, Iterator

import torch
from torch import nn

from robustcompress.attacks.losses import LOSSES
from robustcompress.attacks.threat import BOUNDS_TOL, ThreatModel
from robustcompress.attacks.verdicts import within_budget
from robustcompress.errors import ThreatModelError, UserInputError

#: rule of each parameter name: ("int", minimum), ("real", "pos" | "nonneg" | "frac"), ("bool",)
#: or ("bool?",) (true, false or null). Names not listed are checked by the attack itself.
PARAM_RULES = MappingProxyType({
    "steps": ("int", 1), "restarts": ("int", 1), "binary_search_steps": ("int", 1),
    "max_iter": ("int", 1), "n_queries": ("int", 1), "n_target_classes": ("int", 1),
    "candidates": ("int", 2), "max_rows": ("int", 1), "boundary_search": ("int", 0),
    "step_size": ("real", "pos"), "lr": ("real", "pos"), "initial_const": ("real", "pos"),
    "sigma": ("real", "pos"), "alpha": ("real", "nonneg"), "decay": ("real", "nonneg"),
    "overshoot": ("real", "nonneg"), "confidence": ("real", "nonneg"), "p_init": ("real", "frac"),
    "random_start": ("bool",), "paper": ("bool",), "abort_early": ("bool",), "early_stop": ("bool?",),
    # FAB (alpha_max, eta, beta) and FMN (step sizes and the radius' relative change)
    "alpha_max": ("real", "frac"), "eta": ("real", "pos"), "beta": ("real", "frac"),
    "alpha_init": ("real", "pos"), "alpha_final": ("real", "pos"), "gamma_init": ("real", "frac"),
    "gamma_final": ("real", "frac"),
})
#: keyword parameters run_attack sets itself: where each is given instead
RESERVED = MappingProxyType({
    "generator": "pass generator= to run_attack (configs: the run's seed)",
    "eot_samples": "pass eot_samples= to run_attack (configs: `eot:` on the attack item; CLI: --eot)",
    "mc_samples": "pass mc_samples= to run_attack (configs: `mc:` on the attack item; CLI: --mc)",
})
_REAL_RULES = MappingProxyType({"pos": ("a number > 0", lambda v: v > 0),
                                "nonneg": ("a number >= 0", lambda v: v >= 0),
                                "frac": ("a number in (0, 1]", lambda v: 0 < v <= 1)})


def check_param_values(attack: str, params: dict[str, Any], defaults: dict[str, Any], *,
                       min_steps: int = 1) -> list[str]:
    """One message per invalid value in ``params`` (empty if all are fine). ``None`` is accepted
    where it is the attack's default (``defaults``); ``min_steps`` is the smallest ``steps``
    accepted (pgd called as a function accepts 0: it then judges the random start)."""
    out = []
    for key, value in params.items():
        if key in RESERVED:
            out.append(f"{attack}: {key} is not an attack parameter here; {RESERVED[key]}")
            continue
        rule = PARAM_RULES.get(key)
        if key == "loss":
            out += _check_loss(attack, value)
        elif rule is not None and not (value is None and key in defaults and defaults[key] is None):
            low = min_steps if key == "steps" else (rule[1] if rule[0] == "int" else None)
            problem = _check_value(rule, value, low)
            if problem:
                out.append(f"{attack}: {key} must be {problem}, got {value!r}{_hint(rule, key, value, low)}")
    return out


def _check_value(rule: tuple, value: Any, low) -> str:
    """What ``value`` must be under ``rule`` ("" when it is fine)."""
    kind = rule[0]
    if kind in ("bool", "bool?"):
        ok = isinstance(value, bool) or (kind == "bool?" and value is None)
        return "" if ok else ("true or false" if kind == "bool" else "true, false or null")
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "int":
        return "" if number and value == int(value) and value >= low else f"a whole number >= {low}"
    text, ok = _REAL_RULES[rule[1]]
    return "" if number and ok(value) else text


def _hint(rule: tuple, key: str, value: Any, low) -> str:
    """The fix for the common cases: text where a number belongs, zero steps, a zero step."""
    if isinstance(value, str):
        if rule[0].startswith("bool"):
            return "; give true or false"
        return f"; give a number (e.g. {key}={20 if rule[0] == 'int' else 0.01})"
    if key == "steps" and low and isinstance(value, numbers.Real) and value < low:
        return "; 0 steps would count the unattacked inputs as robust: use at least 1"
    if key == "step_size":
        return "; it is in input units; leave it unset for the attack's default (2.5 eps / steps for pgd)"
    return ""


def _check_loss(attack: str, value: Any) -> list[str]:
    if callable(value) or value in LOSSES:
        return []
    return [f"{attack}: loss must be one of {', '.join(LOSSES)} (or a callable in Python), got {value!r}"]


def check_batch_and_dtype(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse an empty batch, and inputs whose dtype is not the model's parameters' dtype."""
    if x.shape[0] == 0:
        raise UserInputError("no inputs to attack (the batch has 0 rows); pass at least one input "
                             "(check the data split or the --n / n_samples setting)")
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is not None and p.dtype != x.dtype:
        cast = "x.float()" if p.dtype == torch.float32 else f"x.to({p.dtype})"
        raise UserInputError(
            f"the inputs are {x.dtype} but the model's parameters are {p.dtype}; convert the inputs "
            f"with {cast} or the model with model.to({x.dtype})")


@contextlib.contextmanager
def first_forward_checked(model: nn.Module, y: torch.Tensor) -> Iterator[None]:
    """Inside the block, the model's first output is checked by :func:`check_logits` (finite,
    every label one of its classes) before any loss uses it: the attack's own first forward is
    inspected, so no forward is added (a forward hook, removed after that call or the block)."""
    def hook(module, inputs, output):
        handle.remove()
        check_logits(output, y, rows="rows of the attack's first forward")

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def check_logits(logits: Any, y: torch.Tensor, *, draws: bool = False, rows: str = "clean inputs") -> None:
    """Refuse logits that are not a finite ``[batch, classes]`` tensor (``draws``: stacked
    ``[draws, batch, classes]``) and labels outside ``[0, classes)``. ``rows`` names the rows."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        what = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserInputError(f"the model returns {what}; attacks need logits of shape [batch, classes] "
                             "(return the logits tensor alone, not a tuple or dict)")
    flat = logits if draws else logits.unsqueeze(0)
    bad = ~torch.isfinite(flat.reshape(flat.shape[0], flat.shape[1], -1)).all(dim=2).all(dim=0)
    if bool(bad.any()):
        raise UserInputError(
            f"the model returns NaN or inf logits on {int(bad.sum())} of {bad.numel()} {rows}; "
            "a robust accuracy would be meaningless: check the weights (a diverged training?) "
            "and the inputs' scale")
    if flat.dim() != 3:
        return  # an unusual output shape: which axis holds the classes is not known
    classes = int(logits.shape[-1])
    if y.numel() and int(y.min()) < 0:
        raise UserInputError(f"labels must be class indices >= 0, got {int(y.min())}; remap them to "
                             f"0..{classes - 1}")
    if y.numel() and int(y.max()) >= classes:
        raise UserInputError(
            f"label {int(y.max())} is not a class of the model, which outputs {classes} classes "
            f"(0..{classes - 1}); use the labels of the dataset the model was trained on, or a "
            "model whose last layer has one output per class")


def warn_if_dropout_trains(model: nn.Module) -> None:
    """Warn about ``nn.Dropout`` layers in training mode that do not declare themselves stochastic
    (:mod:`robustcompress.nn.protocol`): the attack and the verdict would see undeclared noise."""
    names = [repr(n) if n else type(m).__name__ for n, m in model.named_modules()
             if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and not hasattr(m, "stochastic")]
    if names:
        warnings.warn(
            f"the model has dropout layers in training mode ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}): they drop random units on every forward, so "
            "gradients and verdicts are noisy and not from the evaluator's generator; call "
            "model.eval() first, or use robustcompress.nn.noise.TestTimeDropout for intentional "
            "test-time randomness (it is attacked with EOT)",
            stacklevel=3,
        )


def check_within_threat(x_adv: torch.Tensor, x: torch.Tensor, threat, attack: str, *,
                        ball: bool = True) -> None:
    """Refuse adversarials counted as breaks that leave the input box or (``ball``) the eps-ball,
    naming the attack: its number would count points no attacker within the budget can reach."""
    if x_adv.numel() == 0:
        return
    lo, hi = threat.bounds
    flat = x_adv.detach().flatten(1)
    outside_box = ((flat < lo - BOUNDS_TOL) | (flat > hi + BOUNDS_TOL)).any(dim=1)
    # x_adv - x carries the rounding of the input dtype (float32 near 1: ~1e-7 per entry)
    ulp = torch.finfo(x_adv.dtype).eps * 4 * max(abs(lo), abs(hi), 1.0)
    slack = ulp * (math.sqrt(flat.shape[1]) if threat.norm == "l2" else 1.0)
    norm = threat.norm_of(x_adv.detach() - x)
    over = ~within_budget(norm - slack, threat.eps) if ball else torch.zeros_like(outside_box)
    bad = outside_box | over
    if bool(bad.any()):
        raise ThreatModelError(
            f"attack {attack!r} returned {int(bad.sum())} adversarial point(s) counted as breaks "
            f"outside the threat model ({int(over.sum())} beyond {threat.norm} eps={threat.eps:g}, "
            f"{int(outside_box.sum())} outside the box {list(threat.bounds)}); its result cannot "
            "count: fix the attack to project onto the ball and clip to the box")


def check_attack_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> None:
    """Refuse inputs, labels, devices or dtypes an attack would silently get wrong, and an empty
    batch (the model's logits are checked on the attack's first forward: see
    :func:`first_forward_checked`)."""
    threat.check_inputs(x)
    threat.check_model(model)
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise UserInputError(
            f"labels must be a 1-D tensor with one entry per input ({x.shape[0]}), got "
            f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
        )
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise UserInputError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.device != x.device:
        raise UserInputError(f"labels are on {y.device} but inputs on {x.device}; move them with y.to(x.device)")
    p = next(iter(model.parameters()), None)
    if p is not None and p.device != x.device:
        raise UserInputError(
            f"the model is on {p.device} but the inputs are on {x.device}; move one of them "
            f"(model.to(x.device) or x.to({str(p.device)!r}))"
        )
    check_batch_and_dtype(model, x)


@contextlib.contextmanager
def no_side_effects(model: nn.Module) -> Iterator[None]:
    """Debug guard: raise if the block changed the model's mode or any parameter's ``.grad``."""
    modes = [m.training for m in model.modules()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    yield
    if modes != [m.training for m in model.modules()]:
        raise RuntimeError("an attack changed the model's train/eval mode")
    for p, g in zip(model.parameters(), grads):
        if (g is None) != (p.grad is None) or (g is not None and not torch.equal(g, p.grad)):
            raise RuntimeError("an attack changed a parameter's .grad")


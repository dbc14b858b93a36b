"""Attack objects in the style of torchattacks and Foolbox, over the registered attack functions.

``atk = PGD(model, eps=8/255, steps=10)``, then ``x_adv = atk(x, y)`` (torchattacks' call),
``atk.run(x, y)`` for the full :class:`~robustcompress.attacks.results.AttackResult`, and
``atk.sweep(x, y, eps=[2/255, 8/255])`` for one result per budget (Foolbox's ``epsilons=``).
An object only holds the arguments of :func:`~robustcompress.attacks.registry.run_attack`, which
does the work: under the same seed an object and the function give the same result bit for bit.

Deliberate differences from torchattacks (docs/attacks-objects.md): eps is in input units of
``bounds`` and checked by :class:`~robustcompress.attacks.threat.ThreatModel`; the model's mode is
left alone; randomness comes from ``seed=``/``generator=``; iterative attacks return the first
successful iterate unless ``early_stop=False`` (see :func:`~robustcompress.attacks.pgd.pgd`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.attacks.draws import draw_logits
from robustcompress.attacks.registry import get_attack, run_attack
from robustcompress.attacks.results import AttackResult
from robustcompress.attacks.threat import ThreatModel, parse_eps
from robustcompress.errors import UserInputError

TARGET_MODES = ("random", "least_likely")
Target = Union[None, str, torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


# ---------------------------------------------------------------------------- targets
def random_targets(y: torch.Tensor, num_classes: int,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A target per sample, uniform over the ``num_classes - 1`` classes other than its label."""
    if num_classes < 2:
        raise UserInputError(f"random targets need at least 2 classes, got num_classes={num_classes}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UserInputError(f"labels must lie in 0..{num_classes - 1}; pass the model's number of classes")
    gdev = generator.device if generator is not None else torch.device("cpu")
    offset = torch.randint(1, num_classes, tuple(y.shape), generator=generator, device=gdev)
    return (y + offset.to(y.device)) % num_classes


@torch.no_grad()
def least_likely_targets(model: nn.Module, x: torch.Tensor, *, mc_samples: Optional[int] = None,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The least likely class per sample (Kurakin et al. 2017's "ll" target).

    The argmin of the logits for a deterministic model, of the MC-averaged softmax for a
    stochastic one (``mc_samples`` draws from ``generator``). The model's mode is not changed.
    """
    logits = draw_logits(model, x, mc_samples=mc_samples, generator=generator)
    if logits.shape[0] == 1:
        return logits[0].argmin(dim=1)
    return F.softmax(logits, dim=2).mean(0).argmin(dim=1)


# ---------------------------------------------------------------------------- eps sweeps
class SweepResult(dict):
    """A dict eps (input units, in the order given) -> :class:`AttackResult`."""

    @property
    def robust_accuracy(self) -> dict[float, float]:
        return {eps: r.robust_accuracy for eps, r in self.items()}

    def summary(self) -> list[dict]:
        """One :meth:`AttackResult.summary` row per budget, with its ``eps``."""
        return [{"eps": eps, **r.summary()} for eps, r in self.items()]


def run_attack_sweep(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     threat: ThreatModel, eps: Iterable[Union[str, float]], *,
                     generator: Optional[torch.Generator] = None, **kwargs) -> SweepResult:
    """:func:`run_attack` once per budget in ``eps`` (input units or fractions like ``"8/255"``).

    Every budget starts from the same state of ``generator`` (same random starts and model draws),
    so each result equals a separate ``run_attack`` call given a generator in that state, and the
    differences between budgets are not noise. ``threat`` gives the norm, box and targeting.
    """
    budgets = [threat.with_eps(parse_eps(e)[0]) for e in eps]
    if not budgets:
        raise UserInputError("eps sweep needs at least one budget, e.g. eps=[2/255, 8/255]")
    state = generator.get_state() if generator is not None else None
    results = {}
    for t in budgets:
        if state is not None:
            generator.set_state(state)
        results[t.eps] = run_attack(name, model, x, y, t, generator=generator, **kwargs)
    return SweepResult(results)


# ---------------------------------------------------------------------------- objects
class Attack:
    """Any registered attack as an object: ``Attack("pgd", model, eps=8/255, steps=10)``.

    Parameters
    ----------
    name : a registered attack (``robustcompress attacks`` lists them).
    eps, norm, bounds, eps_scale, info : the threat model (:meth:`ThreatModel.from_spec`); eps in
        input units of ``bounds`` (or of ``info.bounds``), ``0`` for minimal attacks = no budget.
    seed : seeds the object's own ``torch.Generator`` (made on the inputs' device at the first
        call); successive calls continue its stream. ``generator`` passes one instead.
    target : ``None`` (untargeted), ``"random"``, ``"least_likely"``, a tensor of targets or
        ``callable(x, y) -> targets``; see :meth:`set_target`.
    eot_samples, mc_samples, batch_size : as in :func:`run_attack`.
    params : the attack's own parameters (``get_attack(name).parameters``).
    """

    aliases: dict[str, str] = {}

    def __init__(self, name: str, model: nn.Module, eps: Union[str, float] = 8 / 255, *,
                 norm: str = "linf", bounds: Sequence[float] = (0.0, 1.0),
                 eps_scale: Optional[float] = None, info=None, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, target: Target = None,
                 eot_samples: Optional[int] = None, mc_samples: Optional[int] = None,
                 batch_size: Optional[int] = None, **params):
        if seed is not None and generator is not None:
            raise UserInputError("give seed= or generator=, not both")
        self.spec = get_attack(name)
        self.model = model
        self._spec = dict(norm=norm, info=info, eps_scale=eps_scale, bounds=tuple(bounds))
        self.threat = self._threat(eps)
        self.params = self._rename(params)
        self.options = dict(eot_samples=eot_samples, mc_samples=mc_samples, batch_size=batch_size)
        self.seed, self.generator = seed, generator
        self.target: Target = None
        self.set_target(target)

    def _threat(self, eps: Union[str, float]) -> ThreatModel:
        s = self._spec
        return ThreatModel.from_spec(s["norm"], eps, s["info"], eps_scale=s["eps_scale"], bounds=s["bounds"])

    def _rename(self, params: dict) -> dict:
        """torchattacks' names (``alpha``, ``n_restarts``) to ours; both at once is an error."""
        out = {self.aliases.get(k, k): v for k, v in params.items()}
        if len(out) != len(params):
            raise UserInputError(f"give each parameter once; {sorted(self.aliases.items())} are the same")
        return out

    def __repr__(self) -> str:
        ps = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.spec.name!r}, {self.threat.describe()}{ps})"

    def set_target(self, target: Target = "random") -> "Attack":
        """Targeted mode for later calls (``None``: untargeted). Returns the object.

        ``"random"``: uniform over the other classes (:func:`random_targets`, drawn from the
        object's generator); ``"least_likely"``: :func:`least_likely_targets`; a tensor: these
        targets for every call; a callable: ``targets = target(x, y)``. In targeted mode
        ``success`` means the model predicts the target, and ``result.extra["target"]`` holds it.
        """
        if isinstance(target, str) and target not in TARGET_MODES:
            raise UserInputError(f"unknown target mode {target!r}; choose {' or '.join(TARGET_MODES)}, "
                                 "a tensor of targets, a callable(x, y) or None")
        self.target = target
        return self

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial inputs (like torchattacks); :meth:`run` gives the full result."""
        return self.run(x, y).x_adv

    def run(self, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """:func:`run_attack` with this object's threat model, parameters and generator."""
        gen = self._generator(x.device)
        threat, labels = self._goal(x, y, gen)
        res = run_attack(self.spec.name, self.model, x, labels, threat, generator=gen,
                         **self.options, **self.params)
        return self._mark(res, threat, labels)

    def sweep(self, x: torch.Tensor, y: torch.Tensor, eps: Iterable[Union[str, float]]) -> SweepResult:
        """One result per budget (same units as the constructor's eps), all from the same draws.

        ``sweep(x, y, eps=[a, b])[b]`` equals ``run(x, y)`` of a fresh object with ``eps=b`` and
        the same seed; targets, if any, are drawn once and shared by every budget.
        """
        gen = self._generator(x.device)
        threat, labels = self._goal(x, y, gen)
        budgets = [self._threat(e).eps for e in eps]
        out = run_attack_sweep(self.spec.name, self.model, x, labels, threat, budgets,
                               generator=gen, **self.options, **self.params)
        for res in out.values():
            self._mark(res, threat, labels)
        return out

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.generator is None and self.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(int(self.seed))
        return self.generator

    def _goal(self, x: torch.Tensor, y: torch.Tensor,
              gen: Optional[torch.Generator]) -> tuple[ThreatModel, torch.Tensor]:
        """The threat model and the labels to attack with (targets in targeted mode)."""
        t = self.target
        if t is None:
            return self.threat, y
        if isinstance(t, str) and t == "random":
            targets = random_targets(y, self._num_classes(x), gen)
        elif isinstance(t, str):
            targets = least_likely_targets(self.model, x, mc_samples=self.options["mc_samples"],
                                           generator=gen)
        else:
            targets = t(x, y) if callable(t) else t
        return replace(self.threat, targeted=True), torch.as_tensor(targets, device=y.device).long()

    def _num_classes(self, x: torch.Tensor) -> int:
        info = self._spec["info"]
        if info is not None:
            return int(info.num_classes)
        quiet = torch.Generator(device=x.device)  # a throwaway stream: the attack's is not advanced
        return int(draw_logits(self.model, x[:1], mc_samples=1, generator=quiet).shape[-1])

    @staticmethod
    def _mark(res: AttackResult, threat: ThreatModel, labels: torch.Tensor) -> AttackResult:
        if threat.targeted:
            res.extra["target"] = labels
        return res


class _Named(Attack):
    """A registered attack with its usual norm and budget as defaults (subclasses set them)."""

    attack = ""
    default_norm = "linf"
    default_eps: float = 8 / 255

    def __init__(self, model: nn.Module, eps: Union[str, float, None] = None, *,
                 norm: Optional[str] = None, **kwargs):
        super().__init__(self.attack, model, self.default_eps if eps is None else eps,
                         norm=norm or self.default_norm, **kwargs)


class FGSM(_Named):
    """FGSM (Goodfellow et al. 2015; FGM under L2): :func:`~robustcompress.attacks.fgsm.fgsm`."""

    attack = "fgsm"


class BIM(_Named):
    """BIM (Kurakin et al. 2017): :func:`~robustcompress.attacks.bim.bim`; ``alpha`` = ``step_size``."""

    attack = "bim"
    aliases = {"alpha": "step_size"}


class PGD(_Named):
    """PGD (Madry et al. 2018): :func:`~robustcompress.attacks.pgd.pgd`; ``alpha`` = ``step_size``.

    On a deterministic model it returns per sample the first successful iterate (early stop);
    ``early_stop=False`` runs every step and restart and returns the successful iterate of
    largest loss: the full-strength point to use for transfer or adversarial-training data.
    """

    attack = "pgd"
    aliases = {"alpha": "step_size"}


class PGDL2(PGD):
    """PGD under L2 (torchattacks' ``PGDL2``, eps 1.0 by default)."""

    default_norm = "l2"
    default_eps = 1.0


class MIM(_Named):
    """MI-FGSM (Dong et al. 2018): :func:`~robustcompress.attacks.mim.mim`; ``alpha`` = ``step_size``."""

    attack = "mim"
    aliases = {"alpha": "step_size"}


MIFGSM = MIM


class RFGSM(_Named):
    """R+FGSM (Tramèr et al. 2018), one random step then one gradient step: not torchattacks' RFGSM."""

    attack = "rfgsm"


class APGD(_Named):
    """APGD-CE/DLR (Croce & Hein 2020), 100 steps by default; ``n_restarts`` = ``restarts``."""

    attack = "apgd"
    aliases = {"n_restarts": "restarts"}


class APGDT(APGD):
    """APGD-T (Croce & Hein 2020): untargeted, through the targeted DLR loss of the top classes."""

    attack = "apgd-t"


class CW(_Named):
    """C&W-L2 (Carlini & Wagner 2017) with its binary search over ``c`` (``initial_const``).

    Minimal-perturbation: ``eps=0`` (default) counts every adversarial found; with ``eps > 0``
    a success also needs ``||x_adv - x||_2 <= eps``. ``x_adv`` may lie outside the ball.
    """

    attack = "cw"
    default_norm = "l2"
    default_eps = 0.0


class DeepFool(_Named):
    """DeepFool (Moosavi-Dezfooli et al. 2016), L2 by default; minimal-perturbation like :class:`CW`."""

    attack = "deepfool"
    default_norm = "l2"
    default_eps = 0.0


class Square(_Named):
    """Square attack (Andriushchenko et al. 2020), Linf, gradient-free."""

    attack = "square"


__all__ = [
    "APGD", "APGDT", "Attack", "BIM", "CW", "DeepFool", "FGSM", "MIFGSM", "MIM", "PGD", "PGDL2",
    "RFGSM", "Square", "SweepResult", "least_likely_targets", "random_targets", "run_attack_sweep",
]

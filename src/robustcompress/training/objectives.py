"""The objective protocol of :func:`robustcompress.training.fit`, and the default objective.

An objective is any callable ``objective(model, x, y) -> Tensor | dict[str, Tensor]``:

* a scalar tensor: one optimizer over every trainable parameter steps on its gradient;
* a dict of scalar losses: the objective also defines ``param_groups(model) -> {name:
  {"params": [...], "lr": float | None, "optimizer": "adam" | "sgd" | None}}`` and ``fit`` keeps
  ONE optimizer per group, each stepping on the gradient of the loss of the same name (ANP-VS
  trains its masks and its weights this way). Loss entries without a group are only logged.

Optional ``train_mode(model)`` sets the module modes at the start of each epoch (default
``model.train()``), e.g. to keep BatchNorm statistics frozen while fine-tuning masks.
"""

from __future__ import annotations

from typing import Protocol, Union, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

Loss = Union[torch.Tensor, dict[str, torch.Tensor]]


@runtime_checkable
class Objective(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Loss: ...


class CrossEntropy:
    """Mean cross-entropy of ``model(x)`` against ``y`` (the default objective)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def __repr__(self) -> str:
        return "CrossEntropy()"


# ============================================================================ adversarial objectives
# (ANP-VS + baselines helper.) Every attack used for training is the library's own attack
# function, looked up in the attack registry; nothing here re-implements an attack.

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
from typing import Iterator, Optional  # noqa: E402

ATTACK_MODES = ("eval", "train")


@contextlib.contextmanager
def module_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` ("eval" | "train") inside the block and restore every
    sub-module's own training flag afterwards (also on error)."""
    if mode not in ATTACK_MODES:
        from robustcompress.errors import UserInputError

        raise UserInputError(f"attack_mode must be 'eval' or 'train', got {mode!r}")
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.train(mode == "train")
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def craft_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat,
    attack: str = "pgd",
    *,
    mode: str = "eval",
    generator: Optional[torch.Generator] = None,
    **params,
) -> torch.Tensor:
    """Adversarial inputs from the registered attack ``attack`` with the model in ``mode``.

    ``params`` go to the attack function (e.g. ``steps``, ``step_size``); ``generator`` and, for
    stochastic models, ``eot_samples=1`` are passed when the attack accepts them (one draw per
    gradient, as the original training codes do). Returns ``x_adv`` detached.
    """
    from robustcompress.attacks import get_attack
    from robustcompress.errors import UserInputError

    spec = get_attack(attack)
    kwargs = dict(params)
    for k in kwargs:
        if not spec.accepts(k):
            raise UserInputError(
                f"attack {attack!r} has no parameter {k!r}; it accepts {', '.join(spec.parameters)}")
    if spec.accepts("generator"):
        kwargs["generator"] = generator
    if spec.accepts("eot_samples"):
        kwargs.setdefault("eot_samples", 1)
    if spec.accepts("mc_samples"):
        kwargs.setdefault("mc_samples", 1)
    with module_mode(model, mode):
        res = spec(model, x, y, threat, **kwargs)
    return res.x_adv.detach()


@dataclasses.dataclass
class AdversarialTraining:
    """Adversarial training: ``mix * CE(x) + (1 - mix) * CE(x_adv)`` with ``x_adv`` from a
    library attack (FGSM, R+FGSM or PGD) crafted on the current weights for every batch.

    Parameters
    ----------
    threat : :class:`robustcompress.attacks.ThreatModel` (eps in input units, the input box).
    attack : ``"fgsm"`` (Goodfellow et al. 2015), ``"rfgsm"`` (Tramer et al. 2018: random step of
        eps/2 then FGSM of eps/2), ``"pgd"`` (Madry et al. 2018, random start), or any other
        registered attack name.
    steps, step_size : PGD iterations and step (``None``: the attack's default).
    mix : weight of the clean loss; 0 is Madry's objective (adversarial examples only); Goodfellow
        et al. use 0.5 (see :func:`fgsm_training`).
    random_steps : sample the number of PGD steps uniformly in ``1..steps`` for each batch.
    random_eps : sample eps uniformly in ``[min_eps_fraction * eps, eps]`` for each batch (the
        step size scales with it). The defensive-tensorization paper "samples the number of steps
        and eps randomly" without giving the distributions: uniform is our documented default.
    attack_mode : mode the model is in while the attack runs (``"eval"``: BN running statistics,
        deterministic layers; ``"train"``: as Madry's TF code, whose MNIST/CIFAR models have no
        mode-dependent layers besides BN). The modes are restored afterwards.
    generator : drives the random start, R+FGSM's random step and the steps/eps sampling.
    """

    threat: object
    attack: str = "pgd"
    steps: int = 10
    step_size: Optional[float] = None
    mix: float = 0.0
    random_steps: bool = False
    random_eps: bool = False
    min_eps_fraction: float = 0.0
    attack_mode: str = "eval"
    generator: Optional[torch.Generator] = None

    def __post_init__(self) -> None:
        from robustcompress.errors import UserInputError

        if not 0.0 <= self.mix <= 1.0:
            raise UserInputError(f"mix (weight of the clean loss) must be in [0, 1], got {self.mix}")
        if self.steps < 1:
            raise UserInputError(f"steps must be >= 1, got {self.steps}")
        if self.attack_mode not in ATTACK_MODES:
            raise UserInputError(f"attack_mode must be 'eval' or 'train', got {self.attack_mode!r}")

    def sample_budget(self) -> tuple[object, int, Optional[float]]:
        """(threat, steps, step_size) for one batch (random when asked)."""
        threat, steps, step = self.threat, self.steps, self.step_size
        g = self.generator
        if self.random_steps:
            steps = int(torch.randint(1, self.steps + 1, (1,), generator=g))
        if self.random_eps:
            u = float(torch.rand((), generator=g))
            frac = self.min_eps_fraction + (1.0 - self.min_eps_fraction) * u
            threat = dataclasses.replace(threat, eps=threat.eps * frac)
            step = None if step is None else step * frac
        return threat, steps, step

    def attack_params(self, steps: int, step_size: Optional[float]) -> dict:
        if self.attack in ("fgsm", "rfgsm"):
            return {}
        p = {"steps": steps}
        if step_size is not None:
            p["step_size"] = step_size
        return p

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        threat, steps, step = self.sample_budget()
        return craft_adversarial(model, x, y, threat, self.attack, mode=self.attack_mode,
                                 generator=self.generator, **self.attack_params(steps, step))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.adversarial(model, x, y)
        if self.mix > 0:
            clean = F.cross_entropy(model(x), y)
            return self.mix * clean + (1.0 - self.mix) * F.cross_entropy(model(x_adv), y)
        return F.cross_entropy(model(x_adv), y)

    def __repr__(self) -> str:
        return (f"AdversarialTraining(attack={self.attack!r}, eps={self.threat.eps:g}, "
                f"norm={self.threat.norm!r}, steps={self.steps}, step_size={self.step_size}, "
                f"mix={self.mix}, random_steps={self.random_steps}, random_eps={self.random_eps}, "
                f"attack_mode={self.attack_mode!r})")


def fgsm_training(threat, *, mix: float = 0.5, **kw) -> AdversarialTraining:
    """FGSM adversarial training (Goodfellow et al. 2015): ``0.5 CE(x) + 0.5 CE(x_fgsm)``."""
    return AdversarialTraining(threat, attack="fgsm", mix=mix, **kw)


def rfgsm_training(threat, *, mix: float = 0.5, **kw) -> AdversarialTraining:
    """R+FGSM adversarial training (Tramer et al., ICLR 2018), half clean / half adversarial
    as in their (and Kurakin et al.'s) recipe."""
    return AdversarialTraining(threat, attack="rfgsm", mix=mix, **kw)


def pgd_training(threat, *, steps: int = 40, step_size: Optional[float] = 0.01,
                 **kw) -> AdversarialTraining:
    """Madry et al. (2018) PGD adversarial training on adversarial examples only. Defaults are the
    MNIST recipe (eps 0.3, step 0.01, 40 steps); CIFAR-10 uses ``steps=7, step_size=2/255``."""
    return AdversarialTraining(threat, attack="pgd", steps=steps, step_size=step_size, **kw)


class ANPVS:
    """The two losses of ANP-VS (Madaan, Shin & Hwang, ICML 2020), one per parameter group.

    * ``"masks"`` (the ``a_uc``/``b_uc`` of every :class:`~robustcompress.nn.beta_bernoulli.
      BetaBernoulliMask`, Adam lr 1e-2): ``CE(x_adv) + beta * KL / n_train``;
    * ``"weights"`` (everything else, Adam lr 1e-3, L2 ``weight_decay`` 1e-4 as the code's
      ``1e-4 * 1/2 ||theta||^2``): ``(CE(x) + adv_weight * CE(x_adv)) / (1 + adv_weight) +
      beta * KL / n_train + lam * V``, with V the network vulnerability over ``layers`` (default:
      every ``nn.ReLU``).

    ``x_adv`` comes from the library's PGD (random start) with the model in **eval** mode, i.e.
    with the deterministic E[pi] masks and BN running statistics, as in the original code; the
    attack is in the [0, 1] input space (normalisation is inside the model), never in
    standardised units (the original CIFAR pitfall). The model must already carry masks
    (:func:`robustcompress.nn.beta_bernoulli.add_bb_masks`) and should start from a
    standard-trained checkpoint.

    Defaults are the MNIST / LeNet-5 row of the README commands (beta 4, lambda 1e-3, PGD eps 0.3,
    step 0.01, 20 steps); CIFAR-10/VGG-16 uses beta 2, lambda 1e-4, eps 0.03, step 0.007, 10 steps.

    Deviation from the original: in the TF graph every forward samples its own masks, so CE(x),
    CE(x_adv) and the two halves of V each see different draws; here V reuses the two forwards of
    CE(x) and CE(x_adv) (the clean half and the adversarial half still see independent draws),
    saving two forward passes.
    """

    def __init__(self, threat, n_train: int, *, beta: float = 4.0, lam: float = 1e-3,
                 adv_weight: float = 2.0, steps: int = 20, step_size: Optional[float] = 0.01,
                 mask_lr: float = 1e-2, weight_lr: float = 1e-3, weight_decay: float = 1e-4,
                 layers="relu", generator: Optional[torch.Generator] = None):
        from robustcompress.errors import UserInputError

        if n_train < 1:
            raise UserInputError(f"n_train (training-set size for the KL scaling) must be >= 1, got {n_train}")
        self.threat, self.n_train = threat, int(n_train)
        self.beta, self.lam, self.adv_weight = float(beta), float(lam), float(adv_weight)
        self.steps, self.step_size = int(steps), step_size
        self.mask_lr, self.weight_lr, self.weight_decay = mask_lr, weight_lr, weight_decay
        self.layers, self.generator = layers, generator

    def param_groups(self, model: nn.Module) -> dict[str, dict]:
        from robustcompress.errors import UserInputError
        from robustcompress.nn.beta_bernoulli import mask_parameters

        masks = mask_parameters(model)
        if not masks:
            raise UserInputError("ANP-VS needs Beta-Bernoulli masks in the model; call "
                                 "add_bb_masks(model) (or use the anp_vs defense) first")
        ids = {id(p) for p in masks}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return {
            "masks": {"params": masks, "lr": self.mask_lr, "optimizer": "adam", "weight_decay": 0.0},
            "weights": {"params": weights, "lr": self.weight_lr, "optimizer": "adam",
                        "weight_decay": self.weight_decay},
        }

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = {"steps": self.steps}
        if self.step_size is not None:
            params["step_size"] = self.step_size
        return craft_adversarial(model, x, y, self.threat, "pgd", mode="eval",
                                 generator=self.generator, **params)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        from robustcompress.metrics.vulnerability import vulnerability_from_features
        from robustcompress.models.features import features
        from robustcompress.nn.beta_bernoulli import bb_kl_total

        x_adv = self.adversarial(model, x, y)
        logits_c, f_c = features(model, x, self.layers, return_logits=True)
        logits_a, f_a = features(model, x_adv, self.layers, return_logits=True)
        ce_c, ce_a = F.cross_entropy(logits_c, y), F.cross_entropy(logits_a, y)
        kl = self.beta * bb_kl_total(model).to(ce_a) / self.n_train
        vul = vulnerability_from_features(f_c, f_a)
        w = self.adv_weight
        return {
            "masks": ce_a + kl,
            "weights": (ce_c + w * ce_a) / (1.0 + w) + kl + self.lam * vul,
            "vulnerability": vul.detach(),
            "kl": kl.detach(),
        }

    def __repr__(self) -> str:
        return (f"ANPVS(eps={self.threat.eps:g}, beta={self.beta}, lam={self.lam}, "
                f"adv_weight={self.adv_weight}, steps={self.steps}, step_size={self.step_size}, "
                f"n_train={self.n_train})")


class LipschitzRegularized:
    """``base(model, x, y) + beta/2 * sum_l ||W_l^T W_l - I||_F^2`` (Defensive Quantization,
    Lin et al. 2019; the penalty is :func:`robustcompress.nn.act_quant.orthogonality_penalty`).

    ``beta = 3e-4`` is the order quoted for the paper [recalled, unverified]; ``base`` defaults to
    cross-entropy and may be an :class:`AdversarialTraining` objective (DQ + AT).
    """

    def __init__(self, beta: float = 3e-4, base=None, gram: str = "auto"):
        self.beta, self.base, self.gram = float(beta), base or CrossEntropy(), gram

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from robustcompress.nn.act_quant import orthogonality_penalty

        loss = self.base(model, x, y)
        return loss + orthogonality_penalty(model, self.beta, self.gram).to(loss)

    def __repr__(self) -> str:
        return f"LipschitzRegularized(beta={self.beta}, base={self.base!r}, gram={self.gram!r})"

"""What every attack shares: the result type, input gradients with EOT, MC predictions, judging.

* :class:`AttackResult`: the one return value of every attack (no ``(raw, clipped, success)``
  triple): adversarial inputs inside the threat model, per-sample success under the MC-averaged
  prediction, "fooled in at least one draw", predictions and perturbation sizes.
* :func:`input_gradient`: ``d loss / d x`` only (``torch.autograd.grad`` with respect to the
  input), so the model's parameter ``.grad`` buffers are never touched and no weight gradient is
  computed; the model's train/eval mode is never changed. For stochastic models (modules declaring
  ``stochastic=True``, see :mod:`robustcompress.nn.protocol`) it averages over ``eot_samples``
  draws of the model's randomness (Expectation over Transformation, Athalye et al. 2018).
* :func:`mc_predict` and :func:`judge`: Monte-Carlo averaged softmax predictions, the verdict a
  robust-accuracy figure is computed from (a sample is robust only under the averaged prediction;
  ``fooled_any`` also reports "fooled in at least one of n draws"). With a single draw
  (deterministic models) the verdict is the argmax of the logits themselves, exactly what a user
  re-predicting gets (softmax can round two nearly equal logits to equal probabilities).
* :class:`SampleNoise`: randomness drawn per sample from per-sample generators seeded in order from
  the caller's generator, so random starts do not depend on how the data is batched.

Losses are *per sample* and summed (never averaged) before differentiation, so the gradient of one
sample does not depend on the batch size. Every loss is oriented so that the attacker maximises it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.attacks.threat import ThreatModel
from robustcompress.errors import UserInputError
from robustcompress.nn.protocol import is_stochastic, use_generator

#: Draws of a stochastic model's randomness per gradient when the caller does not say
#: (AutoAttack's ``version='rand'`` uses 20).
DEFAULT_EOT_SAMPLES = 20
#: Draws averaged for the final prediction of a stochastic model when the caller does not say.
DEFAULT_MC_SAMPLES = 20

#: Rows per stacked forward on CPU when the caller gives no bound: larger stacks fall out of the
#: caches and run slower than separate passes (measured on a shared 2-core VM, LeNet-5, EOT-20 of
#: a batch of 64: all 1280 rows in one pass 1.5-1.7x the time of twenty 64-row passes; stacks of
#: 128-256 rows 0.9-1.16x, within the machine's noise).
CPU_MAX_ROWS = 256

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------- result
@dataclass
class AttackResult:
    """Outcome of one attack on a batch (every tensor has one row per input).

    Attributes
    ----------
    x_adv : adversarial inputs, inside the threat model's eps-ball and box (minimal-perturbation
        attacks may return points outside the ball; then ``success`` also requires
        ``norm <= eps``).
    success : the attack reached its goal (misclassification, or the target class) under the
        MC-averaged prediction. Robust accuracy is ``1 - success.float().mean()``; inputs the model
        already misclassifies count as successes.
    fooled_any : goal reached in at least one of the ``mc_samples`` draws (equal to ``success``
        for deterministic models).
    pred : predicted class of ``x_adv`` (:func:`prediction`: argmax of the logits for a
        deterministic model, of the MC-averaged softmax for a stochastic one).
    norm : perturbation size ``||x_adv - x||`` in the threat model's norm.
    attack, params : the attack's registered name and the parameters it ran with.
    extra : attack-specific per-sample or scalar information (e.g. the loss reached).
    time_s : wall-clock seconds (set by :func:`~robustcompress.attacks.registry.run_attack`).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    fooled_any: torch.Tensor
    pred: torch.Tensor
    norm: torch.Tensor
    attack: str = ""
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    time_s: float = 0.0

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def robust_accuracy(self) -> float:
        """Fraction of inputs on which the attack failed (NaN for an empty batch)."""
        n = len(self)
        return float((~self.success).sum()) / n if n else math.nan

    def summary(self) -> dict:
        """Scalars for tables and JSON: robust accuracy, fooled-any rate, perturbation norms."""
        norm = self.norm.detach().double().cpu()
        ok = self.success.cpu()
        return {
            "attack": self.attack,
            "n": len(self),
            "robust_accuracy": self.robust_accuracy,
            "success_rate": float(ok.double().mean()) if len(self) else math.nan,
            "fooled_any_rate": float(self.fooled_any.double().mean()) if len(self) else math.nan,
            "norm_mean": float(norm.mean()) if len(self) else math.nan,
            "norm_median": float(norm.median()) if len(self) else math.nan,
            "norm_max": float(norm.max()) if len(self) else math.nan,
            "time_s": self.time_s,
            "params": dict(self.params),
        }

    @staticmethod
    def concat(results: Sequence["AttackResult"]) -> "AttackResult":
        """Join per-batch results (same attack) into one, in order.

        Per-sample tensors in ``extra`` are concatenated, numbers averaged weighted by batch size,
        anything else taken from the first batch.
        """
        if not results:
            raise ValueError("nothing to concatenate")
        first = results[0]
        extra = {}
        sizes = [len(r) for r in results]
        for k, v in first.extra.items():
            values = [r.extra.get(k) for r in results]
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and all(isinstance(u, torch.Tensor) for u in values):
                extra[k] = torch.cat(values)
            elif isinstance(v, (int, float)) and all(isinstance(u, (int, float)) for u in values) and sum(sizes):
                extra[k] = sum(u * n for u, n in zip(values, sizes)) / sum(sizes)
            else:
                extra[k] = v
        return AttackResult(
            x_adv=torch.cat([r.x_adv for r in results]),
            success=torch.cat([r.success for r in results]),
            fooled_any=torch.cat([r.fooled_any for r in results]),
            pred=torch.cat([r.pred for r in results]),
            norm=torch.cat([r.norm for r in results]),
            attack=first.attack,
            params=dict(first.params),
            extra=extra,
            time_s=sum(r.time_s for r in results),
        )


# ---------------------------------------------------------------------------- losses
def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def mask_label(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits`` with each sample's class ``y`` set to ``-inf`` (the other classes only)."""
    return logits.scatter(1, y.view(-1, 1), float("-inf"))


def _top_other(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``y`` (per sample)."""
    return mask_label(logits, y).amax(dim=1)


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini & Wagner's margin, oriented for the attacker: ``max_{i != y} z_i - z_y``.

    Positive exactly when the input is misclassified. Unclamped (no confidence kappa).
    """
    return _top_other(logits, y) - logits.gather(1, y.view(-1, 1)).squeeze(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein, ICML 2020, eq. 6), oriented for the attacker.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` with ``z_pi`` the logits sorted in decreasing
    order; invariant to shifting and rescaling the logits. Needs at least 3 classes.
    """
    if logits.shape[1] < 3:
        raise UserInputError("the DLR loss needs at least 3 classes; use loss='ce' or 'cw'")
    z = logits.sort(dim=1, descending=True).values
    return cw_loss(logits, y) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR of APGD-T (Croce & Hein 2020, eq. 7): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2)``.

    Maximised by the attacker; needs at least 4 classes.
    """
    if logits.shape[1] < 4:
        raise UserInputError("the targeted DLR loss needs at least 4 classes; use loss='ce'")
    z = logits.sort(dim=1, descending=True).values
    zy = logits.gather(1, y.view(-1, 1)).squeeze(1)
    zt = logits.gather(1, target.view(-1, 1)).squeeze(1)
    return -(zy - zt) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "cw": cw_loss}


def loss_label(loss: Union[str, LossFn]) -> str:
    """How an attack's ``params`` record its loss: the name, or ``"custom"`` for a callable."""
    return loss if isinstance(loss, str) else "custom"


def resolve_loss(loss: Union[str, LossFn]) -> LossFn:
    """A loss name (``"ce"``, ``"dlr"``, ``"cw"``) or a callable ``loss(logits, y) -> [B]``."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise UserInputError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or pass a callable")
    return LOSSES[loss]


# ---------------------------------------------------------------------------- draws
def samples_vectorizable(model: nn.Module) -> bool:
    """True if every stochastic module draws independently per sample (``granularity="sample"``).

    Then repeating the batch n times in one forward gives n independent draws per input. Modules
    that do not declare a granularity are treated as ``"batch"`` (one draw shared by the batch).
    """
    return all(
        getattr(m, "granularity", "batch") == "sample"
        for m in model.modules()
        if getattr(m, "stochastic", False)
    )


def resolve_draws(model: nn.Module, n: Optional[int], default: int) -> int:
    """Number of draws to average: 1 for deterministic models, ``n`` (or ``default``) otherwise."""
    if not is_stochastic(model):
        return 1
    n = default if n is None else int(n)
    if n < 1:
        raise UserInputError(f"the number of samples must be >= 1, got {n}")
    return n


def _copies_per_forward(model: nn.Module, batch: int, n: int, max_rows: Optional[int]) -> list[int]:
    """Split ``n`` draws into forwards of ``c`` stacked copies of the batch (sum of c = n)."""
    if n <= 1:
        return [1]
    if samples_vectorizable(model):
        k = n if max_rows is None else max(1, int(max_rows) // max(batch, 1))
    else:
        k = 1
    k = min(k, n)
    return [k] * (n // k) + ([n % k] if n % k else [])


def generator_scope(model: nn.Module, generator: Optional[torch.Generator]):
    """The model's stochastic modules draw from ``generator`` inside the block (no-op if ``None``)."""
    return use_generator(model, generator) if generator is not None else contextlib.nullcontext()


def _repeat(t: torch.Tensor, c: int) -> torch.Tensor:
    return t if c == 1 else t.repeat(c, *([1] * (t.dim() - 1)))


def bcast_rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``v [B]`` viewed as ``[B, 1, ..., 1]`` to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _objective_of_copies(model: nn.Module, fn: LossFn, x: torch.Tensor, y: torch.Tensor, c: int,
                         targeted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective [c*B], logits [c*B, C])`` of one forward over ``c`` stacked copies of the batch."""
    logits = model(_repeat(x, c))
    obj = fn(logits, _repeat(y, c))
    return (-obj if targeted else obj), logits


def _over_draws(model: nn.Module, batch: int, n: int, max_rows: Optional[int], run: Callable[[int], tuple],
                device: Optional[torch.device] = None):
    """``[run(c) for c in plan]`` over chunks of ``c`` stacked copies of the batch (sum of c = n).

    ``max_rows=None`` stacks without limit on accelerators and up to :data:`CPU_MAX_ROWS` rows on
    CPU. On a GPU out-of-memory error the whole computation starts again with half as many copies
    per forward ("vectorised where memory allows, chunked otherwise"); with one copy it re-raises.
    """
    rows = max_rows
    if rows is None and device is not None and device.type == "cpu":
        rows = CPU_MAX_ROWS
    while True:
        plan = _copies_per_forward(model, batch, n, rows)
        try:
            return [run(c) for c in plan]
        except torch.cuda.OutOfMemoryError:
            if plan[0] <= 1:
                raise
            rows = (plan[0] // 2) * max(batch, 1)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _total(parts: list, i: int):
    out = parts[0][i]
    for p in parts[1:]:
        out = out + p[i]
    return out


# ---------------------------------------------------------------------------- gradients
def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: Union[str, LossFn] = "ce",
    eot_samples: Optional[int] = 1,
    generator: Optional[torch.Generator] = None,
    targeted: bool = False,
    max_rows: Optional[int] = None,
    return_logits: bool = False,
):
    """Per-sample attacker objective and its gradient with respect to the input only.

    Parameters
    ----------
    model : any ``nn.Module`` mapping ``[B, ...]`` inputs to ``[B, C]`` logits. Its mode, its
        parameters and their ``.grad`` are left untouched; no weight gradient is computed.
    x, y : inputs and labels (targets when ``targeted``).
    loss : ``"ce"``, ``"dlr"``, ``"cw"`` or ``callable(logits, y) -> [B]`` to maximise.
    eot_samples : draws of the model's randomness to average (EOT). Ignored (1) for deterministic
        models; ``None`` means :data:`DEFAULT_EOT_SAMPLES` for stochastic ones.
    generator : the stochastic modules draw from it during the call (via
        :func:`robustcompress.nn.use_generator`); the global RNG is then not used.
    targeted : maximise ``-loss(logits, y)`` (move towards the target ``y``).
    max_rows : most rows per forward when draws are vectorised (memory bound); ``None``: all
        ``eot_samples`` copies of the batch in one forward on an accelerator (halved on
        out-of-memory errors), at most :data:`CPU_MAX_ROWS` rows on CPU.
    return_logits : also return the logits averaged over the draws (detached).

    Returns
    -------
    ``(objective [B], grad [B, ...])`` (plus ``logits [B, C]`` if asked): the objective is the
    value being maximised (the loss, or minus it when targeted), averaged over draws; ``grad`` is
    its average gradient. The per-sample losses are summed before differentiation, so each
    sample's gradient is independent of the batch. Inputs the model output does not depend on get
    a zero gradient; NaN gradients are returned as they are (see the masking checks).

    Notes
    -----
    EOT is vectorised by stacking ``c`` copies of the batch in one forward when every stochastic
    module draws per sample (``granularity="sample"``), and looped one draw per forward otherwise
    (a ``"batch"`` module shares one draw across the whole forward, so stacked copies would not be
    independent draws).
    """
    fn = resolve_loss(loss)
    n = resolve_draws(model, eot_samples, DEFAULT_EOT_SAMPLES)
    xi = x.detach().requires_grad_(True)
    batch = x.shape[0]

    def run(c: int):
        obj, logits = _objective_of_copies(model, fn, xi, y, c, targeted)
        if obj.requires_grad:
            (g,) = torch.autograd.grad(obj.sum(), xi, allow_unused=True)
        else:  # the output does not depend differentiably on the input (e.g. detached inside)
            g = None
        g = torch.zeros_like(xi) if g is None else g
        lg = logits.detach().view(c, batch, -1).sum(0) if return_logits else None
        return obj.detach().view(c, batch).sum(0), g, lg

    with generator_scope(model, generator), torch.enable_grad():
        parts = _over_draws(model, batch, n, max_rows, run, x.device)
    obj_mean, grad_mean = _total(parts, 0), _total(parts, 1)
    if n > 1:
        obj_mean, grad_mean = obj_mean / n, grad_mean / n
    if return_logits:
        return obj_mean, grad_mean, _total(parts, 2) / n
    return obj_mean, grad_mean


@torch.no_grad()
def objective(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: Union[str, LossFn] = "ce",
    eot_samples: Optional[int] = 1,
    generator: Optional[torch.Generator] = None,
    targeted: bool = False,
    max_rows: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker objective and mean logits of :func:`input_gradient`, without the gradient."""
    fn = resolve_loss(loss)
    n = resolve_draws(model, eot_samples, DEFAULT_EOT_SAMPLES)
    batch = x.shape[0]

    def run(c: int):
        obj, logits = _objective_of_copies(model, fn, x, y, c, targeted)
        return obj.view(c, batch).sum(0), logits.view(c, batch, -1).sum(0)

    with generator_scope(model, generator):
        parts = _over_draws(model, batch, n, max_rows, run, x.device)
    return _total(parts, 0) / n, _total(parts, 1) / n


# ---------------------------------------------------------------------------- predictions
@torch.no_grad()
def draw_logits(
    model: nn.Module,
    x: torch.Tensor,
    *,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """Logits of each draw (at least float32), shape ``[n, B, C]`` (``n = 1`` for deterministic models).

    ``batch_size`` bounds the rows per forward (inputs times stacked copies).
    """
    n = resolve_draws(model, mc_samples, DEFAULT_MC_SAMPLES)
    batch = x.shape[0]
    rows = batch_size if batch_size is not None else None
    chunks = [x] if rows is None or rows >= batch else list(x.split(int(rows)))

    def run(c: int):
        parts = [
            _at_least_float32(model(_repeat(xc, c))).view(c, xc.shape[0], -1)
            for xc in chunks
        ]
        return (torch.cat(parts, dim=1),)

    with generator_scope(model, generator):
        out = _over_draws(model, min(batch, rows or batch), n, rows, run, x.device)
    return torch.cat([o[0] for o in out], dim=0)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def mc_predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """Mean softmax probabilities ``[B, C]`` over ``mc_samples`` draws of the model's randomness.

    ``mc_samples=None`` means 1 for deterministic models and :data:`DEFAULT_MC_SAMPLES` for
    stochastic ones. Runs under ``no_grad``; the model's mode is not changed.
    """
    logits = draw_logits(model, x, mc_samples=mc_samples, generator=generator, batch_size=batch_size)
    return F.softmax(logits, dim=2).mean(0)


def prediction(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class ``[B]`` from the logits of ``n`` draws ``[n, B, C]`` (see :func:`draw_logits`).

    One draw (deterministic models): the argmax of the logits, exactly what re-predicting the
    input gives; two logits closer than float rounding would tie after softmax and could give
    another class. Several draws: the argmax of the mean softmax (the MC-averaged prediction).
    """
    if logits.shape[0] == 1:
        return logits[0].argmax(dim=1)
    return F.softmax(logits, dim=2).mean(0).argmax(dim=1)


def within_budget(norm: torch.Tensor, eps: float) -> torch.Tensor:
    """``norm <= eps`` up to float rounding (relative 1e-6, absolute 1e-12)."""
    return norm <= eps * (1 + 1e-6) + 1e-12


def reached_goal(pred: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Misclassified (untargeted) or classified as the target (targeted)."""
    return pred == y if targeted else pred != y


def judge(
    model: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    batch_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(success, fooled_any, pred)`` of ``x_adv`` under MC-averaged predictions.

    ``success``: the prediction (:func:`prediction`: the logits' argmax for a deterministic model,
    the MC-averaged softmax's for a stochastic one) reaches the goal; ``fooled_any``: at least one
    draw's own prediction (the argmax of its logits) does.
    """
    logits = draw_logits(model, x_adv, mc_samples=mc_samples, generator=generator, batch_size=batch_size)
    pred = prediction(logits)
    success = reached_goal(pred, y, threat.targeted)
    fooled_any = reached_goal(logits.argmax(dim=2), y.unsqueeze(0), threat.targeted).any(dim=0)
    return success, fooled_any | success, pred


def finish(
    attack: str,
    params: dict,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    threat: ThreatModel,
    *,
    mc_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    project: bool = True,
    logits: Optional[torch.Tensor] = None,
    extra: Optional[dict] = None,
) -> AttackResult:
    """Project ``x_adv`` into the threat model (if ``project``), judge it and build the result.

    Without projection (minimal-perturbation attacks) ``success`` additionally requires the
    perturbation to fit the budget. ``logits`` of exactly ``x_adv`` (already inside the threat
    model) spare the final forward pass for a deterministic model; stochastic models are always
    judged afresh on ``mc_samples`` draws.
    """
    x_adv = x_adv.detach()
    norm = threat.norm_of(x_adv - x)
    reuse = (  # a stochastic model's point is judged by fresh draws, never by the crafting draw
        logits is not None
        and not is_stochastic(model)
        and resolve_draws(model, mc_samples, DEFAULT_MC_SAMPLES) == 1
        and not bool(torch.isnan(logits).any())
        and bool(within_budget(norm, threat.eps).all())
        and bool(((x_adv >= threat.bounds[0]) & (x_adv <= threat.bounds[1])).all())
    )
    if reuse:
        pred = logits.argmax(dim=1)
        success = reached_goal(pred, y, threat.targeted)
        return AttackResult(x_adv, success, success.clone(), pred, norm, attack, dict(params),
                            dict(extra or {}))
    if project:
        x_adv = threat.project(x_adv, x).detach()
    return _judged(attack, params, model, x, y, x_adv, threat, budget=not project,
                   mc_samples=mc_samples, generator=generator, extra=dict(extra or {}))


def finish_minimal(attack: str, params: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   x_adv: torch.Tensor, min_norm: torch.Tensor, threat: ThreatModel, *,
                   mc_samples: Optional[int], generator: Optional[torch.Generator],
                   extra: dict) -> AttackResult:
    """Judge the result of a minimal-perturbation attack (shared by C&W and DeepFool).

    ``x_adv`` is clipped to the box but not projected onto the ball; it is judged with the
    MC-averaged prediction, and with ``threat.eps > 0`` a success also needs ``norm <= eps``
    (``eps == 0``: no budget). ``extra["min_norm"]`` keeps the attack's own minimal norms.
    """
    return _judged(attack, params, model, x, y, threat.clip(x_adv).detach(), threat,
                   budget=threat.eps > 0, mc_samples=mc_samples, generator=generator,
                   extra={"min_norm": min_norm, **extra})


def _judged(attack: str, params: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            x_adv: torch.Tensor, threat: ThreatModel, *, budget: bool, mc_samples: Optional[int],
            generator: Optional[torch.Generator], extra: dict) -> AttackResult:
    """Judge ``x_adv`` afresh; with ``budget`` a success also needs the perturbation to fit eps."""
    norm = threat.norm_of(x_adv - x)
    success, fooled_any, pred = judge(model, x_adv, y, threat, mc_samples, generator)
    if budget:
        fits = within_budget(norm, threat.eps)
        success, fooled_any = success & fits, fooled_any & fits
    return AttackResult(x_adv, success, fooled_any, pred, norm, attack, dict(params), extra)


# ---------------------------------------------------------------------------- randomness
def draw_seed(generator: Optional[torch.Generator]) -> int:
    """One seed drawn from ``generator`` (on its own device), or from the global RNG when ``None``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=gdev))


def child_generator(generator: Optional[torch.Generator], device: torch.device) -> torch.Generator:
    """A fresh generator on ``device``, seeded with :func:`draw_seed` from ``generator``."""
    return torch.Generator(device=device).manual_seed(draw_seed(generator))


class SampleNoise:
    """Per-sample random streams, so random starts do not depend on how the data is batched.

    One seed per sample is drawn *in order* from ``generator`` (or the global RNG when ``None``);
    each sample then has its own ``torch.Generator`` on the inputs' device. The caller's generator
    advances by exactly ``n`` draws, so attacking ``x[:k]`` then ``x[k:]`` with one generator gives
    the same noise as attacking ``x`` at once.
    """

    def __init__(self, n: int, generator: Optional[torch.Generator], device: torch.device):
        self.device = torch.device(device)
        gdev = generator.device if generator is not None else torch.device("cpu")
        if gdev.type == "cpu":
            seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        else:  # one draw per call: CUDA generators are not prefix-consistent across sizes
            seeds = [draw_seed(generator) for _ in range(n)]
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def select(self, index) -> "SampleNoise":
        """The streams of rows ``index`` (shared, not copied: drawing from the view advances them)."""
        view = SampleNoise.__new__(SampleNoise)
        view.device = self.device
        view.generators = [self.generators[int(i)] for i in index]
        return view

    def _rows(self, index) -> list[torch.Generator]:
        if index is None:
            return self.generators
        return [self.generators[int(i)] for i in index]

    def _draw(self, like: torch.Tensor, shape, index, fn) -> torch.Tensor:
        gens = self._rows(index)
        if len(gens) != like.shape[0]:
            raise ValueError(f"{len(gens)} sample streams for a batch of {like.shape[0]}")
        if not gens:
            return like.new_empty((0, *shape))
        return torch.stack([fn(shape, generator=g, device=like.device, dtype=like.dtype) for g in gens])

    def rand(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """Uniform [0, 1) noise shaped like ``like`` (one row per sample)."""
        return self._draw(like, like.shape[1:], index, torch.rand)

    def randn(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """Standard normal noise shaped like ``like``."""
        return self._draw(like, like.shape[1:], index, torch.randn)

    def rand_per_sample(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """One uniform [0, 1) number per sample, shape [B]."""
        return self._draw(like, (), index, torch.rand)


# ---------------------------------------------------------------------------- checks
def check_attack_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> None:
    """Refuse inputs, labels, devices or dtypes an attack would silently get wrong, and an empty
    batch (the model's logits are checked on the attack's first forward: see
    :func:`~robustcompress.attacks.validation.first_forward_checked`)."""
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
    from robustcompress.attacks.validation import check_batch_and_dtype

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


def as_long(y: torch.Tensor) -> torch.Tensor:
    return y if y.dtype == torch.int64 else y.long()


__all__ = [
    "AttackResult", "DEFAULT_EOT_SAMPLES", "DEFAULT_MC_SAMPLES", "LOSSES", "SampleNoise",
    "bcast_rows", "ce_loss", "check_attack_inputs", "child_generator", "cw_loss", "dlr_loss",
    "dlr_targeted_loss", "draw_logits", "draw_seed", "finish", "finish_minimal", "generator_scope",
    "input_gradient", "judge", "loss_label", "mask_label", "mc_predict", "no_side_effects",
    "objective", "prediction", "reached_goal", "resolve_draws", "resolve_loss", "samples_vectorizable",
    "within_budget",
]

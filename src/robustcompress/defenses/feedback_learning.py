"""Feedback learning: boundary-based retraining before quantisation (Song, Fallon & Li, AAAI-21 RSEML).

The slides of "Improving Adversarial Robustness in Weight-quantized Neural Networks" describe it as:
classes are ranked by robustness into three tiers -- high (top 20% of classes, 20 samples per
class), low (bottom 50%, 150 per class) and medium (the rest, 100 per class); examples are
generated along the "direction with top-40 minimum margins" at "1.5x-2.0x margins to cross
boundaries"; they are added to training and the model is retrained.  "All parameters here are
empirical."  The method comes from the same group's earlier feedback-learning work, whose details
are not in the slides, so every unspecified choice below is ours and configurable:

* **class robustness** = mean L2 DeepFool distance to the decision boundary of the class's
  training points (misclassified points count 0), on a pool of ``pool`` training samples;
* **which samples**: in each class, the ``n`` correctly classified pool points with the smallest
  boundary distance (our reading of "top minimum margins"; ``select="random"`` picks at random);
* **direction and step**: DeepFool (L2, overshoot 0.02) finds the perturbation ``r`` at which the
  label flips; the new example is ``clip(x + s r)`` with ``s ~ U[1.5, 2.0]`` per example, i.e. it
  lies beyond the boundary, and it keeps its TRUE label (so retraining pushes the boundary out);
* **rounds**: ``rounds`` repetitions of (rank, generate, retrain ``epochs`` epochs on the original
  training set plus all examples generated so far), default 2 rounds of 1 epoch.
* **retraining recipe**: in an experiment run, the run's ``training:`` recipe (batch size,
  optimizer, lr, schedule, weight decay, flips/crops, device, amp) with only ``epochs`` and a
  per-round seed (run seed + round) overridden
  (:meth:`~robustcompress.defenses.base.DefenseContext.train`); the plain
  :func:`feedback_learning` takes a ``train_config`` (default TrainConfig's).
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from pydantic import Field
from torch import nn

from robustcompress.data.info import Dataset, Split
from robustcompress.defenses.base import (
    DefenseParams,
    DefenseSpec,
    record_defense,
    register_defense,
    replace_last_params,
)
from robustcompress.errors import UserInputError


def class_tiers(scores: torch.Tensor, high_frac: float = 0.2,
                low_frac: float = 0.5) -> list[str]:
    """Tier per class from robustness ``scores`` [C]: ``"high"`` for the top ``ceil(high_frac C)``,
    ``"low"`` for the bottom ``ceil(low_frac C)``, ``"medium"`` for the rest (ties by index)."""
    c = scores.numel()
    n_high, n_low = math.ceil(high_frac * c), math.ceil(low_frac * c)
    if n_high + n_low > c:
        raise UserInputError(f"tiers overlap: {n_high} high + {n_low} low classes > {c} classes; "
                             "lower high_frac or low_frac")
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    tiers = ["medium"] * c
    for i in order[:n_high]:
        tiers[i] = "high"
    for i in order[c - n_low:]:
        tiers[i] = "low"
    return tiers


def boundary_perturbations(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
                           max_iter: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepFool-L2 perturbation to the nearest boundary and whether it flips the label.

    Returns ``(delta [N, ...], flipped [N])``; ``delta`` is 0 where the point is already
    misclassified (``flipped`` False there).
    """
    from robustcompress.attacks.deepfool import deepfool_perturb

    deltas, flips = [], []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        x_adv = deepfool_perturb(model, xb, yb, norm="l2", bounds=bounds, max_iter=max_iter).x_adv
        with torch.no_grad():
            flipped = (model(x_adv).argmax(1) != yb) & correct
        d = (x_adv - xb) * flipped.view(-1, *([1] * (xb.dim() - 1)))
        deltas.append(d)
        flips.append(flipped)
    return torch.cat(deltas), torch.cat(flips)


def generate_boundary_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                               num_classes: int, *, high_frac: float = 0.2, low_frac: float = 0.5,
                               per_tier: tuple[int, int, int] = (20, 100, 150),
                               scale: tuple[float, float] = (1.5, 2.0), select: str = "min_margin",
                               bounds: tuple[float, float] = (0.0, 1.0),
                               generator: Optional[torch.Generator] = None) -> dict:
    """One feedback round's new examples (see the module docstring).

    Parameters
    ----------
    x, y : the pool of training points to rank classes on and to generate from.
    per_tier : samples per class for the (high, medium, low) tiers; the slides: 20/100/150.
    scale : range of the multiple of the boundary distance to step (slides: 1.5x-2.0x).

    Returns
    -------
    dict with ``x``, ``y`` (the new examples, true labels), ``class_scores`` [C], ``tiers``.
    """
    if select not in ("min_margin", "random"):
        raise UserInputError(f"select must be 'min_margin' or 'random', not {select!r}")
    was_training = model.training
    model.eval()
    try:
        delta, flipped = boundary_perturbations(model, x, y, bounds=bounds)
    finally:
        model.train(was_training)
    dist = delta.flatten(1).norm(dim=1)
    scores = torch.stack([dist[y == c].mean() if (y == c).any() else torch.tensor(0.0)
                          for c in range(num_classes)])
    tiers = class_tiers(scores, high_frac, low_frac)
    count = dict(zip(("high", "medium", "low"), per_tier))
    xs, ys = [], []
    for c in range(num_classes):
        idx = torch.nonzero((y == c) & flipped).reshape(-1)
        n = min(count[tiers[c]], idx.numel())
        if n == 0:
            continue
        if select == "min_margin":
            pick = idx[torch.argsort(dist[idx], stable=True)[:n]]
        else:
            pick = idx[torch.randperm(idx.numel(), generator=generator)[:n]]
        s = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator)
        s = s.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        xs.append((x[pick] + s * delta[pick]).clamp(*bounds))
        ys.append(y[pick])
    x_new = torch.cat(xs) if xs else x[:0]
    y_new = torch.cat(ys) if ys else y[:0]
    return {"x": x_new, "y": y_new, "class_scores": scores, "tiers": tiers}


def feedback_learning(model: nn.Module, dataset: Dataset, *, rounds: int = 2, epochs: int = 1,
                      pool: int = 2000, train_config=None, fit_fn=None,
                      generator: Optional[torch.Generator] = None,
                      progress: bool = False, **gen_kw) -> tuple[nn.Module, list[dict]]:
    """Boundary-based retraining of a deep copy of ``model`` (see the module docstring).

    Parameters
    ----------
    rounds, epochs : feedback rounds, and training epochs per round.
    pool : training points used per round for ranking and generation (random subset).
    train_config : :class:`robustcompress.training.TrainConfig` for the retraining (its epochs is
        replaced by ``epochs``; seed offset by the round).
    fit_fn : ``fit_fn(model, augmented_dataset, round) -> model`` replaces the retraining call
        (the registered defense passes
        :meth:`~robustcompress.defenses.base.DefenseContext.train`); its rounds record no fit
        metrics.
    gen_kw : passed to :func:`generate_boundary_examples`.

    Returns
    -------
    ``(model, history)``: the retrained copy and per round the class scores, tiers, number of
    generated examples and the fit metrics.
    """
    from robustcompress.training import TrainConfig, fit

    if rounds < 1:
        raise UserInputError(f"feedback learning needs rounds >= 1, got {rounds}")
    model = copy.deepcopy(model)
    cfg = train_config or TrainConfig()
    extra_x, extra_y, history = dataset.train.x[:0], dataset.train.y[:0], []
    n = len(dataset.train)
    for r in range(rounds):
        pick = torch.randperm(n, generator=generator)[:min(pool, n)]
        dev = next(model.parameters()).device
        new = generate_boundary_examples(
            model, dataset.train.x[pick].to(dev), dataset.train.y[pick].to(dev),
            dataset.info.num_classes, bounds=dataset.info.bounds, generator=generator, **gen_kw)
        extra_x = torch.cat([extra_x, new["x"].to(extra_x.device)])
        extra_y = torch.cat([extra_y, new["y"].to(extra_y.device)])
        aug = Dataset(dataset.info, Split(torch.cat([dataset.train.x, extra_x]),
                                          torch.cat([dataset.train.y, extra_y])), dataset.test)
        metrics = {}
        if fit_fn is not None:
            model = fit_fn(model, aug, r)
        else:
            res = fit(model, aug, cfg.model_copy(update={"epochs": epochs, "seed": cfg.seed + r}),
                      progress=progress)
            model, metrics = res.model, res.metrics
        history.append({"round": r + 1, "class_scores": new["class_scores"].tolist(),
                        "tiers": new["tiers"], "generated": int(new["y"].numel()),
                        "metrics": metrics})
    record_defense(model, "feedback_learning", {"rounds": rounds, "epochs": epochs, "pool": pool})
    return model, history


@register_defense
class FeedbackLearningDefense(DefenseSpec):
    """Boundary-based retraining (the paper's F.L. models); compose with ``quantize`` after it."""

    name = "feedback_learning"
    paper = ("Song, Fallon & Li, Improving Adversarial Robustness in Weight-quantized Neural "
             "Networks, AAAI-21 RSEML workshop (feedback learning)")
    revision = 1  # 1 (2026-12-05): trains with the run's recipe (before: TrainConfig defaults)

    class Params(DefenseParams):
        rounds: int = Field(2, ge=1)
        epochs: int = Field(1, ge=1)
        pool: int = Field(2000, ge=10)
        high_frac: float = Field(0.2, ge=0, le=1)
        low_frac: float = Field(0.5, ge=0, le=1)
        n_high: int = Field(20, ge=0)
        n_medium: int = Field(100, ge=0)
        n_low: int = Field(150, ge=0)
        scale_min: float = Field(1.5, gt=0)
        scale_max: float = Field(2.0, gt=0)
        select: str = "min_margin"

    def apply(self, model, params, ctx):
        gen = torch.Generator().manual_seed(ctx.seed)

        def fit_fn(net, data, r):  # the run's recipe; this method's epochs, a seed per round
            return ctx.train(net, dataset=data, epochs=params.epochs, seed=ctx.seed + r)

        out, _ = feedback_learning(
            model, ctx.dataset, rounds=params.rounds, epochs=params.epochs, pool=params.pool,
            fit_fn=fit_fn, generator=gen, progress=ctx.progress,
            high_frac=params.high_frac, low_frac=params.low_frac,
            per_tier=(params.n_high, params.n_medium, params.n_low),
            scale=(params.scale_min, params.scale_max), select=params.select)
        return {"": replace_last_params(out, params.model_dump())}

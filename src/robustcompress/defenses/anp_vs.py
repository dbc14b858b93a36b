"""ANP-VS: Adversarial Neural Pruning with Vulnerability Suppression.

Madaan, Shin & Hwang, "Adversarial Neural Pruning with Latent Vulnerability Suppression",
ICML 2020 (original code: ``divyam3897/ANP_VS``, TensorFlow 1.x).

Pipeline (:func:`anp_vs`):

1. start from a **standard-trained** model (as the original ``default/base`` checkpoint);
2. insert Beta-Bernoulli channel masks after every conv and hidden linear layer
   (:func:`robustcompress.nn.beta_bernoulli.add_bb_masks`);
3. train with :class:`robustcompress.training.objectives.ANPVS`: two Adam optimisers, masks on
   ``CE(x_adv) + beta KL / N``, weights on ``(CE(x) + 2 CE(x_adv)) / 3 + beta KL / N + lambda V``,
   PGD crafted in eval mode in the [0, 1] input space;
4. evaluate deterministically (eval mode: ``z = E[pi]``, 0 where ``E[pi] <= 1e-3``);
5. :func:`export_pruned`: physically remove the pruned channels (E[pi] <= threshold), fold the
   surviving channels' E[pi] scale into the weights, and verify that the small model computes
   exactly what the masked eval model computes (the channel surgery is
   :mod:`robustcompress.nn.channels`).

Deviations from the original are listed where they happen: mask placement
(:func:`~robustcompress.nn.beta_bernoulli.add_bb_masks`), the reuse of forwards in V
(:class:`~robustcompress.training.objectives.ANPVS`), and the input space of CIFAR attacks
(here always [0, 1] pixels; the original attacked standardised images, see defenses.md).

Training recipe of the registered defense (a choice): the original's optimisers are part of the
method, so they are the objective's parameter groups (Adam, masks lr ``mask_lr`` 1e-2, weights
lr ``weight_lr`` 1e-3 with L2 1e-4) and a run's ``optimizer``/``lr``/``momentum``/
``weight_decay`` do not apply; ``epochs`` and the schedule (both lrs x0.1 at the ``lr_steps``
fractions, [] = constant) are the defense's overrides (:func:`original_schedule`); everything
else -- batch size, flips/crops, device, amp -- is the run's recipe
(:meth:`~robustcompress.defenses.base.DefenseContext.train`). Outside a run the batch is the
original LeNet recipe's 64.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from robustcompress.defenses.base import (
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    record_defense,
    register_defense,
)
from robustcompress.errors import UserInputError
from robustcompress.nn import surgery
from robustcompress.nn.beta_bernoulli import (
    MASKABLE,
    BetaBernoulliMask,
    add_bb_masks,
    bb_masks,
)
from robustcompress.nn.channels import (
    apply_plan,
    find_chains,
    pruned_structure,
    removable_channels,
    verified_plan,
)
from robustcompress.training.config import LrSteps

#: Fractions of training at which the original LeNet recipe multiplies both learning rates by 0.1.
LENET_LR_STEPS = (0.5, 0.7)


# ============================================================================ masks -> weights
def masked_layers(model: nn.Module) -> dict[str, tuple[nn.Module, BetaBernoulliMask]]:
    """``{layer name: (conv/linear, mask)}`` for every ``nn.Sequential(layer, mask)`` that
    :func:`add_bb_masks` inserted."""
    out = {}
    for name, m in bb_masks(model):
        parent_name, _, idx = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if (idx == "1" and isinstance(parent, nn.Sequential) and len(parent) == 2
                and isinstance(parent[0], MASKABLE)):
            out[parent_name] = (parent[0], m)
    return out


@torch.no_grad()
def fold_masks(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A deep copy of ``model`` whose masks are folded into the preceding layer.

    Output channel ``c`` of each masked layer is multiplied by its eval-time mask ``E[pi_c]`` (0 if
    pruned): ``W[c] *= m_c``, ``b[c] *= m_c``; the ``Sequential(layer, mask)`` is replaced by the
    layer. In eval mode the result computes exactly what ``model.eval()`` computes. Returns the
    copy and ``{layer name: mask}``.
    """
    out = copy.deepcopy(model)
    masks = {}
    for name, (layer, mask) in masked_layers(out).items():
        m = mask.expected_mask().detach().to(layer.weight)
        layer.weight.mul_(m.view(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(m)
        surgery.replace_module(out, name, layer)
        masks[name] = m.cpu()
    return out, masks


def _layer_summary(model: nn.Module, example: torch.Tensor) -> dict:
    from robustcompress.metrics.compression import count_macs, count_parameters, exported_bytes

    shape = tuple(example.shape[1:])
    return {"params": count_parameters(model), "macs": count_macs(model, shape),
            "bytes": exported_bytes(model)}


@dataclass
class ExportResult:
    """The structurally pruned model and what changed.

    ``channels``: ``{layer: (kept, total)}``; ``kept``: ``{layer: [kept channel indices]}``;
    ``zeroed``: ``{layer: reason}`` for layers whose pruned channels could only be zeroed, not
    removed (the saving is then not claimed); ``before`` / ``after``: params, MACs and bytes on
    disk of the dense base architecture and of the exported model; ``max_abs_diff``: largest
    output difference to the masked eval model on the probe inputs.
    """

    model: nn.Module
    channels: dict[str, tuple[int, int]]
    kept: dict[str, list[int]]
    zeroed: dict[str, str] = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    max_abs_diff: float = 0.0

    def to_dict(self) -> dict:
        return {"channels": {k: list(v) for k, v in self.channels.items()}, "zeroed": self.zeroed,
                "before": self.before, "after": self.after, "max_abs_diff": self.max_abs_diff}


@torch.no_grad()
def export_pruned(model: nn.Module, example: torch.Tensor, *, atol: float = 1e-4) -> ExportResult:
    """Physically remove the channels whose eval-time mask is 0 (E[pi] <= threshold).

    ``model`` carries Beta-Bernoulli masks (not modified). Masks are folded into the weights
    (:func:`fold_masks`); then, for each masked layer whose output reaches the next conv/linear only
    through channel-wise modules (BN, ReLU, pooling, dropout, flatten; see :func:`find_chains`),
    the pruned output channels, their BN entries and the consumer's matching input channels (for a
    linear consumer after a flatten: the block of ``H*W`` columns) are deleted. A pruned channel
    whose value at the consumer is a non-zero constant (``ReLU(BN(0))``) is folded into the
    consumer's bias; when that is not exact (a constant entering a zero-padded conv) the channel is
    kept (zeroed). Layers coupled by residual additions keep their zeroed channels too (reported
    in ``zeroed``). The result is checked against the masked eval model on ``example`` (inputs in
    the model's box); a layer whose removal makes it differ by more than ``atol`` (a coupling the
    hooks cannot see, e.g. a functional residual addition) keeps its zeroed channels instead, with
    the reason in ``zeroed``.
    """
    ref = copy.deepcopy(model).eval()
    folded, masks = fold_masks(model)
    folded.eval()
    base = _strip_masks(copy.deepcopy(model))
    chains = find_chains(folded, list(masks), example)
    plan, zeroed = {}, {}
    for name, m in masks.items():
        pruned = m == 0
        ch = chains[name]
        if not bool(pruned.any()):
            continue
        if ch.reason or ch.consumer is None:
            zeroed[name] = ch.reason or "no consumer layer found"
            continue
        remove, k = removable_channels(folded, ch, pruned)
        if int(remove.sum()) < int(pruned.sum()):
            zeroed[name] = (f"{int(pruned.sum() - remove.sum())} pruned channel(s) kept zeroed: their "
                            "constant output enters a zero-padded conv")
        if bool(remove.any()):
            plan[name] = (~remove, k)
    accepted, diff = verified_plan(folded, chains, plan, ref, example, atol)
    for n in plan:
        if n not in accepted:
            zeroed[n] = ("structural removal did not reproduce the masked model (a coupling the "
                         "tracer cannot see); channels zeroed instead")
    plan = {n: plan[n] for n in accepted}
    exported = apply_plan(folded, chains, plan)
    kept = {n: (plan[n][0].nonzero().flatten().tolist() if n in plan
                else list(range(m.numel()))) for n, m in masks.items()}
    channels = {n: (int((m > 0).sum()), int(m.numel())) for n, m in masks.items()}
    return ExportResult(exported, channels, kept, zeroed, _layer_summary(base, example),
                        _layer_summary(exported, example), diff)


def _strip_masks(model: nn.Module) -> nn.Module:
    """Replace every ``Sequential(layer, mask)`` by the layer (the dense base architecture)."""
    for name, (layer, _) in masked_layers(model).items():
        surgery.replace_module(model, name, layer)
    return model


# ============================================================================ training entry point
def place_masks(model: nn.Module, where: str = "outputs") -> nn.Module:
    """A deep copy of ``model`` with untrained Beta-Bernoulli channel masks placed (step 2 of
    :func:`anp_vs`; no data needed): after every conv and every linear layer but the classifier
    (:func:`~robustcompress.nn.beta_bernoulli.maskable_layers`). :func:`anp_vs` trains them."""
    return add_bb_masks(copy.deepcopy(model), where)


def anp_vs(
    model: nn.Module,
    dataset,
    *,
    eps: float = 0.3,
    norm: str = "linf",
    beta: float = 4.0,
    lam: float = 1e-3,
    steps: int = 20,
    step_size: Optional[float] = 0.01,
    adv_weight: float = 2.0,
    mask_lr: float = 1e-2,
    weight_lr: float = 1e-3,
    where: str = "outputs",
    config=None,
    fit_fn=None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> nn.Module:
    """Train ANP-VS masks and weights on a deep copy of the (standard-trained) ``model``.

    Returns the masked model in eval mode. ``config`` is a
    :class:`~robustcompress.training.TrainConfig` (default: 10 epochs, batch 64, lr decayed by 0.1
    at 50% and 70% of training as the original LeNet recipe; the group learning rates 1e-2 /
    1e-3 come from the objective). ``fit_fn(model, objective) -> model`` overrides the training call
    (the experiment runner passes its own). Defaults are the MNIST / LeNet-5 row of the reference.

    ``mask_lr``: 1e-2 in the original, which needs on the order of a thousand steps before a mask
    reaches E[pi] <= 1e-3 (the original runs 200 epochs); short CPU runs may raise it (documented
    wherever we do).
    """
    from robustcompress.attacks import ThreatModel
    from robustcompress.training import fit
    from robustcompress.training.objectives import ANPVS

    threat = ThreatModel.from_spec(norm, eps, dataset.info)
    net = place_masks(model, where)
    obj = ANPVS(threat, len(dataset.train), beta=beta, lam=lam, adv_weight=adv_weight, steps=steps,
                step_size=step_size, mask_lr=mask_lr, weight_lr=weight_lr, generator=generator)
    if fit_fn is not None:
        net = fit_fn(net, obj) or net
    else:
        if config is None:
            config = default_config(10)
        fit(net, dataset, config, objective=obj, progress=progress)
    net.eval()
    return net


def original_schedule(epochs: int, lr_steps=LENET_LR_STEPS) -> dict:
    """TrainConfig fields of the original LeNet schedule: learning rates x0.1 at 50% and x0.01 at
    70% of ``epochs`` (``lr_steps``; ``()`` keeps them constant, which does better in short runs:
    see docs/reproductions/anp-vs.md)."""
    from robustcompress.training import recipe_overrides

    return {"epochs": epochs, "schedule": "none", "milestones": [], "gamma": 0.1,
            **recipe_overrides(epochs, lr_steps)}


def default_config(epochs: int, batch_size: int = 64, seed: int = 0, lr_steps=LENET_LR_STEPS):
    """The original LeNet recipe outside a run: batch 64 and :func:`original_schedule`."""
    from robustcompress.training import TrainConfig

    return TrainConfig(batch_size=batch_size, seed=seed, **original_schedule(epochs, lr_steps))


def probe_inputs(info, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Uniform random inputs in the dataset's box, to trace and verify an export."""
    lo, hi = info.bounds
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand((n,) + tuple(info.shape), generator=g)


# ============================================================================ defense spec
@register_defense
class ANPVSDefense(DefenseSpec):
    """ANP-VS as a pipeline step: masks + VS training, then (by default) structural export."""

    name = "anp_vs"
    paper = "Madaan, Shin & Hwang, ICML 2020"

    def coverage(self, model: nn.Module, params):
        from robustcompress.defenses.base import Coverage, layer_coverage
        from robustcompress.nn.beta_bernoulli import maskable_layers

        masked = maskable_layers(model)
        if params.where == "conv_out":
            masked = [n for n in masked if not isinstance(model.get_submodule(n), nn.Linear)]
        left = {n: "classifier or linear (where=conv_out)" for n in
                layer_coverage(self.name, model).sites if n not in masked}
        return Coverage(self.name, "output channels of conv/linear layers (masks)", masked, left)

    class Params(DefenseParams):
        eps: float = 0.3
        norm: str = "linf"
        beta: float = 4.0
        lam: float = 1e-3
        steps: int = 20
        step_size: Optional[float] = 0.01
        adv_weight: float = 2.0
        mask_lr: float = 1e-2
        weight_lr: float = 1e-3
        where: Literal["outputs", "conv_out"] = "outputs"
        epochs: int = 10
        #: fractions of training at which both lrs are multiplied by 0.1 (original: [0.5, 0.7];
        #: [] = constant)
        lr_steps: LrSteps = list(LENET_LR_STEPS)
        export: bool = True
        #: filled in by ``apply`` when exported: kept channels per layer (for checkpoint rebuild)
        kept_channels: Optional[dict[str, int]] = None

    def apply(self, model: nn.Module, params: "ANPVSDefense.Params", ctx: DefenseContext) -> dict[str, nn.Module]:
        gen = torch.Generator().manual_seed(ctx.seed)

        def fit_fn(net, obj):  # the run's recipe with the original schedule (module docstring)
            return ctx.train(net, obj, defaults={"batch_size": 64},
                             **original_schedule(params.epochs, params.lr_steps))

        net = anp_vs(model, ctx.dataset, eps=params.eps, norm=params.norm, beta=params.beta,
                     lam=params.lam, steps=params.steps, step_size=params.step_size,
                     adv_weight=params.adv_weight, mask_lr=params.mask_lr,
                     weight_lr=params.weight_lr, where=params.where, fit_fn=fit_fn,
                     generator=gen, progress=ctx.progress)
        p = params.model_dump()
        if not params.export:
            return {"": record_defense(net, self.name, p, base=model)}
        example = probe_inputs(ctx.dataset.info).to(next(net.parameters()).device)
        res = export_pruned(net, example)
        p["kept_channels"] = {n: len(k) for n, k in res.kept.items()}
        out = record_defense(res.model, self.name, p, base=model)
        out.robustcompress_export = res.to_dict()
        if hasattr(model, "robustcompress_spec"):
            out.robustcompress_spec = model.robustcompress_spec
        return {"": out}

    def structure(self, model: nn.Module, params: "ANPVSDefense.Params") -> nn.Module:
        if not params.export or params.kept_channels is None:
            return add_bb_masks(model, params.where)
        spec = getattr(model, "robustcompress_spec", None)
        if spec is None:
            raise UserInputError("rebuilding an exported ANP-VS model needs the base model's "
                                 "robustcompress_spec (build it with build_model)")
        from robustcompress.data.info import DatasetInfo

        example = probe_inputs(DatasetInfo.from_dict(spec["info"]), n=2)
        return pruned_structure(model, params.kept_channels, example)


def describe_export(res: ExportResult) -> list[str]:
    """Human-readable lines: pruned channels per layer and before/after figures."""
    lines = [f"{n}: {k}/{t} channels kept" + (f"  (zeroed, not removed: {res.zeroed[n]})"
                                                if n in res.zeroed else "")
             for n, (k, t) in res.channels.items()]
    b, a = res.before, res.after
    for key in ("params", "macs", "bytes"):
        if key in b and key in a and a[key]:
            lines.append(f"{key}: {b[key]:,} -> {a[key]:,} ({b[key] / a[key]:.2f}x smaller)")
    lines.append(f"max |exported - masked| on probe inputs: {res.max_abs_diff:.2e}")
    return lines


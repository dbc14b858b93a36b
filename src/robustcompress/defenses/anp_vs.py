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
   exactly what the masked eval model computes.

Deviations from the original are listed where they happen: mask placement
(:func:`~robustcompress.nn.beta_bernoulli.add_bb_masks`), the reuse of forwards in V
(:class:`~robustcompress.training.objectives.ANPVS`), and the input space of CIFAR attacks
(here always [0, 1] pixels; the original attacked standardised images, see defenses.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from robustcompress.defenses.base import DefenseContext, DefenseParams, DefenseSpec, register_defense
from robustcompress.errors import UserInputError
from robustcompress.nn import surgery
from robustcompress.nn.beta_bernoulli import (
    MASKABLE,
    BetaBernoulliMask,
    add_bb_masks,
    bb_masks,
)
from robustcompress.training.config import LrSteps

#: Modules a pruned channel may pass through between its producer and the next weight layer:
#: they act on each channel separately (BatchNorm is sliced with the channels).
CHANNELWISE = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
)


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


# ============================================================================ chain discovery
@dataclass
class Chain:
    """A producer layer, the channel-wise modules after it, and the one weight layer consuming it."""

    producer: str
    members: list[str]
    consumer: Optional[str]
    per_channel: int = 1  # inputs of a linear consumer per producer channel (flattened space)
    reason: str = ""  # why the chain is unsafe ("" if safe)
    out_shape: tuple[int, ...] = ()


def _leaf_calls(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    calls = []
    handles = []
    for name, m in model.named_modules():
        if name and not list(m.children()):
            def hook(mod, inp, out, _n=name):
                if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    calls.append((_n, mod, inp[0], out))
            handles.append(m.register_forward_hook(hook))
    was = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        for m, t in was:
            m.training = t
    return calls


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.numel() == b.numel()


def find_chains(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, Chain]:
    """For each producer ``names[i]`` (a conv/linear), follow its output through channel-wise
    modules to the next conv/linear, by matching tensors between consecutive module calls of one
    eval forward on ``example``. A chain is unsafe (``reason`` set) if the output goes through a
    module that mixes channels, a functional op the hooks cannot see (residual additions,
    concatenations), or feeds several modules."""
    calls = _leaf_calls(model, example)
    index = {n: i for i, (n, *_rest) in enumerate(calls)}
    chains = {}
    for name in names:
        if name not in index:
            chains[name] = Chain(name, [], None, reason="layer not executed in forward")
            continue
        i = index[name]
        cur = calls[i][3]
        out_shape = tuple(cur.shape[1:])
        members: list[str] = []
        chain = None
        for j in range(i + 1, len(calls)):
            n, mod, inp, out = calls[j]
            if not _same_storage(inp, cur):
                continue
            users = [c for c in calls[j + 1:] if _same_storage(c[2], cur) and c[0] != n]
            if users and not isinstance(mod, (nn.Flatten, nn.Identity)):
                chain = Chain(name, members, None, reason=f"the input of {n} also feeds {users[0][0]}")
                break
            if isinstance(mod, MASKABLE):
                if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups != 1:
                    chain = Chain(name, members, n, reason=f"consumer {n} is a grouped conv")
                elif isinstance(mod, nn.Linear):
                    c = out_shape[0]
                    if mod.in_features % c:
                        chain = Chain(name, members, n, reason=f"{n} inputs are not channel blocks")
                    else:
                        chain = Chain(name, members, n, mod.in_features // c)
                else:
                    chain = Chain(name, members, n)
                break
            if not isinstance(mod, CHANNELWISE):
                chain = Chain(name, members, None, reason=f"{n} ({type(mod).__name__}) mixes channels")
                break
            members.append(n)
            cur = out
        if chain is None:
            chain = Chain(name, members, None, reason="output leaves through a functional op "
                                                      "(e.g. a residual addition)")
        chain.out_shape = out_shape
        chains[name] = chain
    return chains


# ============================================================================ surgery
@torch.no_grad()
def _pruned_constants(model: nn.Module, chain: Chain) -> torch.Tensor:
    """What a channel that is identically 0 at the producer becomes at the consumer's input
    (e.g. ReLU(BN(0)) = ReLU(beta - mean gamma / sigma)): ``[1, C, ...]`` (or ``[1, C * S]``)."""
    z = torch.zeros((1,) + chain.out_shape, dtype=model.get_submodule(chain.producer).weight.dtype,
                    device=model.get_submodule(chain.producer).weight.device)
    for n in chain.members:
        m = model.get_submodule(n)
        was = m.training
        m.eval()
        z = m(z)
        m.train(was)
    return z


def _removable(model: nn.Module, chain: Chain, pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(channels that can be removed exactly, their constants at the consumer input)."""
    k = _pruned_constants(model, chain)
    cons = model.get_submodule(chain.consumer)
    c = chain.out_shape[0]
    if isinstance(cons, nn.Linear):
        return pruned.clone(), k.reshape(c, -1)
    kc = k.reshape(c, -1)
    const = (kc.amax(1) == kc.amin(1))
    zero_pad = any(p != 0 for p in _as_tuple(cons.padding)) and cons.padding_mode == "zeros"
    ok = const & ((kc[:, 0] == 0) | (not zero_pad))
    return pruned & ok, kc


def _as_tuple(p) -> tuple:
    return tuple(p) if isinstance(p, (tuple, list)) else (p,)


@torch.no_grad()
def _slice_out(layer: nn.Module, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = int(keep.numel())
    else:
        layer.out_channels = int(keep.numel())


@torch.no_grad()
def _slice_bn(bn: nn.Module, keep: torch.Tensor) -> None:
    if bn.weight is not None:
        bn.weight = nn.Parameter(bn.weight[keep].clone())
        bn.bias = nn.Parameter(bn.bias[keep].clone())
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[keep].clone()
        bn.running_var = bn.running_var[keep].clone()
    bn.num_features = int(keep.numel())


@torch.no_grad()
def _slice_in(layer: nn.Module, keep: torch.Tensor, c: int, per_channel: int) -> None:
    w = layer.weight
    if isinstance(layer, nn.Linear):
        w = w.reshape(w.shape[0], c, per_channel)[:, keep].reshape(w.shape[0], -1)
        layer.in_features = int(w.shape[1])
    else:
        w = w[:, keep]
        layer.in_channels = int(keep.numel())
    layer.weight = nn.Parameter(w.clone())


@torch.no_grad()
def _fold_constants(layer: nn.Module, remove: torch.Tensor, k: torch.Tensor, c: int,
                    per_channel: int) -> None:
    """Add the contribution of the removed (constant) input channels to ``layer``'s bias."""
    idx = remove.nonzero().flatten()
    if idx.numel() == 0 or not bool((k[idx] != 0).any()):
        return
    w = layer.weight
    if isinstance(layer, nn.Linear):
        wc = w.reshape(w.shape[0], c, per_channel)[:, idx]  # [O, r, S]
        delta = torch.einsum("ors,rs->o", wc, k[idx])
    else:
        delta = (w[:, idx].flatten(2).sum(2) * k[idx, 0]).sum(1)
    if layer.bias is None:
        layer.bias = nn.Parameter(delta.clone())
    else:
        layer.bias = nn.Parameter(layer.bias + delta)


def _apply_keep(model: nn.Module, chain: Chain, keep: torch.Tensor,
                constants: Optional[torch.Tensor] = None) -> None:
    """Remove the producer's channels not in ``keep`` (bool [C]) along the chain."""
    c = chain.out_shape[0]
    cons = model.get_submodule(chain.consumer)
    if constants is not None:
        _fold_constants(cons, ~keep, constants, c, chain.per_channel)
    keep = keep.nonzero().flatten()  # indices from here on
    _slice_in(cons, keep, c, chain.per_channel)
    for n in chain.members:
        m = model.get_submodule(n)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            _slice_bn(m, keep)
    _slice_out(model.get_submodule(chain.producer), keep)


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
        remove, k = _removable(folded, ch, pruned)
        if int(remove.sum()) < int(pruned.sum()):
            zeroed[name] = (f"{int(pruned.sum() - remove.sum())} pruned channel(s) kept zeroed: their "
                            "constant output enters a zero-padded conv")
        if bool(remove.any()):
            plan[name] = (~remove, k)
    accepted, diff = _verified_plan(folded, chains, plan, ref, example, atol)
    for n in plan:
        if n not in accepted:
            zeroed[n] = ("structural removal did not reproduce the masked model (a coupling the "
                         "tracer cannot see); channels zeroed instead")
    plan = {n: plan[n] for n in accepted}
    exported = _build(folded, chains, plan)
    kept = {n: (plan[n][0].nonzero().flatten().tolist() if n in plan
                else list(range(m.numel()))) for n, m in masks.items()}
    channels = {n: (int((m > 0).sum()), int(m.numel())) for n, m in masks.items()}
    return ExportResult(exported, channels, kept, zeroed, _layer_summary(base, example),
                        _layer_summary(exported, example), diff)


def _build(folded: nn.Module, chains: dict[str, Chain], plan: dict) -> nn.Module:
    out = copy.deepcopy(folded)
    for name, (keep, k) in plan.items():
        _apply_keep(out, chains[name], keep.to(k.device), k)
    return out


def _max_diff(model: nn.Module, ref: nn.Module, example: torch.Tensor) -> float:
    try:
        return float((model(example) - ref(example)).abs().max())
    except RuntimeError:  # shapes no longer fit (e.g. an invisible residual coupling)
        return float("inf")


def _verified_plan(folded, chains, plan, ref, example, atol) -> tuple[list[str], float]:
    """The layers whose removal keeps the output within ``atol`` of the masked model: all of them
    if that verifies, else the largest prefix-greedy subset that does (one forward per layer)."""
    diff = _max_diff(_build(folded, chains, plan), ref, example)
    if diff <= atol:
        return list(plan), diff
    accepted: list[str] = []
    diff = _max_diff(folded, ref, example)
    for name in plan:
        trial = {n: plan[n] for n in accepted + [name]}
        d = _max_diff(_build(folded, chains, trial), ref, example)
        if d <= atol:
            accepted.append(name)
            diff = d
    return accepted, diff


def _strip_masks(model: nn.Module) -> nn.Module:
    """Replace every ``Sequential(layer, mask)`` by the layer (the dense base architecture)."""
    for name, (layer, _) in masked_layers(model).items():
        surgery.replace_module(model, name, layer)
    return model


def pruned_structure(model: nn.Module, kept_channels: dict[str, int], example: torch.Tensor) -> nn.Module:
    """The exported architecture (weights undefined) from a base model and ``{layer: kept count}``:
    used to rebuild an exported checkpoint before loading its state dict."""
    chains = find_chains(model, list(kept_channels), example)
    for name, n in kept_channels.items():
        c = chains[name]
        total = c.out_shape[0] if c.out_shape else 0
        if n < total:
            keep = torch.zeros(total, dtype=torch.bool)
            keep[:n] = True
            _apply_keep(model, c, keep)
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
    from robustcompress.training import TrainConfig, fit
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


def default_config(epochs: int, batch_size: int = 64, seed: int = 0, lr_steps=LENET_LR_STEPS):
    """The original LeNet schedule: learning rates x0.1 at 50% and x0.01 at 70% of training
    (``lr_steps``; ``()`` keeps them constant, which does better in short runs: see
    docs/reproductions/anp-vs.md)."""
    from robustcompress.training import TrainConfig, recipe_overrides

    return TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed,
                       **recipe_overrides(epochs, lr_steps))


def probe_inputs(info, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Uniform random inputs in the dataset's box, to trace and verify an export."""
    lo, hi = info.bounds
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand((n,) + tuple(info.shape), generator=g)


# ============================================================================ defense spec
def _record(model: nn.Module, entry: dict) -> None:
    model.robustcompress_defenses = list(getattr(model, "robustcompress_defenses", [])) + [entry]


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
        cfg = default_config(params.epochs, seed=ctx.seed, lr_steps=params.lr_steps)
        fit_fn = None
        if ctx.fit is not None:
            def fit_fn(net, obj):  # the run's settings, with the original lr schedule
                return ctx.fit(net, objective=obj, epochs=params.epochs, schedule=cfg.schedule,
                               milestones=cfg.milestones, gamma=cfg.gamma)
        net = anp_vs(model, ctx.dataset, eps=params.eps, norm=params.norm, beta=params.beta,
                     lam=params.lam, steps=params.steps, step_size=params.step_size,
                     adv_weight=params.adv_weight, mask_lr=params.mask_lr,
                     weight_lr=params.weight_lr, where=params.where, fit_fn=fit_fn, config=cfg,
                     generator=gen,
                     progress=ctx.progress)
        base_rec = list(getattr(model, "robustcompress_defenses", []))
        p = params.model_dump()
        if not params.export:
            net.robustcompress_defenses = base_rec + [{"name": self.name, "params": p}]
            return {"": net}
        example = probe_inputs(ctx.dataset.info).to(next(net.parameters()).device)
        res = export_pruned(net, example)
        p["kept_channels"] = {n: len(k) for n, k in res.kept.items()}
        out = res.model
        out.robustcompress_defenses = base_rec + [{"name": self.name, "params": p}]
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


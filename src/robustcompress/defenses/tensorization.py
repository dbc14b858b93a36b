"""Defensive Tensorization (Bulat, Kossaifi, Bhattacharya, Panagakis, Hospedales, Tzimiropoulos,
Lane & Pantic, BMVC 2021; ../shared/papers/defensive-tensorization.txt), real and XNOR-binary.

Every eligible ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` is re-parametrised as a Tucker tensor
(:mod:`robustcompress.nn.tucker`) whose *rank* is randomised at training and test time by the
Bernoulli sketch of eq. 3-4 (:mod:`robustcompress.nn.sketch`): the randomisation lives in the
latent subspace, so the reconstructed weights stay dense. ``binary=True`` additionally binarises the
reconstructed (sketched) weights and the inputs with XNOR-Net (eq. 5, :mod:`robustcompress.nn.xnor`),
first and last layers real.

Python API::

    from robustcompress.defenses.tensorization import tensorize, set_theta, train_tensorized
    tmodel = tensorize(model, rank=1.0, theta=0.9)           # new model; `model` is untouched
    tmodel = train_tensorized(model, dataset, theta=0.8, config=TrainConfig(epochs=2))

Deviations and choices (the paper leaves them open; all configurable)
---------------------------------------------------------------------
* Per-layer Tucker parametrisation (the 2021 version); the 2020 joint whole-network tensor is not
  implemented.
* Sketched modes: the channel modes by default (Algorithm 1 lists all four; ``modes=(0,1,2,3)``).
* ``rescale="unbiased"`` by default (E[W~] = W; see :mod:`robustcompress.nn.sketch` for why);
  ``"none"`` is the paper's literal eq. 4.
* One draw per forward shared by the batch (``granularity="batch"``), as tensorly's tensor dropout
  (which the paper's TensorLy-based code presumably used); ``"sample"`` draws per sample.
* Ranks: ``rank=1.0`` (full) by default, since the paper randomises rather than compresses; a float
  is a fraction of *each* dimension (spatial modes full), an int an absolute rank (``rank=1`` is
  rank ONE, not full rank).
* Layers recognised by exact type through :data:`HANDLERS` (Torch-Pruning style registry); grouped /
  depthwise convs, non-zero padding modes and functional weight ops are left dense, with a warning
  naming each one (:func:`tensorize_plan` lists them and why).
* Binary layers carry XNOR-Net's BatchNorm before ``sign`` (our zoo feeds convs with ReLU outputs).
* Training (the registered defenses): in an experiment run, the run's ``training:`` recipe
  (batch size, optimizer, lr, schedule, flips/crops, device, amp), with only the epochs
  overridden (``pretrain_epochs`` at theta = 1, then ``finetune_epochs`` at theta;
  :meth:`~robustcompress.defenses.base.DefenseContext.train`); the paper's own recipe (Adam
  1e-2 x0.1 at epochs 25/35 of 50 on Speech Commands, flips only on CIFAR-10) is what the
  configs set as the run's recipe (a stage's own lr goes in the defense's ``training:``).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from pydantic import Field
from torch import nn

from robustcompress.defenses.base import (
    DefenseContext,
    DefenseParams,
    DefenseSpec,
    defense_records,
    record_defense,
    register_defense,
    replace_last_params,
    set_defense_records,
)
from robustcompress.errors import UserInputError
from robustcompress.nn import surgery
from robustcompress.nn.sketch import check_sketch_args
from robustcompress.nn.tucker import RankSpec, TuckerBase, TuckerConv1d, TuckerConv2d, TuckerLinear
from robustcompress.nn.xnor import XNORConv1d, XNORConv2d, XNORLinear

PAPER = "Bulat et al., Defensive Tensorization, BMVC 2021 (arXiv 2110.13859)"


@dataclasses.dataclass(frozen=True)
class TensorizeOptions:
    """How :func:`tensorize` converts one layer (see :func:`tensorize` for each field)."""

    rank: RankSpec = 1.0
    theta: float = 1.0
    modes: Optional[tuple[int, ...]] = None
    rescale: str = "unbiased"
    granularity: str = "batch"
    execution: str = "factorized"
    init: str = "hosvd"
    n_iter: int = 5
    generator: Optional[torch.Generator] = None
    init_generator: Optional[torch.Generator] = None

    def layer_kw(self, binary: bool, order: int) -> dict:
        # modes beyond a layer's order (e.g. spatial modes of a Linear) do not exist there
        modes = None if self.modes is None else tuple(m for m in self.modes if m < order)
        return dict(init=self.init, n_iter=self.n_iter, theta=self.theta, sketch_modes=modes,
                    rescale=self.rescale, granularity=self.granularity,
                    execution=self.execution, binary=binary, generator=self.generator,
                    init_generator=self.init_generator)


Handler = Callable[[nn.Module, TensorizeOptions, bool], nn.Module]


def _conv_handler(cls) -> Handler:
    def convert(layer: nn.Module, opts: TensorizeOptions, binary: bool) -> nn.Module:
        return cls.from_conv(layer, opts.rank, **opts.layer_kw(binary, layer.weight.dim()))
    return convert


def _linear_handler(layer: nn.Module, opts: TensorizeOptions, binary: bool) -> nn.Module:
    return TuckerLinear.from_linear(layer, opts.rank, **opts.layer_kw(binary, 2))


#: exact module type -> converter(layer, options, binary) -> Tucker layer
HANDLERS: dict[type, Handler] = {
    nn.Conv2d: _conv_handler(TuckerConv2d),
    nn.Conv1d: _conv_handler(TuckerConv1d),
    nn.Linear: _linear_handler,
}

_XNOR = {nn.Conv2d: XNORConv2d.from_conv, nn.Conv1d: XNORConv1d.from_conv,
         nn.Linear: XNORLinear.from_linear}


def _why_dense(m: nn.Module, handlers) -> str:
    """"" if ``handlers`` can convert ``m``, else why it stays dense."""
    if type(m) not in handlers:
        return f"{type(m).__name__} has no converter (pass handlers={{type: converter}})"
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.groups != 1:
            return "grouped/depthwise conv: a Tucker core over channel groups is not implemented"
        if m.padding_mode != "zeros":
            return f"padding_mode={m.padding_mode!r} (only zero padding is factorized)"
    return ""


def eligible_layers(model: nn.Module, handlers: Optional[dict] = None) -> list[str]:
    """Names (in module order) of the layers :func:`tensorize` can convert."""
    handlers = HANDLERS if handlers is None else handlers
    return [n for n, m in model.named_modules()
            if n and isinstance(m, surgery.LAYER_TYPES) and not _why_dense(m, handlers)]


def tensorize_plan(model: nn.Module, keep_first_last: bool = True,
                   handlers: Optional[dict] = None) -> tuple[list[str], dict[str, str]]:
    """``(converted layers, {dense layer: reason})`` for every conv/linear module and every
    functional weight op of ``model``: what :func:`tensorize` converts and what it leaves dense."""
    handlers = HANDLERS if handlers is None else handlers
    names = eligible_layers(model, handlers)
    ends = {names[0], names[-1]} if (names and keep_first_last) else set()
    dense = {s.name: _why_dense(model.get_submodule(s.name), handlers)
             for s in surgery.layer_sites(model) if s.name not in names}
    dense.update({n: "first/last eligible layer kept dense (keep_first_last)" for n in ends})
    for f in surgery.functional_layers(model) or []:
        dense[f] = "functional weight op (F.conv/F.linear), not a module: cannot be converted"
    return [n for n in names if n not in ends], dense


def tensorize(model: nn.Module, rank: RankSpec = 1.0, theta: float = 1.0, *,
              modes: Optional[Sequence[int]] = None, keep_first_last: bool = True,
              init: str = "hosvd", execution: str = "factorized", granularity: str = "batch",
              rescale: str = "unbiased", binary: bool = False, n_iter: int = 5,
              generator: Optional[torch.Generator] = None,
              init_generator: Optional[torch.Generator] = None,
              handlers: Optional[dict[type, Handler]] = None) -> nn.Module:
    """Return a deep copy of ``model`` with every eligible conv/linear layer Tucker-factorized and
    rank-sketched (Defensive Tensorization, Sec. 3). ``model`` is not modified.

    Parameters
    ----------
    rank : per-mode ranks: a float in (0, 1] is a fraction of each channel dimension (spatial
        modes full), an int an absolute rank, a tuple one entry per mode; clamped to valid sizes.
    theta : keep probability of each rank component (1 = deterministic model).
    modes : sketched modes (default ``(0, 1)``, the channel modes).
    keep_first_last : leave the first and last eligible layers dense (and real).
    init : ``"hosvd"``, ``"hooi"`` (from the pretrained weights) or ``"random"``.
    execution : ``"factorized"`` (1x1 -> core -> 1x1; real MAC savings) or ``"reconstructed"``.
    granularity : ``"batch"`` (one draw per forward) or ``"sample"``.
    rescale : ``"unbiased"`` (E[W~] = W, default) or ``"none"`` (paper's literal eq. 4).
    binary : XNOR-binarise every converted layer except the first and last eligible ones.
    generator : the sketch's random source (``None``: global RNG; the evaluator sets its own).
    init_generator : random source of ``init="random"``.
    handlers : type -> converter registry (default :data:`HANDLERS`).

    Returns
    -------
    The converted model, with ``{"name": "tensorization", "params": {...}}`` appended to
    ``model.robustcompress_defenses``.
    """
    handlers = HANDLERS if handlers is None else handlers
    modes_t = tuple(modes) if modes is not None else None
    check_sketch_args(theta, modes_t or (), 4, rescale, granularity)
    opts = TensorizeOptions(rank=rank, theta=theta, modes=modes_t, rescale=rescale,
                            granularity=granularity, execution=execution, init=init,
                            n_iter=n_iter, generator=generator, init_generator=init_generator)
    out = copy.deepcopy(model)
    convert, dense = tensorize_plan(out, keep_first_last, handlers)
    if not convert:
        raise UserInputError(
            "tensorize found no layer to convert (plain nn.Conv1d/nn.Conv2d with groups=1 or "
            f"nn.Linear, first/last kept: {keep_first_last}); left dense: {dense}; pass "
            "handlers={YourLayer: converter} for custom layers")
    _warn_dense(dense)
    eligible = eligible_layers(out, handlers)
    first_last = {eligible[0], eligible[-1]}  # binary nets keep them real in any case
    for name in convert:
        layer = out.get_submodule(name)
        surgery.replace_module(out, name, handlers[type(layer)](layer, opts, binary and name not in first_last))
    record_defense(out, "tensorization", dict(
        rank=list(rank) if isinstance(rank, (list, tuple)) else rank, theta=theta,
        modes=list(modes_t) if modes_t is not None else None, keep_first_last=keep_first_last,
        binary=binary, execution=execution, granularity=granularity, rescale=rescale, init=init))
    return out


def _warn_dense(dense: dict[str, str]) -> None:
    """Say which layers stay dense, other than the first/last kept on purpose (never silent)."""
    other = {n: r for n, r in dense.items() if not r.startswith("first/last")}
    if other:
        warnings.warn("tensorize leaves these layers dense: " + "; ".join(
            f"{n}: {r}" for n, r in other.items()), stacklevel=3)


def binarize(model: nn.Module, *, keep_first_last: bool = True, norm: bool = True) -> nn.Module:
    """XNOR-Net binary copy of ``model`` (Rastegari et al. 2016) without tensorization: the
    paper's binary baseline. First and last eligible layers stay real when ``keep_first_last``.
    ``norm`` inserts XNOR-Net's BatchNorm before ``sign``. Fine-tune afterwards."""
    out = copy.deepcopy(model)
    names = eligible_layers(out, _XNOR)
    ends = {names[0], names[-1]} if (names and keep_first_last) else set()
    for name in names:
        if name not in ends:
            layer = out.get_submodule(name)
            surgery.replace_module(out, name, _XNOR[type(layer)](layer, norm=norm))
    record_defense(out, "xnor", dict(keep_first_last=keep_first_last, norm=norm))
    return out


def tucker_layers(model: nn.Module) -> list[TuckerBase]:
    """Every Tucker layer of ``model``."""
    return [m for m in model.modules() if isinstance(m, TuckerBase)]


def set_theta(model: nn.Module, theta: float) -> nn.Module:
    """Set the keep probability of every Tucker layer in place (and in the recorded recipe)."""
    layers = tucker_layers(model)
    if not layers:
        raise UserInputError("set_theta: the model has no Tucker layer; call tensorize first")
    for m in layers:
        check_sketch_args(theta, m.sketch_modes, len(m.weight_shape), m.rescale, m.granularity)
        m.theta = float(theta)
    records = defense_records(model)
    for d in records:
        if d.get("name") == "tensorization":
            d["params"]["theta"] = float(theta)
    return set_defense_records(model, records) if records else model


def adversarial_objective(info, eps: Union[str, float], *, steps: int = 7,
                          step_size: Optional[float] = None, random_budget: bool = True,
                          generator: Optional[torch.Generator] = None):
    """PGD adversarial training objective (Madry et al. 2018) for :func:`train_tensorized`.

    The paper samples "the number of steps (for PGD) and eps randomly" for its adversarial
    training; ``random_budget=True`` draws steps uniformly in 1..``steps`` and eps uniformly in
    [0, eps] per batch (the distributions are not given; uniform is our choice). Uses
    :class:`robustcompress.training.objectives.AdversarialTraining`.
    """
    from robustcompress.attacks import ThreatModel
    from robustcompress.training.objectives import AdversarialTraining

    threat = ThreatModel.from_spec("linf", eps, info)
    return AdversarialTraining(threat, attack="pgd", steps=steps, step_size=step_size,
                               random_steps=random_budget, random_eps=random_budget,
                               generator=generator)


def train_tensorized(model: nn.Module, dataset, theta: float, *, config=None,
                     pretrain_config=None, objective=None, adversarial_eps=None,
                     adversarial_steps: int = 7, device=None, progress: bool = True,
                     checkpoint_dir=None, **tensorize_kw) -> nn.Module:
    """The paper's training recipe (Sec. 4.2): start from the theta = 1 model, then train with
    theta < 1 (optionally with PGD adversarial training).

    Parameters
    ----------
    model : a trained dense model (tensorized here at theta = 1 with ``tensorize_kw``), or an
        already tensorized model (used as the theta = 1 starting point). Not modified.
    dataset : a :class:`robustcompress.data.Dataset`.
    theta : keep probability for the second phase.
    config : :class:`robustcompress.training.TrainConfig` of the theta < 1 phase.
    pretrain_config : optional TrainConfig of a first phase at theta = 1 (e.g. to recover the
        accuracy lost by a low-rank conversion); skipped when ``None``.
    objective : training objective (default cross-entropy, or PGD-AT when ``adversarial_eps``).
    adversarial_eps : L-inf eps (input units or ``"8/255"``) for PGD adversarial training.
    checkpoint_dir : resumable fit checkpoints (sub-folders ``theta1`` and ``theta``).
    """
    from pathlib import Path

    from robustcompress.training import fit

    tmodel = copy.deepcopy(model) if tucker_layers(model) else tensorize(model, theta=1.0,
                                                                          **tensorize_kw)
    if objective is None and adversarial_eps is not None:
        objective = adversarial_objective(dataset.info, adversarial_eps, steps=adversarial_steps)
    ck = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if pretrain_config is not None and pretrain_config.epochs > 0:
        set_theta(tmodel, 1.0)
        fit(tmodel, dataset, pretrain_config, objective=objective, device=device,
            progress=progress, checkpoint_dir=ck / "theta1" if ck else None)
    set_theta(tmodel, theta)
    fit(tmodel, dataset, config, objective=objective, device=device, progress=progress,
        checkpoint_dir=ck / "theta" if ck else None)
    return tmodel.eval()


# ----------------------------------------------------------------------------- registry adapter

RankParam = Union[float, int, list[Optional[Union[int, float]]]]


@register_defense
class TensorizationDefense(DefenseSpec):
    """``defenses: [{name: tensorization, params: {theta: 0.9, rank: 1.0, ...}}]``."""

    name = "tensorization"
    paper = PAPER

    def coverage(self, model: nn.Module, params):
        from robustcompress.defenses.base import Coverage

        convert, dense = tensorize_plan(model, params.keep_first_last)
        return Coverage(self.name, "conv/linear layers (Tucker)", convert, dense)

    class Params(DefenseParams):
        rank: RankParam = Field(1.0, description="float = fraction of each channel dim; "
                                "int = absolute; list = per mode")
        theta: float = Field(0.9, gt=0.0, le=1.0, description="keep probability of the sketch")
        modes: Optional[list[int]] = Field(None, description="sketched modes (default [0, 1])")
        keep_first_last: bool = True
        binary: bool = False
        execution: str = "factorized"
        granularity: str = "batch"
        rescale: str = "unbiased"
        init: str = "hosvd"
        finetune_epochs: int = Field(0, ge=0, description="epochs of training at theta (after "
                                     "the theta=1 start); 0 = post-hoc conversion")
        pretrain_epochs: int = Field(0, ge=0, description="epochs at theta=1 first")
        adversarial: bool = Field(False, description="PGD adversarial fine-tuning")
        adversarial_eps: Optional[Union[str, float]] = Field(
            None, description="L-inf eps of adversarial training (default: dataset-typical)")
        adversarial_steps: int = Field(7, ge=1)

    def _tensorize_kw(self, params, init: Optional[str] = None) -> dict:
        return dict(rank=params.rank, modes=params.modes, keep_first_last=params.keep_first_last,
                    binary=params.binary, execution=params.execution,
                    granularity=params.granularity, rescale=params.rescale,
                    init=init or params.init)

    def apply(self, model: nn.Module, params, ctx: DefenseContext) -> dict[str, nn.Module]:
        kw = self._tensorize_kw(params)
        kw["init_generator"] = torch.Generator().manual_seed(ctx.seed)
        if params.finetune_epochs == 0 and params.pretrain_epochs == 0:
            out = tensorize(model, theta=params.theta, **kw)
        else:
            out = self._train(model, params, ctx, kw)
        return {"": replace_last_params(out, params.model_dump())}

    def _train(self, model, params, ctx, kw):
        """:func:`train_tensorized`'s recipe with the run's training settings (ctx.train)."""
        tmodel = tensorize(model, theta=1.0, **kw)
        objective = None
        if params.adversarial:
            objective = adversarial_objective(ctx.dataset.info, _default_eps(
                ctx.dataset.info, params.adversarial_eps), steps=params.adversarial_steps)
        ck = ctx.workdir
        if params.pretrain_epochs:
            tmodel = ctx.train(tmodel, objective, epochs=params.pretrain_epochs,
                               checkpoint_dir=ck / "theta1" if ck else None)
        set_theta(tmodel, params.theta)
        if params.finetune_epochs:
            tmodel = ctx.train(tmodel, objective, epochs=params.finetune_epochs,
                               checkpoint_dir=ck / "theta" if ck else None)
        return tmodel.eval()

    def structure(self, model: nn.Module, params) -> nn.Module:
        out = tensorize(model, theta=params.theta, **self._tensorize_kw(params, init="random"))
        return set_defense_records(out, defense_records(model))


def _default_eps(info, eps):
    """Adversarial-training eps when none is given: 8/255 for images (0.3 for MNIST-like
    1-channel images, Madry's MNIST setting), 0.032 for [-1, 1] audio (the paper's middle eps)."""
    if eps is not None:
        return eps
    if info.modality == "audio":
        return 0.032
    return 0.3 if info.channels == 1 else "8/255"


@register_defense
class XNORDefense(DefenseSpec):
    """The binary baseline of the paper's Table 4: XNOR-Net without tensorization."""

    name = "xnor"
    paper = "Rastegari et al., XNOR-Net, ECCV 2016 (binary baseline of " + PAPER + ")"

    def coverage(self, model: nn.Module, params):
        from robustcompress.defenses.base import Coverage

        convert, dense = tensorize_plan(model, params.keep_first_last, _XNOR)
        return Coverage(self.name, "conv/linear layers (XNOR)", convert, dense)

    class Params(DefenseParams):
        keep_first_last: bool = True
        norm: bool = True
        finetune_epochs: int = Field(0, ge=0)

    def apply(self, model: nn.Module, params, ctx: DefenseContext) -> dict[str, nn.Module]:
        out = binarize(model, keep_first_last=params.keep_first_last, norm=params.norm)
        if params.finetune_epochs:  # the run's recipe, this stage's epochs
            out = ctx.train(out, epochs=params.finetune_epochs)
        return {"": replace_last_params(out, params.model_dump()).eval()}

    def structure(self, model: nn.Module, params) -> nn.Module:
        out = binarize(model, keep_first_last=params.keep_first_last, norm=params.norm)
        return set_defense_records(out, defense_records(model))

"""Robust sparsity by progressive magnitude pruning (Guo, Zhang, Zhang & Chen, NeurIPS 2018).

"Sparse DNNs with Improved Adversarial Robustness": prune a trained dense model by weight
magnitude, a fraction ``rho`` of the *remaining* non-zero weights per round, retrain with the pruned
weights fixed at zero ("shall never be activated again"), repeat ``m`` times and keep every round's
model (paper: ``rho = 1/3``, ``m = 16``, final sparsity ``1 - (2/3)^16 = 99.74%``).  Robustness is
then measured per round with :mod:`robustcompress.metrics.robustness_metrics` (r_inf, r_2, CLEVER).

Activation sparsity: the paper adds an l1 norm of the activations to the objective
(:class:`L1Activation`).

Choices the paper leaves open (documented defaults, all configurable):

* ``scope="uniform"``: every layer loses the same fraction per round (the paper: "uniformly
  pruned so the network sparsity should be approximately equal to the layer-wise sparsity");
  ``"global"`` uses one magnitude threshold for all layers.
* ``keep_first_last=False`` for MNIST; the paper keeps them dense for its CIFAR-10 models.
* retraining: ``retrain_epochs`` epochs of :func:`robustcompress.training.fit` with the run's
  training recipe (batch size, optimizer, lr, schedule, flips/crops, ...), overriding only the
  epochs and the seed (run seed + round), via
  :meth:`~robustcompress.defenses.base.DefenseContext.train` (the paper's retraining length is
  not given; a retraining lr goes in the defense's ``training:``); biases are never pruned.
* the l1 penalty is ``lam * sum_l mean_batch(||a_l||_1 / dim_l)`` over every ``nn.ReLU``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustcompress.data.info import Dataset
from robustcompress.defenses.base import (
    DefenseParams,
    DefenseSpec,
    record_defense,
    register_defense,
)
from robustcompress.errors import UserInputError
from robustcompress.nn import surgery
from robustcompress.nn.masks import magnitude_prune, mask_structure


def prune(model: nn.Module, amount: float, *, scope: str = "uniform",
          keep_first_last: bool = False) -> nn.Module:
    """A pruned deep copy of ``model``: ``amount`` of the remaining weights removed by magnitude."""
    return magnitude_prune(copy.deepcopy(model), amount, scope=scope,
                           keep_first_last=keep_first_last)


class L1Activation:
    """Cross-entropy plus ``lam * sum_l mean_batch(||a_l||_1 / dim_l)`` over the ReLU outputs.

    The activation-sparsity objective of Guo et al. (Sec. 4.2, "Activation sparsity"), following
    the training objective protocol of :func:`robustcompress.training.fit`.  The outputs are
    every ReLU application (modules, reused modules and ``F.relu``, recorded by
    :func:`robustcompress.nn.surgery.tap_activations`); ``layers`` restricts the penalty to the
    named sites/modules or kinds.
    """

    def __init__(self, lam: float = 1e-4, layers: Optional[Sequence[str]] = None):
        if lam < 0:
            raise UserInputError(f"l1 activation weight must be >= 0, got {lam}")
        self.lam = float(lam)
        self.layers = list(layers) if layers is not None else None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with surgery.tap_activations(model) as tap:
            logits = model(x)
        acts = [a.flatten(1).abs().mean(dim=1).mean() for a in tap.outputs(self.layers or "relu")]
        penalty = torch.stack(acts).sum() if acts else logits.new_zeros(())
        return F.cross_entropy(logits, y) + self.lam * penalty

    def __repr__(self) -> str:
        return f"L1Activation(lam={self.lam})"


def _round_paths(ckdir: Path, k: int) -> tuple[Path, Path]:
    return ckdir / f"round{k:02d}.safetensors", ckdir / f"round{k:02d}.json"


def progressive_prune(model: nn.Module, dataset: Optional[Dataset], rho: float = 1 / 3,
                      rounds: int = 16, retrain_epochs: int = 1, *, scope: str = "uniform",
                      keep_first_last: bool = False, train_config=None, objective=None,
                      checkpoint_dir: Union[str, Path, None] = None, device=None,
                      progress: bool = False,
                      on_round: Optional[Callable[[int, float, nn.Module], None]] = None
                      ) -> list[tuple[float, nn.Module]]:
    """Progressive magnitude pruning with retraining; every round's model is kept.

    Parameters
    ----------
    model : trained dense model (not modified).
    dataset : training data for retraining (may be None when ``retrain_epochs == 0``).
    rho : fraction of the remaining weights pruned per round (paper: 1/3).
    rounds : number of rounds m (paper: 16).
    retrain_epochs : epochs of :func:`robustcompress.training.fit` after each pruning step, with
        masks fixed (pruned weights stay exactly zero).
    scope, keep_first_last : see :func:`robustcompress.nn.masks.magnitude_prune`.
    train_config : a :class:`robustcompress.training.TrainConfig` (its ``epochs`` is replaced by
        ``retrain_epochs`` and its seed offset by the round).
    objective : training objective, e.g. :class:`L1Activation` (default cross-entropy).
    checkpoint_dir : each finished round is saved there (``roundKK.safetensors/.json``) and
        reused on a re-run, so an interrupted run resumes after its last finished round; the
        retraining inside a round resumes from its epoch checkpoints too.
    on_round : called as ``on_round(k, sparsity, model_k)`` after each round (e.g. to evaluate).

    Returns
    -------
    ``[(sparsity, model_0), (sparsity, model_1), ...]`` with round 0 the dense reference (a copy);
    ``sparsity`` is the fraction of zero weights over the pruned layers.
    """
    if retrain_epochs > 0 and dataset is None:
        raise UserInputError("retraining needs a dataset; pass one or set retrain_epochs=0")
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    def retrain(m: nn.Module, k: int) -> nn.Module:
        from robustcompress.training import TrainConfig, fit

        cfg = (train_config or TrainConfig()).model_copy(
            update={"epochs": retrain_epochs, "seed": (train_config or TrainConfig()).seed + k})
        sub = ckdir / f"round{k:02d}_fit" if ckdir is not None else None
        return fit(m, dataset, cfg, objective=objective, checkpoint_dir=sub, device=device,
                   progress=progress).model

    params = {"rho": rho, "scope": scope, "keep_first_last": keep_first_last,
              "retrain_epochs": retrain_epochs}
    return _progressive(model, params, rounds, retrain if retrain_epochs > 0 else None, ckdir,
                        on_round)


def _progressive(model: nn.Module, params: dict, rounds: int,
                 retrain: Optional[Callable[[nn.Module, int], nn.Module]],
                 ckdir: Optional[Path],
                 on_round: Optional[Callable[[int, float, nn.Module], None]] = None
                 ) -> list[tuple[float, nn.Module]]:
    """The loop of :func:`progressive_prune`; ``retrain(model, k)`` fine-tunes round ``k``."""
    from safetensors.torch import load_file, save_file

    if rounds < 1:
        raise UserInputError(f"rounds must be >= 1, got {rounds}; the paper uses 16")
    kfl = params["keep_first_last"]
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
    current = copy.deepcopy(model)
    out = [(0.0, copy.deepcopy(model))]
    for k in range(1, rounds + 1):
        nxt = copy.deepcopy(current)
        st, js = _round_paths(ckdir, k) if ckdir is not None else (None, None)
        if st is not None and st.is_file() and js.is_file():
            saved = json.loads(js.read_text())
            if any(saved.get(k) != v for k, v in params.items() if k != "rounds"):
                raise UserInputError(
                    f"{js} was written with other pruning settings ({saved}); use a new "
                    "checkpoint folder or delete it to start over")
            mask_structure(nxt, kfl).load_state_dict(load_file(str(st)))
        else:
            magnitude_prune(nxt, params["rho"], scope=params["scope"], keep_first_last=kfl)
            if retrain is not None:
                nxt = retrain(nxt, k)
            if st is not None:
                save_file({n: t.detach().contiguous().cpu() for n, t in nxt.state_dict().items()},
                          str(st))
                js.write_text(json.dumps({"round": k, **params}))
        record_defense(nxt, "prune", {**params, "rounds": k}, base=model)
        sp = pruned_sparsity(nxt, kfl)
        if on_round is not None:
            on_round(k, sp, nxt)
        out.append((sp, nxt))
        current = nxt
    return out


def pruned_sparsity(model: nn.Module, keep_first_last: bool = False) -> float:
    """Fraction of zero weights over the Linear/Conv layers that are pruned."""
    from robustcompress.nn.masks import prunable_layers

    names = {n for n, _ in prunable_layers(model, keep_first_last)}
    zeros = sum(int((m.weight == 0).sum()) for n, m in model.named_modules() if n in names)
    total = sum(m.weight.numel() for n, m in model.named_modules() if n in names)
    return zeros / max(total, 1)


@register_defense
class PruneDefense(DefenseSpec):
    """Progressive magnitude pruning; one variant per round, suffix ``r{k}``."""

    name = "prune"
    paper = "Guo, Zhang, Zhang & Chen, Sparse DNNs with Improved Adversarial Robustness, NeurIPS 2018"

    class Params(DefenseParams):
        rho: float = Field(1 / 3, gt=0, lt=1, description="fraction of remaining weights per round")
        rounds: int = Field(16, ge=1)
        scope: Literal["uniform", "global"] = "uniform"
        keep_first_last: bool = False
        retrain_epochs: int = Field(1, ge=0)
        l1_activation: float = Field(0.0, ge=0, description="weight of the l1 activation penalty")

    def apply(self, model, params, ctx):
        objective = L1Activation(params.l1_activation) if params.l1_activation > 0 else None
        workdir = Path(ctx.workdir) / "prune-rounds" if ctx.workdir is not None else None

        def retrain(m: nn.Module, k: int) -> nn.Module:
            # a per-round seed also gives each round its own fit checkpoint folder in the runner
            return ctx.train(m, objective, epochs=params.retrain_epochs, seed=ctx.seed + k)

        rounds = _progressive(model, params.model_dump(), params.rounds,
                              retrain if params.retrain_epochs > 0 else None, workdir)
        return {f"r{k}": m for k, (_, m) in enumerate(rounds) if k > 0}

    def coverage(self, model, params):
        from robustcompress.defenses.base import layer_coverage

        cov = layer_coverage(self.name, model)
        if params.keep_first_last and cov.sites:
            for n in {cov.sites[0], cov.sites[-1]}:
                cov.left[n] = "first/last layer kept dense (keep_first_last)"
            cov.sites = cov.sites[1:-1]
        return cov

    def structure(self, model, params):
        return mask_structure(model, params.keep_first_last)

"""The one training loop: any model, any objective, exact resume, deterministic under a seed.

Determinism: the data order (and the horizontal flips) of epoch ``e`` come from a
``torch.Generator`` seeded with ``epoch_seed(config.seed, e)``. Modules that draw from the global
RNG (dropout, stochastic defenses without a generator) run inside ``torch.random.fork_rng`` seeded
with the same number, so the caller's global RNG is left exactly as it was, and a run resumed at
epoch ``e`` sees the same randomness as an uninterrupted run.

Checkpoints (``checkpoint_dir``): after every epoch ``fit`` writes

* ``state-eN.safetensors``: model weights (``model/<name>``) and optimizer tensors
  (``optim/<group>/<param index>/<key>``);
* ``state.json``: epoch, config, history, objective, the non-tensor optimizer state, written
  last, so it always names a complete tensor file (a crash mid-write resumes from the epoch
  before);
* ``model.safetensors`` + ``model.json``: the user-facing checkpoint of
  :func:`~robustcompress.training.checkpoint.save_checkpoint` (load with ``load_checkpoint``).

Calling ``fit`` again with the same ``checkpoint_dir`` continues after the last finished epoch
(``resume=False`` starts over). The config must match, except ``epochs``, which may grow.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file
from torch import nn

from robustcompress.data.info import Dataset
from robustcompress.errors import ConfigError, UserInputError
from robustcompress.training.checkpoint import atomic_save_json, atomic_save_tensors, save_checkpoint
from robustcompress.training.config import TrainConfig, lr_factor
from robustcompress.training.evaluate import check_finite_inputs, evaluate_accuracy
from robustcompress.training.objectives import CrossEntropy


@dataclass
class FitResult:
    """The trained model (same object as passed in), per-epoch history and final metrics."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data order / global-RNG fork of 0-based ``epoch`` (pure; 63-bit)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1)


# ----------------------------------------------------------------------------- optimizers

def _groups(model: nn.Module, objective, config: TrainConfig) -> dict[str, dict]:
    """{name: {"params", "lr", "optimizer", "weight_decay"}} with defaults from ``config``."""
    if hasattr(objective, "param_groups"):
        raw = objective.param_groups(model)
    else:
        raw = {"model": {"params": [p for p in model.parameters() if p.requires_grad]}}
    out = {}
    for name, g in raw.items():
        params = [p for p in g["params"] if p.requires_grad]  # frozen ones stay frozen
        if not params:
            raise ConfigError(f"parameter group {name!r} of the objective has no trainable "
                              "parameter")
        out[name] = {
            "params": params,
            "lr": g.get("lr") or config.lr,
            "optimizer": g.get("optimizer") or config.optimizer,
            "weight_decay": g.get("weight_decay", config.weight_decay),
        }
    return out


def _make_optimizer(g: dict, config: TrainConfig) -> torch.optim.Optimizer:
    if g["optimizer"] == "sgd":
        return torch.optim.SGD(g["params"], lr=g["lr"], momentum=config.momentum,
                               weight_decay=g["weight_decay"])
    if g["optimizer"] == "adam":
        return torch.optim.Adam(g["params"], lr=g["lr"], weight_decay=g["weight_decay"])
    raise ConfigError(f"unknown optimizer {g['optimizer']!r}; use sgd or adam")


def _optim_to_files(opts: dict[str, torch.optim.Optimizer]) -> tuple[dict, dict]:
    tensors: dict[str, torch.Tensor] = {}
    js: dict[str, Any] = {}
    for gname, opt in opts.items():
        sd = opt.state_dict()
        scalars: dict[str, dict] = {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim/{gname}/{idx}/{k}"] = v
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        js[gname] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, js


def _optim_from_files(opts: dict[str, torch.optim.Optimizer], tensors: dict, js: dict) -> None:
    for gname, opt in opts.items():
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            parts = key.split("/")
            if parts[0] == "optim" and parts[1] == gname:
                state.setdefault(int(parts[2]), {})[parts[3]] = v
        for idx, sc in js[gname]["scalars"].items():
            state.setdefault(int(idx), {}).update(sc)
        opt.load_state_dict({"state": state, "param_groups": js[gname]["param_groups"]})


# ----------------------------------------------------------------------------- checkpoints

def _config_key(config: TrainConfig) -> dict:
    d = config.model_dump()
    d.pop("epochs")
    return d


def _save_state(ckdir: Path, epoch: int, model: nn.Module, opts, config: TrainConfig,
                history: list, objective, info) -> None:
    otensors, ojs = _optim_to_files(opts)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(otensors)
    name = f"state-e{epoch}.safetensors"
    atomic_save_tensors(tensors, ckdir / name)
    atomic_save_json({"epoch": epoch, "tensors": name, "config": config.model_dump(),
                      "history": history, "optim": ojs, "objective": repr(objective),
                      "rng": {"scheme": "per-epoch generator + fork_rng",
                              "next_epoch_seed": epoch_seed(config.seed, epoch)}},
                     ckdir / "state.json")
    for old in ckdir.glob("state-e*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    if hasattr(model, "robustcompress_spec"):
        save_checkpoint(model, ckdir / "model", {
            "config": config.model_dump(), "dataset": info.to_dict(), "epoch": epoch,
            "metrics": history[-1] if history else {}, "history": history,
        })


def _load_state(ckdir: Path, model: nn.Module, opts, config: TrainConfig) -> tuple[int, list]:
    st = json.loads((ckdir / "state.json").read_text())
    if _config_key(TrainConfig(**st["config"])) != _config_key(config):
        raise ConfigError(
            f"{ckdir} holds a run with a different training config ({st['config']}); use another "
            "checkpoint directory or resume=False (--no-resume) to start over")
    tensors = load_file(str(ckdir / st["tensors"]))
    mstate = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(mstate, strict=True)
        _optim_from_files(opts, tensors, st["optim"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{ckdir} holds a checkpoint of another model or objective "
                          f"({str(e).splitlines()[0]}); use another directory or resume=False") from None
    return int(st["epoch"]), list(st["history"])


# ----------------------------------------------------------------------------- one step

def _step(model, objective, opts, groups, x, y) -> dict[str, float]:
    loss = objective(model, x, y)
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)
    if isinstance(loss, torch.Tensor):
        if len(opts) != 1:
            raise ConfigError("the objective returned one loss but defines several parameter "
                              "groups; return a dict {group name: loss}")
        _check_loss(loss)
        loss.backward()
        next(iter(opts.values())).step()
        return {"loss": float(loss.detach())}
    if not isinstance(loss, dict):
        raise TypeError(f"objective must return a Tensor or dict of Tensors, got {type(loss)}")
    missing = [g for g in groups if g not in loss]
    if missing or not hasattr(objective, "param_groups"):
        raise ConfigError(f"an objective returning a dict of losses must define param_groups(model)"
                          f" with one group per loss; groups without a loss: {missing}")
    names = list(groups)
    for i, g in enumerate(names):  # all gradients first: stepping changes the graph's leaves
        _check_loss(loss[g], g)
        params = groups[g]["params"]
        grads = torch.autograd.grad(loss[g], params, retain_graph=i < len(names) - 1,
                                    allow_unused=True)
        for p, gr in zip(params, grads):
            p.grad = gr
    for g in names:
        opts[g].step()
    logged = {f"loss_{k}": float(v.detach()) for k, v in loss.items()}
    logged["loss"] = sum(float(loss[g].detach()) for g in names)
    return logged


def _check_loss(loss: torch.Tensor, name: str = "") -> None:
    if loss.dim() != 0:
        raise ValueError(f"the objective's loss{' ' + name if name else ''} must be a scalar, "
                         f"got shape {tuple(loss.shape)}")
    if not torch.isfinite(loss):
        raise RuntimeError(
            f"training loss{' ' + repr(name) if name else ''} became {float(loss.detach())}; the run "
            "diverged: lower the learning rate (--lr), use a schedule or SGD, or check that the "
            "inputs are in the dataset's declared range (with a checkpoint_dir, the last finished epoch "
            "is saved and the same call resumes from it).")


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (draws from ``gen``)."""
    m = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(m.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


# ----------------------------------------------------------------------------- fit

def fit(model: nn.Module, dataset: Dataset, config: Optional[TrainConfig] = None, *,
        objective=None, checkpoint_dir: Union[str, Path, None] = None,
        device: Union[str, torch.device, None] = None, progress: bool = True,
        resume: bool = True) -> FitResult:
    """Train ``model`` on ``dataset.train`` with ``objective`` (default cross-entropy).

    Evaluates clean accuracy on ``dataset.test`` after every epoch, checkpoints every epoch to
    ``checkpoint_dir`` and resumes from it (see module doc).

    Parameters
    ----------
    model : any ``nn.Module`` taking ``dataset``'s inputs; trained in place and moved to
        ``device``.
    dataset : train and test splits (inputs in ``dataset.info.bounds``).
    config : :class:`TrainConfig`; default ``TrainConfig()``.
    objective : ``objective(model, x, y) -> loss | {group: loss}`` (see
        :mod:`robustcompress.training.objectives`); default :class:`CrossEntropy`.
    checkpoint_dir : folder for per-epoch checkpoints and resume state; None = no files.
    device : ``"auto" | "cpu" | "cuda[:N]"`` or a ``torch.device``; default: the model's.
    progress : tqdm bar with loss / accuracy, and one line per epoch.
    resume : continue from ``checkpoint_dir``'s last finished epoch if there is one.

    Returns
    -------
    FitResult : ``model``; ``history`` (one dict per epoch: ``epoch, lr, loss[, loss_<group>],
        train_acc, test_acc, seconds``); ``metrics`` (the last epoch's row plus ``epochs``).
        Training accuracy is that of the model's last forward pass on each batch (for
        adversarial objectives: on the adversarial batch).

    Raises
    ------
    UserInputError : NaN/inf inputs, inputs whose shape the model does not take.
    RuntimeError : the loss became NaN/inf (with advice).
    """
    config = config or TrainConfig()
    objective = objective or CrossEntropy()
    if device is None:
        p = next(iter(model.parameters()), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        from robustcompress.device import resolve_device

        dev = resolve_device(str(device)) if isinstance(device, str) else torch.device(device)
    model.to(dev)
    train = dataset.train
    if len(train) == 0:
        raise UserInputError("the training split is empty")
    check_finite_inputs(train.x, "training inputs")
    flip = config.flip_enabled(dataset.info.name) and dataset.info.modality == "image"

    groups = _groups(model, objective, config)
    opts = {g: _make_optimizer(v, config) for g, v in groups.items()}
    base_lrs = {g: v["lr"] for g, v in groups.items()}

    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, history = 0, []
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        if resume and (ckdir / "state.json").is_file():
            start, history = _load_state(ckdir, model, opts, config)

    last_out: dict[str, torch.Tensor] = {}
    hook = model.register_forward_hook(lambda _m, _i, o: last_out.__setitem__("o", o))
    try:
        for epoch in range(start, config.epochs):
            history.append(_run_epoch(model, dataset, config, objective, opts, groups, base_lrs,
                                      epoch, dev, flip, progress, last_out))
            if ckdir is not None:
                _save_state(ckdir, epoch + 1, model, opts, config, history, objective,
                            dataset.info)
    finally:
        hook.remove()
    metrics = dict(history[-1]) if history else {}
    metrics["epochs"] = len(history)
    return FitResult(model=model, history=history, metrics=metrics)


def _run_epoch(model, dataset, config, objective, opts, groups, base_lrs, epoch, dev, flip,
               progress, last_out) -> dict:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    factor = lr_factor(config, epoch)
    for g, opt in opts.items():
        for pg in opt.param_groups:
            pg["lr"] = base_lrs[g] * factor
    train = dataset.train
    n, bs = len(train), config.batch_size
    seed = epoch_seed(config.seed, epoch)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    starts = list(range(0, n, bs))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()  # a 1-sample batch breaks BatchNorm in train mode
    if config.max_batches_per_epoch:
        starts = starts[: config.max_batches_per_epoch]
    forks = [dev] if dev.type == "cuda" else []
    sums = {"loss": 0.0}
    correct = seen = 0
    bar = tqdm(starts, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
               leave=False, unit="batch")
    with torch.random.fork_rng(devices=forks):
        torch.manual_seed(seed)
        if hasattr(objective, "train_mode"):
            objective.train_mode(model)
        else:
            model.train()
        for i, s in enumerate(bar):
            idx = perm[s: s + bs]
            xb, yb = train.x[idx], train.y[idx]
            if flip:
                xb = _flip(xb, gen)
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            last_out.clear()
            logged = _step(model, objective, opts, groups, xb, yb)
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            o = last_out.get("o")
            if isinstance(o, torch.Tensor) and o.dim() == 2 and o.shape[0] == len(yb):
                correct += int((o.detach().argmax(1) == yb).sum())
                seen += len(yb)
            if progress and i % 10 == 0:
                bar.set_postfix(loss=f"{logged['loss']:.4f}",
                                acc=f"{correct / max(seen, 1):.3f}")
    bar.close()
    count = sum(len(perm[s: s + bs]) for s in starts)
    row = {"epoch": epoch + 1, "lr": base_lrs[next(iter(base_lrs))] * factor}
    row.update({k: v / max(count, 1) for k, v in sums.items()})
    row["train_acc"] = correct / seen if seen else float("nan")
    row["train_seconds"] = time.perf_counter() - t0
    if len(dataset.test):
        row["test_acc"] = evaluate_accuracy(model, dataset.test, config.eval_batch_size, dev)
    row["seconds"] = time.perf_counter() - t0
    if progress:
        tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}, train acc "
                   f"{row['train_acc']:.4f}" + (f", test acc {row['test_acc']:.4f}"
                                                if "test_acc" in row else "")
                   + f", {row['seconds']:.1f}s")
    return row

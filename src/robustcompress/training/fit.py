"""The one training loop: any model, any objective, exact resume, deterministic under a seed.

Determinism: the data order and the augmentation (flips, crops; draw order in
:mod:`robustcompress.training.augment`) of epoch ``e`` come from a ``torch.Generator`` seeded
with ``epoch_seed(config.seed, e)``. Modules that draw from the global RNG (dropout, stochastic
defenses without a generator) run inside ``torch.random.fork_rng`` seeded with the same number,
so the caller's global RNG is left exactly as it was, and a run resumed at epoch ``e`` sees the
same randomness as an uninterrupted run.

Checkpoints (``checkpoint_dir``): after every epoch ``fit`` writes

* ``state-eN.safetensors``: model weights (``model/<name>``) and optimizer tensors
  (``optim/<group>/<param index>/<key>``);
* ``state.json``: epoch, config, history, objective, the non-tensor optimizer state, written
  last, so it always names a complete tensor file (a crash mid-write resumes from the epoch
  before);
* ``model.safetensors`` + ``model.json``: the user-facing checkpoint of
  :func:`~robustcompress.training.checkpoint.save_checkpoint` (load with ``load_checkpoint``).

Calling ``fit`` again with the same ``checkpoint_dir`` continues after the last finished epoch
(``resume=False`` starts over). The config must match, except ``epochs``, which may grow, and the
execution options (``amp``, ``amp_dtype``, ``channels_last``, ``compile``,
``data_parallel``, ``data_on_device``).

Under ``torchrun`` (an initialised process group with several processes) ``fit`` trains data
parallel: ``batch_size`` is the global batch, each rank takes a disjoint shard of every batch,
gradients are averaged over the ranks, only rank 0 writes checkpoints and prints, and every rank
ends with identical weights (see :mod:`robustcompress.training.ddp`). Speed options (AMP,
channels_last, torch.compile, pinned memory) are described in :mod:`robustcompress.training.accel`;
where the training split lives (host, or resident on the device: ``data_on_device``) in
:mod:`robustcompress.training.resident`. The training inputs are checked finite once per split
object (again after an in-place edit).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from robustcompress.data.info import Dataset, Split
from robustcompress.errors import ConfigError, UserInputError
from robustcompress.training import accel, ddp, resident
from robustcompress.training.augment import Augment
from robustcompress.training.config import TrainConfig, lr_factor
from robustcompress.training.state import epoch_seed, load_state, save_state  # noqa: F401
from robustcompress.training.evaluate import check_finite_split, evaluate_accuracy
from robustcompress.training.objectives import CrossEntropy


@dataclass
class FitResult:
    """The trained model (same object as passed in), per-epoch history and final metrics."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


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


@dataclass
class _Exec:
    """How a step runs: data-parallel world, autocast, gradient scaler."""

    world: ddp.World = field(default_factory=ddp.World)
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16
    scaler: Any = None


def _optimizer_step(opt: torch.optim.Optimizer, params, ex: _Exec) -> None:
    ddp.average_gradients(params, ex.world)
    if ex.scaler is not None:
        ex.scaler.step(opt)
    else:
        opt.step()


def _fetch(losses: dict[str, torch.Tensor], checked, extra: Optional[torch.Tensor]
           ) -> tuple[dict[str, float], Optional[int]]:
    """The losses' values (those named in ``checked`` must be finite scalars) and ``extra`` (a
    count), in one device-to-host copy right after the forward pass: one synchronisation per
    step, which leaves the backward pass, the optimizer step and the next batch to be queued
    while the GPU works (before, the loss was read after the step, which drained the queue)."""
    for g in checked:
        _check_shape(losses[g], g)
    parts = [v.detach().double().reshape(-1)[:1] for v in losses.values()]
    if extra is not None:
        parts.append(extra.detach().double().reshape(1))
    host = torch.cat(parts).tolist()
    values = dict(zip(losses, host))
    for g in checked:
        _check_finite(values[g], g)
    return values, (int(host[-1]) if extra is not None else None)


def _step(model, objective, opts, groups, x, y, ex: Optional[_Exec] = None,
          count_correct=None) -> tuple[dict[str, float], Optional[int]]:
    """One optimisation step; returns the logged losses and ``count_correct()`` (a device count
    taken after the forward pass, or None)."""
    ex = ex or _Exec()
    dev = x.device
    with accel.autocast(ex.amp, dev, ex.amp_dtype):
        loss = objective(model, x, y)
    scale = ex.scaler.scale if ex.scaler is not None else (lambda t: t)
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)
    extra = count_correct() if count_correct is not None else None
    if isinstance(loss, torch.Tensor):
        if len(opts) != 1:
            raise ConfigError("the objective returned one loss but defines several parameter "
                              "groups; return a dict {group name: loss}")
        values, correct = _fetch({"": loss}, [""], extra)
        scale(loss).backward()
        g = next(iter(groups))
        _optimizer_step(opts[g], groups[g]["params"], ex)
        if ex.scaler is not None:
            ex.scaler.update()
        return {"loss": values[""]}, correct
    if not isinstance(loss, dict):
        raise TypeError(f"objective must return a Tensor or dict of Tensors, got {type(loss)}")
    missing = [g for g in groups if g not in loss]
    if missing or not hasattr(objective, "param_groups"):
        raise ConfigError(f"an objective returning a dict of losses must define param_groups(model)"
                          f" with one group per loss; groups without a loss: {missing}")
    names = list(groups)
    values, correct = _fetch(loss, names, extra)
    for i, g in enumerate(names):  # all gradients first: stepping changes the graph's leaves
        params = groups[g]["params"]
        grads = torch.autograd.grad(scale(loss[g]), params, retain_graph=i < len(names) - 1,
                                    allow_unused=True)
        for p, gr in zip(params, grads):
            p.grad = gr
    for g in names:
        _optimizer_step(opts[g], groups[g]["params"], ex)
    if ex.scaler is not None:
        ex.scaler.update()
    logged = {f"loss_{k}": v for k, v in values.items()}
    logged["loss"] = sum(values[g] for g in names)
    return logged, correct


def _check_shape(loss: torch.Tensor, name: str = "") -> None:
    if loss.dim() != 0:
        raise ValueError(f"the objective's loss{' ' + name if name else ''} must be a scalar, "
                         f"got shape {tuple(loss.shape)}")


def _check_finite(value: float, name: str = "") -> None:
    if not math.isfinite(value):
        raise RuntimeError(
            f"training loss{' ' + repr(name) if name else ''} became {value}; the run "
            "diverged: lower the learning rate (--lr), use a schedule or SGD, or check that the "
            "inputs are in the dataset's declared range (with a checkpoint_dir, the last finished epoch "
            "is saved and the same call resumes from it).")


# ----------------------------------------------------------------------------- fit

def fit(model: nn.Module, dataset: Dataset, config: Optional[TrainConfig] = None, *,
        objective=None, checkpoint_dir: Union[str, Path, None] = None,
        device: Union[str, torch.device, None] = None, progress: bool = True,
        resume: bool = True, distributed: Optional[bool] = None) -> FitResult:
    """Train ``model`` on ``dataset.train`` with ``objective`` (default cross-entropy).

    Evaluates clean accuracy on ``dataset.test`` after every epoch, checkpoints every epoch to
    ``checkpoint_dir`` and resumes from it (see module doc).

    Parameters
    ----------
    model : any ``nn.Module`` taking ``dataset``'s inputs; trained in place and moved to
        ``device``.
    dataset : train and test splits (inputs in ``dataset.info.bounds``).
    config : :class:`TrainConfig`; default ``TrainConfig()``. ``batch_size`` is the global batch
        (split over the processes under torchrun).
    objective : ``objective(model, x, y) -> loss | {group: loss}`` (see
        :mod:`robustcompress.training.objectives`); default :class:`CrossEntropy`.
    checkpoint_dir : folder for per-epoch checkpoints and resume state; None = no files. Under
        torchrun it must be on a file system every rank sees (one machine: any folder).
    device : ``"auto" | "cpu" | "cuda[:N]"`` or a ``torch.device``; default: the model's. Under
        torchrun on GPUs, ``cuda`` means this rank's ``cuda:LOCAL_RANK``.
    progress : progress bar with loss / accuracy (plain periodic lines when stderr is not a
        terminal, see :mod:`robustcompress.progress`), and one line per epoch (rank 0 only).
    resume : continue from ``checkpoint_dir``'s last finished epoch if there is one.
    distributed : train data parallel over the initialised process group; None (default) =
        ``config.data_parallel`` (None there = whenever a group with several processes exists);
        False = train on this process alone (every rank then trains its own full copy, as the
        experiment runner does by default). Every rank must call ``fit`` with the same arguments.

    Returns
    -------
    FitResult : ``model``; ``history`` (one dict per epoch: ``epoch, lr, loss[, loss_<group>],
        train_acc, test_acc, seconds, processes``); ``metrics`` (the last epoch's row plus ``epochs``).
        Training accuracy is that of the model's last forward pass on each batch (for
        adversarial objectives: on the adversarial batch). Under torchrun, loss and accuracies
        are over all ranks' samples, and identical on every rank.

    Raises
    ------
    UserInputError : NaN/inf inputs, inputs whose shape the model does not take.
    ConfigError : a checkpoint of another config/model; torch.compile failing on this toolchain.
    RuntimeError : the loss became NaN/inf (with advice).
    """
    config = config or TrainConfig()
    objective = objective or CrossEntropy()
    world = ddp.current_world(config.data_parallel if distributed is None else distributed)
    dev = _resolve_fit_device(model, device, world)
    model.to(dev)
    progress = progress and world.is_main
    dataset, aug = _prepare_data(dataset, config, dev, world)
    groups = _groups(model, objective, config)
    opts = {g: _make_optimizer(v, config) for g, v in groups.items()}
    base_lrs = {g: v["lr"] for g, v in groups.items()}
    ex = _make_exec(config, dev, objective, world)
    ckdir, start, history = _resume(checkpoint_dir, model, opts, config, world, resume)
    ddp.broadcast_state(model, world)  # before NHWC: collectives want contiguous tensors
    if config.channels_last:
        accel.to_channels_last(model)  # parameter objects are kept: the optimizers still hold them

    train_model = accel.compiled(model, config.compile)
    last_out: dict[str, torch.Tensor] = {}
    hook = train_model.register_forward_hook(lambda _m, _i, o: last_out.__setitem__("o", o))
    try:
        with accel.deterministic_kernels(dev, config.deterministic):
            for epoch in range(start, config.epochs):
                history.append(_run_epoch(train_model, model, dataset, config, objective, opts,
                                          groups, base_lrs, epoch, dev, aug, progress, last_out, ex))
                if ckdir is not None:
                    if world.is_main:
                        save_state(ckdir, epoch + 1, model, opts, config, history, objective,
                                    dataset.info)
                    ddp.barrier(world)
    finally:
        hook.remove()
        if config.channels_last:
            accel.to_contiguous(model)
    metrics = {**(history[-1] if history else {}), "epochs": len(history)}
    return FitResult(model=model, history=history, metrics=metrics)


def _prepare_data(dataset: Dataset, config: TrainConfig, dev,
                  world: ddp.World) -> tuple[Dataset, Optional[Augment]]:
    """The dataset as the run reads it (training split placed by ``data_on_device``; the test
    split stays where it is) and the run's augmentation, after checking the training inputs
    (non-empty, finite: once per split object) and that the augmentation fits them."""
    if len(dataset.train) == 0:
        raise UserInputError("the training split is empty")
    check_finite_split(dataset.train, "training inputs")
    aug = Augment.for_run(config, dataset.info)
    train = resident.place(dataset.train, config.data_on_device, dev, world)
    return (dataset if train is dataset.train else replace(dataset, train=train)), aug


def _make_exec(config: TrainConfig, dev, objective, world: ddp.World) -> _Exec:
    """AMP settings and scaler; warns (rank 0) about speed options that do not apply."""
    amp_on = config.amp and accel.objective_allows_amp(objective)
    note = accel.describe(config, dev, objective)
    if note and world.is_main:
        warnings.warn(note, stacklevel=3)
    dtype = accel.amp_dtype(config.amp_dtype, dev)
    return _Exec(world=world, amp=amp_on, amp_dtype=dtype,
                 scaler=accel.make_scaler(amp_on, dev, dtype))


def _resume(checkpoint_dir, model, opts, config: TrainConfig, world, resume: bool):
    """``(folder or None, first epoch, history)``: from the folder's training state when
    resuming, else epoch 0 and no history."""
    if checkpoint_dir is None:
        return None, 0, []
    ckdir = Path(checkpoint_dir)
    if world.is_main:
        ckdir.mkdir(parents=True, exist_ok=True)
    ddp.barrier(world)
    if resume and (ckdir / "state.json").is_file():
        return (ckdir, *load_state(ckdir, model, opts, config))
    return ckdir, 0, []


def _resolve_fit_device(model: nn.Module, device, world: ddp.World) -> torch.device:
    if device is None:
        p = next(iter(model.parameters()), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        from robustcompress.device import resolve_device

        dev = resolve_device(str(device)) if isinstance(device, str) else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # this rank's GPU under torchrun (init_from_env sets it), else the current one
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _shard_split(split: Split, world: ddp.World) -> Split:
    return Split(split.x[world.rank:: world.size], split.y[world.rank:: world.size])


def _test_accuracy(model: nn.Module, test: Split, config: TrainConfig, dev, world) -> float:
    """Clean test accuracy; under torchrun each rank evaluates ``test[rank::world]`` and the
    correct counts are summed."""
    if not world.active:
        return evaluate_accuracy(model, test, config.eval_batch_size, dev)
    part = _shard_split(test, world)
    correct = evaluate_accuracy(model, part, config.eval_batch_size, dev) * len(part) \
        if len(part) else 0.0
    tot = ddp.sum_over_ranks({"correct": round(correct), "n": len(part)}, world, dev)
    return tot["correct"] / tot["n"]


def _batch(train: Split, idx: torch.Tensor, aug: Optional[Augment], gen: torch.Generator,
           w: ddp.World, dev, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of the global batch ``train[idx]``, gathered where ``train`` lives
    (``idx`` there too) and augmented on ``dev``. The augmentation is drawn on the host for the
    global batch before sharding: the same on every rank, wherever the data live."""
    draws = aug.draw(len(idx), gen) if aug is not None else {}
    idx = ddp.shard(idx, w)
    xb = accel.batch_to(train.x[idx], dev, channels_last=False)
    if draws:
        xb = aug.apply(xb, {k: accel.batch_to(ddp.shard(v, w), dev, channels_last=False)
                            for k, v in draws.items()})
    return (accel.batch_to(xb, dev, channels_last=channels_last),
            accel.batch_to(train.y[idx], dev, channels_last=False))


def _run_epoch(train_model, model, dataset, config, objective, opts, groups, base_lrs, epoch,
               dev, aug, progress, last_out, ex: _Exec) -> dict:
    from robustcompress import progress as progress_display

    t0 = time.perf_counter()
    w = ex.world
    factor = lr_factor(config, epoch)
    for g, opt in opts.items():
        for pg in opt.param_groups:
            pg["lr"] = base_lrs[g] * factor
    train = dataset.train
    n, bs = len(train), config.batch_size
    seed = epoch_seed(config.seed, epoch)
    gen = torch.Generator().manual_seed(seed)
    perm = resident.epoch_order(torch.randperm(n, generator=gen), train)
    starts = ddp.batch_starts(n, bs, w.size, config.max_batches_per_epoch)
    forks = [dev] if dev.type == "cuda" else []
    sums = {"loss": 0.0}
    correct = seen = count = 0
    # a bar on a terminal, plain periodic lines when redirected (no '\r' in log files)
    bar = progress_display.bar(starts, desc=f"epoch {epoch + 1}/{config.epochs}",
                               enabled=progress, unit="batch")
    with torch.random.fork_rng(devices=forks):
        torch.manual_seed(ddp.rank_seed(seed, w.rank))
        if hasattr(objective, "train_mode"):
            objective.train_mode(model)
        else:
            model.train()
        for i, s in enumerate(bar):
            xb, yb = _batch(train, perm[s: s + bs], aug, gen, w, dev, config.channels_last)
            last_out.clear()

            def count_correct(yb=yb):  # of the model's last forward pass, on the device
                o = last_out.get("o")
                if isinstance(o, torch.Tensor) and o.dim() == 2 and o.shape[0] == len(yb):
                    return (o.detach().argmax(1) == yb).sum()
                return None
            try:
                logged, n_correct = _step(train_model, objective, opts, groups, xb, yb, ex,
                                          count_correct)
            except Exception as e:
                if config.compile and accel.is_compile_failure(e):
                    raise accel.compile_error(e) from e
                raise
            for k, v in logged.items():
                sums[k] = sums.get(k, 0.0) + v * len(yb)
            count += len(yb)
            if n_correct is not None:
                correct += n_correct
                seen += len(yb)
            if progress and i % 10 == 0:
                bar.set_postfix(loss=f"{logged['loss']:.4f}",
                                acc=f"{correct / max(seen, 1):.3f}")
    bar.close()
    ddp.average_buffers(model, w)
    tot = ddp.sum_over_ranks({**{f"sum_{k}": v for k, v in sums.items()}, "correct": correct,
                              "seen": seen, "count": count}, w, dev)
    row = {"epoch": epoch + 1, "lr": base_lrs[next(iter(base_lrs))] * factor}
    row.update({k: tot[f"sum_{k}"] / max(tot["count"], 1) for k in sums})
    row["train_acc"] = tot["correct"] / tot["seen"] if tot["seen"] else float("nan")
    row["train_seconds"] = time.perf_counter() - t0
    row["processes"] = w.size
    if len(dataset.test):
        row["test_acc"] = _test_accuracy(model, dataset.test, config, dev, w)
    row["seconds"] = time.perf_counter() - t0
    if progress:
        progress_display.write(f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}, train acc "
                   f"{row['train_acc']:.4f}" + (f", test acc {row['test_acc']:.4f}"
                                                if "test_acc" in row else "")
                   + f", {row['seconds']:.1f}s")
    return row

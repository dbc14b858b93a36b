"""CLI commands: ``train``, ``evaluate`` (clean accuracy + confusion summary), ``models``.

Thin: parses options, calls :mod:`robustcompress.training`, prints a rich table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, MC_HELP, data_on_device_option, deprecated, given, limit_option)
from robustcompress.errors import UserInputError, describe_validation


#: Per-dataset defaults of `train` (explicit options win). digits/mnist/fsdd are the settings
#: measured in README.md (Models, training); speech_commands/cifar10 are starting points.
RECIPES: dict[str, dict] = {
    "digits": {"epochs": 10, "batch_size": 64},
    "mnist": {"epochs": 2, "batch_size": 128, "optimizer": "adam", "lr": 1e-3},
    "fsdd": {"epochs": 12, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine"},
    "speech_commands": {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 1e-3,
                        "schedule": "cosine"},
    "cifar10": {"epochs": 30, "batch_size": 128, "optimizer": "sgd", "lr": 0.05,
                "weight_decay": 5e-4, "schedule": "cosine", "crop_padding": 4},
}


def _console():
    from rich.console import Console

    return Console()


def _load(dataset: str, data_dir: Optional[str], train_limit: Optional[int],
          test_limit: Optional[int]):
    from robustcompress.data import load_dataset

    kw = {}
    if train_limit:
        kw["train_limit"] = train_limit
    if test_limit:
        kw["test_limit"] = test_limit
    return load_dataset(dataset, root=data_dir, **kw)


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows:
        t.add_row(k, v)
    _console().print(t)


def train_cmd(
    dataset: str = typer.Option("digits", help="Dataset name (see `robustcompress data list`)."),
    model: str = typer.Option("lenet5", help="Model name (see `robustcompress models`)."),
    epochs: Optional[int] = typer.Option(None, min=0, help="Epochs [default: the dataset's recipe]."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Mini-batch size [recipe]."),
    lr: Optional[float] = typer.Option(None, help="Learning rate [recipe]."),
    optimizer: Optional[str] = typer.Option(None, help="adam | sgd [recipe]."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay [recipe]."),
    schedule: Optional[str] = typer.Option(None, help="none | step | multistep | cosine [recipe]."),
    milestones: Optional[str] = typer.Option(None, help="Comma-separated epochs for multistep, e.g. 25,35."),
    gamma: float = typer.Option(0.1, help="LR decay factor of step/multistep."),
    crop_padding: Optional[int] = typer.Option(
        None, min=0, help="Random-crop augmentation of images: pad each training image by this "
        "many zero-valued (black) pixels per side and keep a random window of the original size; "
        "0 = off. [recipe: 4 for cifar10, the usual recipe with its default flips; else 0]"),
    seed: int = typer.Option(0, help="Seed of the data order and initialisation."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (default: runs/<dataset>-<model>-s<seed>)."),
    resume: bool = typer.Option(True, help="Continue from the last epoch checkpointed in --out."),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples (quick runs)."),
    test_limit: Optional[int] = typer.Option(None, help="Use only this many test samples."),
    max_batches: Optional[int] = typer.Option(None, help="Stop each epoch after this many batches."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    amp: bool = typer.Option(False, help="Mixed precision for the training step (bf16/fp16 on GPU, bf16 on CPU)."),
    channels_last: bool = typer.Option(False, help="NHWC memory format for conv inputs and weights."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model for training."),
    data_on_device: str = data_on_device_option(),
    deterministic: bool = typer.Option(True, help="On CUDA, deterministic cuDNN kernels, so the "
                                       "seed reproduces the run; --no-deterministic: faster kernels."),
) -> None:
    """Train a zoo model on a dataset and write a checkpoint (safetensors + JSON).

    Under torchrun (`torchrun --nproc_per_node 2 -m robustcompress.cli train ...`) the processes
    train one model data parallel: --batch-size is the global batch, rank 0 prints and writes.

    Options left out come from the dataset's recipe (RECIPES in this module: digits 10 epochs
    batch 64; mnist 2 epochs; fsdd 12 epochs batch 32 cosine; cifar10 SGD 0.05 cosine, flips and
    4-pixel crops), then from
    TrainConfig's defaults (Adam 1e-3, batch 128, 2 epochs).

    Example: robustcompress train --dataset mnist --model lenet5 --epochs 2 --out runs/lenet5
    """
    import torch

    from robustcompress.device import resolve_device
    from robustcompress.models import build_model, list_models

    config = _train_config(
        dataset, {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                  "weight_decay": weight_decay, "schedule": schedule, "crop_padding": crop_padding},
        milestones, momentum=momentum, gamma=gamma, seed=seed, max_batches_per_epoch=max_batches,
        amp=amp, channels_last=channels_last, compile=compile_, data_on_device=data_on_device,
        deterministic=deterministic)
    if model not in list_models():  # before the (slow) data load
        raise UserInputError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    data = _load(dataset, data_dir, train_limit, test_limit)
    load_s = time.perf_counter() - t0
    torch.manual_seed(seed)  # weight initialisation (the CLI owns its process's global RNG)
    net = build_model(model, data.info)
    run = Path(out or f"runs/{dataset}-{model}-s{seed}")
    res, rank = _fit(net, data, config, run, dev, progress=progress, resume=resume)
    if rank != 0:
        return  # other ranks stay quiet
    _print_rows("robustcompress train",
                _train_rows(data, model, net, config, seed, dev, load_s, res, run))


def _train_config(dataset: str, chosen: dict, milestones: Optional[str], **options):
    """The dataset's recipe overridden by the ``chosen`` options that are not None, plus
    ``options``, as a TrainConfig; an invalid value is a :class:`UserInputError`."""
    from pydantic import ValidationError

    from robustcompress.training import TrainConfig

    try:
        recipe = {**RECIPES.get(dataset, {}), **{k: v for k, v in chosen.items() if v is not None}}
        ms = [int(m) for m in milestones.split(",")] if milestones else []
        return TrainConfig(**recipe, milestones=ms, **options)
    except (ValidationError, ValueError) as e:
        raise UserInputError(f"invalid training option: {describe_validation(e)}") from None


def _fit(net, data, config, run: Path, dev, *, progress: bool, resume: bool):
    """``(fit's result, this process's rank)``: data parallel when torchrun launched it."""
    from robustcompress.experiments import distributed as du
    from robustcompress.training import fit

    started = not du.is_distributed() and du.init_from_env(dev)  # launched by torchrun
    rank = du.rank_and_world()[0]
    try:
        res = fit(net, data, config, checkpoint_dir=run, device=dev, progress=progress,
                  resume=resume)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return res, rank


def _train_rows(data, model: str, net, config, seed: int, dev, load_s: float, res,
                run: Path) -> list[tuple[str, str]]:
    """The summary table of a finished `train`."""
    from robustcompress.metrics.compression import count_macs, count_parameters, exported_bytes

    m = res.metrics
    return [
        ("dataset", f"{data.info.name} ({len(data.train)} train / {len(data.test)} test)"
                    + (f" - {data.info.note}" if data.info.note else "")),
        ("model", f"{model}: {count_parameters(net):,} parameters, "
                  f"{count_macs(net, data.info.shape):,} MACs, {exported_bytes(net):,} bytes"),
        ("training", f"{config.optimizer} lr {config.lr} batch {config.batch_size}, "
                     f"{m.get('epochs', 0)} epochs, seed {seed}, {dev}"),
        ("train loss / acc", f"{m.get('loss', float('nan')):.4f} / {m.get('train_acc', float('nan')):.4f}"),
        ("test accuracy", f"{m.get('test_acc', float('nan')):.4f}"),
        ("time", f"data {load_s:.1f}s, training {sum(h.get('seconds', 0) for h in res.history):.1f}s"),
        ("checkpoint", str(run / "model")),
    ]


def _render_confusion(record: dict, info, split: str, s: dict) -> None:
    from rich.table import Table

    name = record["spec"].get("model") or record["spec"].get("factory")  # zoo name or a user's factory
    _console().print(f"{name} on {info.name} {split} ({s['n']} samples): "
                     f"accuracy [bold]{s['accuracy']:.4f}[/bold]")
    t = Table()
    t.add_column("class")
    t.add_column("accuracy", justify="right")
    for c, a in s["per_class"].items():
        t.add_row(str(c), f"{a:.4f}")
    _console().print(t)
    if s["most_confused"]:
        _console().print("most confused (true -> predicted: count): " + ", ".join(
            f"{p['true']} -> {p['predicted']}: {p['count']}" for p in s["most_confused"]))


def evaluate_cmd(
    checkpoint: str = typer.Option(..., help="Checkpoint written by `train` (run folder or its model.json)."),
    split: str = typer.Option("test", help="test | train."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(512, min=1, help="Evaluation batch size."),
    mc: Optional[int] = typer.Option(None, "--mc", min=1, help=f"{MC_HELP}."),
    mc_samples: Optional[int] = deprecated("--mc-samples", "--mc"),
    limit: Optional[int] = limit_option(None, " (default: all)"),
    seed: int = typer.Option(0, help="Seed of the randomness of stochastic models."),
    top: int = typer.Option(5, help="How many confused class pairs to list."),
    adaptive: bool = typer.Option(False, help="Also run the adaptive robustness evaluation (attacks)."),
    norm: str = typer.Option("linf", help="Threat norm of --adaptive: linf | l2."),
    eps: Optional[str] = typer.Option(None, help="Budget of --adaptive in input units or a fraction "
                                      "such as 8/255 (see --eps-scale)."),
    eps_scale: Optional[float] = typer.Option(None, help="Divide --eps by this (e.g. 255)."),
    protocol: str = typer.Option("adaptive", help="Battery of --adaptive: adaptive | standard "
                                 "(AutoAttack's standard version, as in evaluate-adaptive)."),
) -> None:
    """Clean accuracy of a checkpoint with per-class accuracy and the most confused pairs.

    Example: robustcompress evaluate --checkpoint runs/lenet5
    """
    import torch

    from robustcompress.experiments.protocols.adaptive import adaptive_evaluation
    from robustcompress.experiments.protocols.loading import load_checkpoint_data
    from robustcompress.training import confusion_matrix, confusion_summary

    if split not in ("test", "train"):
        raise UserInputError(f"--split must be test or train, got {split!r}")
    mc = given(mc, mc_samples)
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, device=device)
    part = getattr(ld.data, split).sample(limit or None)
    gen = torch.Generator(device=ld.device).manual_seed(seed)
    cm = confusion_matrix(ld.model, part, ld.info.num_classes, batch_size, ld.device, mc, gen)
    _render_confusion(ld.record, ld.info, split, confusion_summary(cm, ld.info.class_names, top=top))
    if adaptive:
        adaptive_evaluation(ld.model, part, ld.info, device=ld.device, seed=seed, norm=norm, eps=eps,
                            eps_scale=eps_scale, mc_samples=mc, protocol=protocol).render(_console())


def models_cmd() -> None:
    """List the model zoo (build any of them for any dataset of matching modality).

    Example: robustcompress models
    """
    from rich.table import Table

    from robustcompress.models import list_models

    t = Table(title="robustcompress models")
    t.add_column("name", style="bold")
    t.add_column("description")
    for name, doc in list_models().items():
        t.add_row(name, doc)
    _console().print(t)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("models")(models_cmd)

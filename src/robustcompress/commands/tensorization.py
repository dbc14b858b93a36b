"""CLI command ``tensorize``: Defensive Tensorization of a trained checkpoint.

Thin: parses options, calls :mod:`robustcompress.defenses.tensorization`, prints size, MACs and
accuracy before/after, writes a checkpoint that ``evaluate`` / ``attack`` can load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustcompress.errors import UserInputError


def _rank(text: str):
    """``0.5`` (fraction of each channel dim), ``16`` (absolute) or ``16,8,3,3`` (per mode)."""
    def one(t: str):
        t = t.strip()
        if t.lower() in ("none", "full", ""):
            return None
        try:
            return float(t) if "." in t else int(t)
        except ValueError:
            raise UserInputError(
                f"--rank {text!r} is not a number; give a fraction like 0.5, an int like 16 or "
                "one value per mode like 16,8,3,3") from None
    parts = text.split(",")
    return one(parts[0]) if len(parts) == 1 else [one(p) for p in parts]


def _figures(model, info) -> dict:
    from robustcompress.metrics.compression import count_macs, count_parameters, exported_bytes

    return {"params": count_parameters(model), "macs": count_macs(model, info.shape),
            "bytes": exported_bytes(model)}


def tensorize_cmd(
    checkpoint: str = typer.Option(..., help="Trained checkpoint (run folder or its model.json)."),
    out: str = typer.Option(..., "--out", help="Output run folder; the model is written as OUT/model."),
    rank: str = typer.Option("1.0", help="Tucker rank: fraction of each channel dim (0.5), absolute (16) or per mode (16,8,3,3)."),
    theta: float = typer.Option(0.9, help="Keep probability of each rank component (1 = deterministic)."),
    modes: Optional[str] = typer.Option(None, help="Sketched modes, comma-separated (default 0,1: channel modes)."),
    binary: bool = typer.Option(False, help="XNOR-binarise the tensorized layers (first/last stay real)."),
    keep_first_last: bool = typer.Option(True, help="Leave the first and last layers dense."),
    execution: str = typer.Option("factorized", help="factorized (1x1 -> core -> 1x1) | reconstructed."),
    granularity: str = typer.Option("batch", help="batch (one draw per forward) | sample."),
    rescale: str = typer.Option("unbiased", help="unbiased (E[W~]=W) | none (paper's eq. 4)."),
    init: str = typer.Option("hosvd", help="hosvd | hooi."),
    finetune_epochs: int = typer.Option(0, min=0, help="Epochs of training at THETA (the paper's recipe starts from the theta=1 model)."),
    adversarial_eps: Optional[str] = typer.Option(None, help="PGD adversarial fine-tuning with this L-inf eps (e.g. 0.3 or 8/255)."),
    lr: float = typer.Option(1e-3, help="Fine-tuning learning rate."),
    batch_size: int = typer.Option(128, min=1, help="Fine-tuning batch size."),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples."),
    test_limit: Optional[int] = typer.Option(1000, help="Test samples for the accuracy check."),
    mc_samples: int = typer.Option(10, min=1, help="Draws averaged for the accuracy of a stochastic model."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, help="Seed of the fine-tuning and of the evaluation draws."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Defensive Tensorization (Bulat et al. 2021): Tucker-factorize every conv/linear layer and
    randomise its rank at test time; optionally XNOR-binarise and fine-tune.

    Example: robustcompress tensorize --checkpoint runs/lenet5 --rank 0.5 --theta 0.9 --out runs/lenet5-dt
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from robustcompress.data import load_dataset
    from robustcompress.defenses.tensorization import tensorize, train_tensorized
    from robustcompress.device import resolve_device
    from robustcompress.training import (
        TrainConfig,
        evaluate_accuracy,
        load_checkpoint,
        save_checkpoint,
    )

    rank_spec = _rank(rank)  # options first, before any slow loading
    dev = resolve_device(device)
    base = load_checkpoint(checkpoint, device=dev)
    info = base.robustcompress_meta["spec"]["info"]
    kw = {"root": data_dir}
    if train_limit:
        kw["train_limit"] = train_limit
    if test_limit:
        kw["test_limit"] = test_limit
    data = load_dataset(info["name"], **kw)
    mode_t = tuple(int(m) for m in modes.split(",")) if modes else None
    tkw = dict(rank=rank_spec, modes=mode_t, keep_first_last=keep_first_last, binary=binary,
               execution=execution, granularity=granularity, rescale=rescale, init=init)
    torch.manual_seed(seed)  # the CLI owns its process's global RNG
    if finetune_epochs or adversarial_eps:
        cfg = TrainConfig(epochs=max(finetune_epochs, 1), lr=lr, batch_size=batch_size, seed=seed)
        model = train_tensorized(base, data, theta, config=cfg, adversarial_eps=adversarial_eps,
                                 device=dev, progress=progress, **tkw)
    else:
        model = tensorize(base, theta=theta, **tkw)
    model.robustcompress_defenses[-1]["params"].update(
        finetune_epochs=finetune_epochs, adversarial=adversarial_eps is not None,
        adversarial_eps=adversarial_eps)
    gen = torch.Generator(device=dev).manual_seed(seed)
    before, after = _figures(base, data.info), _figures(model, data.info)
    acc_b = evaluate_accuracy(base, data.test, device=dev)
    acc_a = evaluate_accuracy(model, data.test, device=dev, mc_samples=mc_samples, generator=gen)
    stem = save_checkpoint(model, Path(out) / "model",
                           meta={"metrics": {"test_acc": acc_a, **after}, "source": checkpoint})
    table = Table(title="robustcompress tensorize")
    for c in ("", "params", "MACs", "bytes", "test accuracy"):
        table.add_column(c, justify="right" if c else "left")
    table.add_row("before", f"{before['params']:,}", f"{before['macs']:,}",
                  f"{before['bytes']:,}", f"{acc_b:.4f}")
    table.add_row(f"after (theta={theta})", f"{after['params']:,}", f"{after['macs']:,}",
                  f"{after['bytes']:,}", f"{acc_a:.4f} (MC {mc_samples})" if theta < 1 else
                  f"{acc_a:.4f}")
    con = Console()
    con.print(table)
    con.print(f"MACs of a stochastic model are those of one random draw. Checkpoint: {stem}")


def register(app: typer.Typer) -> None:
    app.command("tensorize")(tensorize_cmd)

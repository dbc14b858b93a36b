"""CLI command ``tensorize``: Defensive Tensorization of a trained checkpoint.

Thin: parses options, calls
:func:`robustcompress.experiments.protocols.tensorization.tensorize_checkpoint`, prints size, MACs
and accuracy before/after; the checkpoint it writes loads in ``evaluate`` / ``attack``.
"""

from __future__ import annotations

from typing import Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, deprecated, given, limit_option, out_option)


def _render(res, theta: float, mc: int) -> None:
    from rich.console import Console
    from rich.table import Table

    b, a = res.before, res.after
    table = Table(title="robustcompress tensorize")
    for c in ("", "params", "MACs", "bytes", "test accuracy"):
        table.add_column(c, justify="right" if c else "left")
    table.add_row("before", f"{b['params']:,}", f"{b['macs']:,}", f"{b['bytes']:,}", f"{b['acc']:.4f}")
    table.add_row(f"after (theta={theta})", f"{a['params']:,}", f"{a['macs']:,}", f"{a['bytes']:,}",
                  f"{a['acc']:.4f} (MC {mc})" if theta < 1 else f"{a['acc']:.4f}")
    con = Console()
    con.print(table)
    con.print(f"MACs of a stochastic model are those of one random draw. Checkpoint: {res.checkpoint}")


def tensorize_cmd(
    checkpoint: str = typer.Option(..., help="Trained checkpoint (run folder or its model.json)."),
    out: str = out_option(...),
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
    limit: Optional[int] = limit_option(1000, " for the accuracy check (0: all)"),
    test_limit: Optional[int] = deprecated("--test-limit", "--limit"),
    mc: int = typer.Option(10, "--mc", min=1, help="Draws averaged for the accuracy of a stochastic "
                           "model (10: a quick check; the attack commands default to more)."),
    mc_samples: Optional[int] = deprecated("--mc-samples", "--mc"),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="Seed of the fine-tuning and of the evaluation draws."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Defensive Tensorization (Bulat et al. 2021): Tucker-factorize every conv/linear layer and
    randomise its rank at test time; optionally XNOR-binarise and fine-tune.

    Example: robustcompress tensorize --checkpoint runs/lenet5 --rank 0.5 --theta 0.9 --out runs/lenet5-dt
    """
    from robustcompress.experiments.protocols.tensorization import (
        TensorizeOptions, tensorize_checkpoint)

    options = TensorizeOptions(rank, theta, modes, binary, keep_first_last, execution, granularity,
                               rescale, init, finetune_epochs, adversarial_eps, lr, batch_size)
    mc = given(mc, mc_samples)
    res = tensorize_checkpoint(checkpoint, out, options=options, limit=given(limit, test_limit),
                               mc=mc, data_dir=data_dir, train_limit=train_limit, device=device,
                               seed=seed, progress=progress)
    _render(res, theta, mc)


def register(app: typer.Typer) -> None:
    app.command("tensorize")(tensorize_cmd)

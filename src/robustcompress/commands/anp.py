"""CLI: ``robustcompress anp`` (ANP-VS, Madaan et al. 2020) and ``robustcompress advtrain``
(FGSM / R+FGSM / PGD adversarial training). Thin: parse, call
:mod:`robustcompress.experiments.protocols.anp`, print."""

from __future__ import annotations

from typing import Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, deprecated, given, limit_option, out_option)


def anp_cmd(
    checkpoint: str = typer.Option(..., help="Standard-trained checkpoint (from `robustcompress train`)."),
    epochs: int = typer.Option(10, min=1, help="ANP-VS epochs (original: 200)."),
    beta: float = typer.Option(4.0, "--beta", help="KL weight (MNIST 4, CIFAR-10 2, CIFAR-100 1)."),
    lam: float = typer.Option(1e-3, "--lambda", help="Vulnerability-suppression weight (MNIST 1e-3, CIFAR-10 1e-4)."),
    eps: float = typer.Option(0.3, help="L-inf eps in input units ([0, 1] pixels; MNIST 0.3)."),
    steps: int = typer.Option(20, min=1, help="PGD steps during training (MNIST 20, CIFAR 10)."),
    step_size: float = typer.Option(0.01, help="PGD step during training (MNIST 0.01, CIFAR 0.007)."),
    mask_lr: float = typer.Option(1e-2, help="Adam lr of the masks (original 1e-2; raise for short runs)."),
    constant_lr: bool = typer.Option(False, help="Keep both lrs constant instead of the original x0.1 at "
                                     "50% and 70% of training (better in short runs: docs/reproductions/anp-vs.md)."),
    batch_size: int = typer.Option(64, min=1, help="Batch size (original 64)."),
    eval_steps: int = typer.Option(40, min=1, help="PGD steps of the white-box evaluation (original 40)."),
    limit: int = limit_option(500, " for accuracy and vulnerability"),
    eval_limit: Optional[int] = deprecated("--eval-limit", "--limit"),
    plot: Optional[str] = typer.Option(None, help="Write vulnerability histograms (base vs ANP-VS) here (PNG)."),
    out: str = typer.Option(..., "--out", help="Checkpoint stem of the exported model: OUT.safetensors, "
                            "OUT.json, OUT.summary.json (not yet a run folder like the other commands)."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="Seed of the data order and of the attacks."),
    progress: bool = typer.Option(False, help="Show training progress bars."),
) -> None:
    """Adversarial neural pruning with vulnerability suppression on a trained checkpoint.

    Prints the channels kept per layer, clean / PGD accuracy and vulnerability V before and after,
    and parameters / MACs / bytes of the dense model and of the structurally pruned export, which
    is saved to --out (load it with load_checkpoint).

    Example: robustcompress anp --checkpoint runs/lenet5/model --epochs 10 --beta 4 --lambda 1e-3
    --eps 0.3 --out runs/lenet5-anp
    """
    from rich.console import Console

    from robustcompress.experiments.protocols.anp import AnpOptions, anp_vs_evaluation

    options = AnpOptions(epochs, beta, lam, eps, steps, step_size, mask_lr, constant_lr, batch_size)
    res = anp_vs_evaluation(checkpoint, out, options=options, eval_steps=eval_steps,
                            limit=given(limit, eval_limit), plot=plot, data_dir=data_dir,
                            train_limit=train_limit, device=device, seed=seed, progress=progress)
    console = Console()
    b, a = res.before, res.after
    console.print(f"base: clean {b['clean']:.4f}  PGD-{eval_steps} {b['pgd']:.4f}  V {b['V']:.4f}")
    for line in res.export:
        console.print(line)
    console.print(f"ANP-VS: clean {a['clean']:.4f}  PGD-{eval_steps} {a['pgd']:.4f}  V {a['V']:.4f} "
                  f"(before {b['V']:.4f})")
    if plot:
        console.print(f"vulnerability histograms: {plot}")
    console.print(f"saved {out}.safetensors (+ .json, .summary.json)")


def advtrain_cmd(
    checkpoint: str = typer.Option(..., help="Checkpoint to fine-tune (from `robustcompress train`)."),
    attack: str = typer.Option("pgd", help="fgsm | rfgsm | pgd."),
    eps: str = typer.Option("0.3", help="Budget in input units (0.3, 8/255) or 0-255 with --eps-scale 255."),
    eps_scale: Optional[float] = typer.Option(None, help="Scale of --eps (255 for the 0-255 pixel scale)."),
    epochs: int = typer.Option(5, min=1, help="Epochs."),
    steps: int = typer.Option(10, min=1, help="PGD steps in training (Madry MNIST 40, CIFAR 7)."),
    step_size: Optional[float] = typer.Option(None, help="PGD step (default 2.5 eps / steps)."),
    mix: Optional[float] = typer.Option(None, help="Weight of the clean loss (default 0.5 for fgsm/rfgsm, 0 for pgd)."),
    random_steps: bool = typer.Option(False, help="Sample the PGD steps in 1..steps per batch."),
    random_eps: bool = typer.Option(False, help="Sample eps uniformly in [0, eps] per batch."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    lr_step: list[float] = typer.Option([], "--lr-step", help="Multiply the lr by 0.1 at this fraction "
                                        "of training; repeat it (ANP_VS code: --lr-step 0.5 --lr-step 0.7)."),
    weight_decay: float = typer.Option(0.0, min=0.0, help="L2 weight decay (ANP_VS code: 1e-4)."),
    batch_size: int = typer.Option(128, min=1, help="Batch size."),
    eval_steps: int = typer.Option(40, min=1, help="PGD steps of the evaluation."),
    limit: int = limit_option(500, " for the evaluation"),
    eval_limit: Optional[int] = deprecated("--eval-limit", "--limit"),
    out: str = out_option(...),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="Seed of the data order and of the attacks."),
    progress: bool = typer.Option(False, help="Show training progress bars."),
) -> None:
    """Adversarially fine-tune a checkpoint (FGSM, R+FGSM or PGD) and report clean / PGD accuracy.

    Example: robustcompress advtrain --checkpoint runs/lenet5/model --attack pgd --eps 0.3
    --steps 40 --step-size 0.01 --epochs 5 --out runs/lenet5-pgdat

    The AT baseline of the ANP-VS paper's code: --attack pgd --eps 0.3 --steps 20 --step-size 0.01
    --mix 0.3333 --weight-decay 1e-4 --lr-step 0.5 --lr-step 0.7 --batch-size 64.
    """
    from pydantic import ValidationError

    from robustcompress.defenses import get_defense
    from robustcompress.errors import UserInputError, describe_validation
    from robustcompress.experiments.protocols.anp import adversarial_finetune

    try:  # before loading anything
        params = get_defense("adversarial_training").Params(
            attack=attack, eps=eps, eps_scale=eps_scale, steps=steps, step_size=step_size, mix=mix,
            random_steps=random_steps, random_eps=random_eps, epochs=epochs, lr_steps=lr_step,
            weight_decay=weight_decay)
    except ValidationError as e:
        raise UserInputError(f"advtrain: {describe_validation(e)}") from None
    threat, n, (c0, r0), (c1, r1), stem = adversarial_finetune(
        checkpoint, out, params=params, lr=lr, batch_size=batch_size, eval_steps=eval_steps,
        limit=given(limit, eval_limit), data_dir=data_dir, train_limit=train_limit, device=device,
        seed=seed, progress=progress)
    typer.echo(f"{threat.describe()}, PGD-{eval_steps} on {n} test points")
    typer.echo(f"before: clean {c0:.4f}  PGD {r0:.4f}")
    typer.echo(f"after {attack}-AT: clean {c1:.4f}  PGD {r1:.4f}")
    typer.echo(f"saved {stem}.safetensors (+ .json)")


def register(app: typer.Typer) -> None:
    app.command("anp")(anp_cmd)
    app.command("advtrain")(advtrain_cmd)

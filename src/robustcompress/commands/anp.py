"""CLI: ``robustcompress anp`` (ANP-VS, Madaan et al. 2020) and ``robustcompress advtrain``
(FGSM / R+FGSM / PGD adversarial training). Thin: parse, call the library, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _load(checkpoint: str, data_dir: Optional[str], train_limit: Optional[int], device: str):
    """(model, dataset, device) for a checkpoint; the dataset is the one recorded in it."""
    from robustcompress.data import load_dataset
    from robustcompress.device import resolve_device
    from robustcompress.training import load_checkpoint

    dev = resolve_device(device)
    model = load_checkpoint(checkpoint, device=dev)
    name = model.robustcompress_meta["spec"]["info"]["name"]
    kw = {"train_limit": train_limit} if train_limit else {}
    return model, load_dataset(name, root=data_dir, **kw), dev


def _pgd(threat, steps: int, step_size: Optional[float], seed: int):
    """``attack(model, x, y) -> x_adv``: PGD with a random start, the papers' evaluation attack."""
    import torch

    from robustcompress.attacks import run_attack

    def attack(model, x, y):
        return run_attack("pgd", model, x, y, threat, steps=steps, step_size=step_size,
                          generator=torch.Generator().manual_seed(seed)).x_adv
    return attack


def _accuracies(model, x, y, attack) -> tuple[float, float]:
    import torch

    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    xa = attack(model, x, y)
    with torch.no_grad():
        robust = float((model(xa).argmax(1) == y).float().mean())
    return clean, robust


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
    eval_limit: int = typer.Option(500, min=1, help="Test points for accuracy and vulnerability."),
    plot: Optional[str] = typer.Option(None, help="Write vulnerability histograms (base vs ANP-VS) here (PNG)."),
    out: str = typer.Option(..., "--out", help="Output checkpoint path of the exported model."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
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
    import torch
    from rich.console import Console

    from robustcompress.attacks import ThreatModel
    from robustcompress.defenses.anp_vs import (
        LENET_LR_STEPS, anp_vs, default_config, describe_export, export_pruned, probe_inputs)
    from robustcompress.metrics.vulnerability import measure_vulnerability, plot_vulnerability_histograms
    from robustcompress.training import save_checkpoint

    console = Console()
    lr_steps = () if constant_lr else LENET_LR_STEPS
    model, data, dev = _load(checkpoint, data_dir, train_limit, device)
    threat = ThreatModel.from_spec("linf", eps, data.info)
    part = data.test.sample(eval_limit)
    x, y = part.x.to(dev), part.y.to(dev)
    attack = _pgd(threat, eval_steps, step_size, seed)
    model.eval()
    v0 = measure_vulnerability(model, x, y, attack)
    c0, r0 = _accuracies(model, x, y, attack)
    console.print(f"base: clean {c0:.4f}  PGD-{eval_steps} {r0:.4f}  V {v0.V:.4f}")
    net = anp_vs(model, data, eps=eps, beta=beta, lam=lam, steps=steps, step_size=step_size,
                 mask_lr=mask_lr, config=default_config(epochs, batch_size, seed, lr_steps=lr_steps),
                 generator=torch.Generator().manual_seed(seed), progress=progress)
    res = export_pruned(net, probe_inputs(data.info).to(dev))
    small = res.model.eval()
    # V on the masked eval network, as the reference: pruned channels count as zero distortion
    # (the export computes the same outputs but has fewer features to average over)
    v1 = measure_vulnerability(net.eval(), x, y, attack)
    c1, r1 = _accuracies(small, x, y, attack)
    for line in describe_export(res):
        console.print(line)
    console.print(f"ANP-VS: clean {c1:.4f}  PGD-{eval_steps} {r1:.4f}  V {v1.V:.4f} (before {v0.V:.4f})")
    from robustcompress.defenses import get_defense

    params = get_defense("anp_vs").Params(
        eps=eps, beta=beta, lam=lam, steps=steps, step_size=step_size, mask_lr=mask_lr,
        epochs=epochs, lr_steps=list(lr_steps), kept_channels={n: len(k) for n, k in res.kept.items()})
    small.robustcompress_spec = model.robustcompress_spec
    small.robustcompress_defenses = list(getattr(model, "robustcompress_defenses", []) or []) + [
        {"name": "anp_vs", "params": params.model_dump(mode="json")}]
    summary = {"base": {"clean": c0, "pgd": r0, "V": v0.V}, "anp_vs": {"clean": c1, "pgd": r1, "V": v1.V},
               "export": res.to_dict(), "eval": {"eps": eps, "steps": eval_steps, "n": len(y)}}
    save_checkpoint(small, out, {"metrics": summary, "dataset": data.info.to_dict()})
    Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=1))
    if plot:
        plot_vulnerability_histograms({"standard": v0, "ANP-VS": v1}, plot)
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
    eval_limit: int = typer.Option(500, min=1, help="Test points for the evaluation."),
    out: str = typer.Option(..., "--out", help="Output checkpoint path."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, help="Seed of the data order and of the attacks."),
    progress: bool = typer.Option(False, help="Show training progress bars."),
) -> None:
    """Adversarially fine-tune a checkpoint (FGSM, R+FGSM or PGD) and report clean / PGD accuracy.

    Example: robustcompress advtrain --checkpoint runs/lenet5/model --attack pgd --eps 0.3
    --steps 40 --step-size 0.01 --epochs 5 --out runs/lenet5-pgdat

    The AT baseline of the ANP-VS paper's code: --attack pgd --eps 0.3 --steps 20 --step-size 0.01
    --mix 0.3333 --weight-decay 1e-4 --lr-step 0.5 --lr-step 0.7 --batch-size 64.
    """
    import torch
    from pydantic import ValidationError
    from rich.console import Console

    from robustcompress.attacks import ThreatModel
    from robustcompress.defenses import get_defense
    from robustcompress.defenses.adversarial_training import adversarial_training
    from robustcompress.errors import UserInputError, describe_validation
    from robustcompress.training import TrainConfig, recipe_overrides, save_checkpoint

    try:
        params = get_defense("adversarial_training").Params(
            attack=attack, eps=eps, eps_scale=eps_scale, steps=steps, step_size=step_size, mix=mix,
            random_steps=random_steps, random_eps=random_eps, epochs=epochs, lr_steps=lr_step,
            weight_decay=weight_decay)
    except ValidationError as e:
        raise UserInputError(f"advtrain: {describe_validation(e)}") from None
    console = Console()
    model, data, dev = _load(checkpoint, data_dir, train_limit, device)
    threat = ThreatModel.from_spec("linf", eps, data.info, eps_scale=eps_scale)
    part = data.test.sample(eval_limit)
    x, y = part.x.to(dev), part.y.to(dev)
    ev = _pgd(threat, eval_steps, None, seed)
    c0, r0 = _accuracies(model, x, y, ev)
    net = adversarial_training(
        model, data, attack=attack, eps=eps, eps_scale=eps_scale,
        config=TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                           **recipe_overrides(epochs, lr_step, weight_decay)),
        generator=torch.Generator().manual_seed(seed), progress=progress, steps=steps,
        step_size=step_size, mix=mix, random_steps=random_steps, random_eps=random_eps)
    c1, r1 = _accuracies(net, x, y, ev)
    console.print(f"{threat.describe()}, PGD-{eval_steps} on {len(y)} test points")
    console.print(f"before: clean {c0:.4f}  PGD {r0:.4f}")
    console.print(f"after {attack}-AT: clean {c1:.4f}  PGD {r1:.4f}")
    net.robustcompress_defenses = list(getattr(model, "robustcompress_defenses", []) or []) + [
        {"name": "adversarial_training", "params": params.model_dump(mode="json")}]
    save_checkpoint(net, out, {"metrics": {"clean": c1, "pgd": r1, "before": {"clean": c0, "pgd": r0}},
                               "dataset": data.info.to_dict()})
    console.print(f"saved {out}.safetensors (+ .json)")


def register(app: typer.Typer) -> None:
    app.command("anp")(anp_cmd)
    app.command("advtrain")(advtrain_cmd)

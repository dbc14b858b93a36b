"""Madaan et al. (ICML 2020), "Adversarial neural pruning with vulnerability suppression": ANP-VS
on a trained checkpoint, clean / PGD accuracy and vulnerability V before and after, the
structurally pruned export; and the paper's adversarial-training baseline (FGSM/R+FGSM/PGD)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class AnpOptions:
    """ANP-VS training (the original's MNIST values as defaults where the CLI has them)."""

    epochs: int = 10
    beta: float = 4.0
    lam: float = 1e-3
    eps: float = 0.3
    steps: int = 20
    step_size: float = 0.01
    mask_lr: float = 1e-2
    constant_lr: bool = False
    batch_size: int = 64


@dataclass
class AnpResult:
    """``before``/``after``: {"clean", "pgd", "V"}; ``export``: lines describing the export."""

    before: dict
    after: dict
    export: list = field(default_factory=list)
    summary_path: Optional[Path] = None


def pgd_attack(threat, steps: int, step_size: Optional[float], seed: int):
    """``attack(model, x, y) -> x_adv``: PGD with a random start, the papers' evaluation attack."""
    import torch

    from robustcompress.attacks import run_attack

    def attack(model, x, y):
        return run_attack("pgd", model, x, y, threat, steps=steps, step_size=step_size,
                          generator=torch.Generator().manual_seed(seed)).x_adv
    return attack


def accuracies(model, x, y, attack) -> tuple[float, float]:
    """(clean accuracy, accuracy under ``attack``)."""
    import torch

    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    xa = attack(model, x, y)
    with torch.no_grad():
        robust = float((model(xa).argmax(1) == y).float().mean())
    return clean, robust


def _record(small, model, o: AnpOptions, lr_steps, res) -> None:
    """The ANP-VS entry of the exported model's defense record."""
    from robustcompress.defenses import get_defense, record_defense

    params = get_defense("anp_vs").Params(
        eps=o.eps, beta=o.beta, lam=o.lam, steps=o.steps, step_size=o.step_size, mask_lr=o.mask_lr,
        epochs=o.epochs, lr_steps=list(lr_steps), kept_channels={n: len(k) for n, k in res.kept.items()})
    small.robustcompress_spec = model.robustcompress_spec
    record_defense(small, "anp_vs", params.model_dump(mode="json"), base=model)


def anp_vs_evaluation(checkpoint: str, out: str, *, options: AnpOptions, eval_steps: int = 40,
                      limit: int = 500, plot: Optional[str] = None, data_dir: Optional[str] = None,
                      train_limit: Optional[int] = None, device: str = "auto", seed: int = 0,
                      progress: bool = False) -> AnpResult:
    """Train ANP-VS from ``checkpoint``, export the pruned model to the checkpoint stem ``out``
    (+ ``out.summary.json``), and measure both with PGD-``eval_steps`` and V."""
    import torch

    from robustcompress.attacks import ThreatModel
    from robustcompress.defenses.anp_vs import (
        LENET_LR_STEPS, anp_vs, default_config, describe_export, export_pruned, probe_inputs)
    from robustcompress.experiments.protocols.loading import eval_points, load_checkpoint_data
    from robustcompress.metrics.vulnerability import measure_vulnerability, plot_vulnerability_histograms
    from robustcompress.training import save_checkpoint

    o = options
    lr_steps = () if o.constant_lr else LENET_LR_STEPS
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, train_limit=train_limit, device=device)
    model, data = ld.model, ld.data
    x, y = eval_points(data, limit, ld.device)
    attack = pgd_attack(ThreatModel.from_spec("linf", o.eps, data.info), eval_steps, o.step_size, seed)
    model.eval()
    v0 = measure_vulnerability(model, x, y, attack)
    c0, r0 = accuracies(model, x, y, attack)
    net = anp_vs(model, data, eps=o.eps, beta=o.beta, lam=o.lam, steps=o.steps,
                 step_size=o.step_size, mask_lr=o.mask_lr,
                 config=default_config(o.epochs, o.batch_size, seed, lr_steps=lr_steps),
                 generator=torch.Generator().manual_seed(seed), progress=progress)
    res = export_pruned(net, probe_inputs(data.info).to(ld.device))
    small = res.model.eval()
    # V on the masked eval network, as the reference: pruned channels count as zero distortion
    # (the export computes the same outputs but has fewer features to average over)
    v1 = measure_vulnerability(net.eval(), x, y, attack)
    c1, r1 = accuracies(small, x, y, attack)
    _record(small, model, o, lr_steps, res)
    result = AnpResult({"clean": c0, "pgd": r0, "V": v0.V}, {"clean": c1, "pgd": r1, "V": v1.V},
                       list(describe_export(res)), Path(str(out) + ".summary.json"))
    summary = {"base": result.before, "anp_vs": result.after, "export": res.to_dict(),
               "eval": {"eps": o.eps, "steps": eval_steps, "n": len(y)}}
    save_checkpoint(small, out, {"metrics": summary, "dataset": data.info.to_dict()})
    result.summary_path.write_text(json.dumps(summary, indent=1))
    if plot:
        plot_vulnerability_histograms({"standard": v0, "ANP-VS": v1}, plot)
    return result


def adversarial_finetune(checkpoint: str, out: str, *, params, lr: float = 1e-3,
                         batch_size: int = 128, eval_steps: int = 40, limit: int = 500,
                         data_dir: Optional[str] = None, train_limit: Optional[int] = None,
                         device: str = "auto", seed: int = 0, progress: bool = False):
    """The AT baseline: fine-tune with ``params`` (the adversarial_training defense's validated
    Params) and report (threat, before, after) clean / PGD-``eval_steps`` accuracy; the model
    goes to the run folder ``out``."""
    import torch

    from robustcompress.attacks import ThreatModel
    from robustcompress.defenses import record_defense
    from robustcompress.defenses.adversarial_training import adversarial_training
    from robustcompress.experiments.protocols.loading import eval_points, load_checkpoint_data
    from robustcompress.training import TrainConfig, recipe_overrides, save_checkpoint

    p = params
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, train_limit=train_limit, device=device)
    threat = ThreatModel.from_spec("linf", p.eps, ld.data.info, eps_scale=p.eps_scale)
    x, y = eval_points(ld.data, limit, ld.device)
    ev = pgd_attack(threat, eval_steps, None, seed)
    before = accuracies(ld.model, x, y, ev)
    net = adversarial_training(
        ld.model, ld.data, attack=p.attack, eps=p.eps, eps_scale=p.eps_scale,
        config=TrainConfig(epochs=p.epochs, lr=lr, batch_size=batch_size, seed=seed,
                           **recipe_overrides(p.epochs, p.lr_steps, p.weight_decay)),
        generator=torch.Generator().manual_seed(seed), progress=progress, steps=p.steps,
        step_size=p.step_size, mix=p.mix, random_steps=p.random_steps, random_eps=p.random_eps)
    after = accuracies(net, x, y, ev)
    record_defense(net, "adversarial_training", p.model_dump(mode="json"), base=ld.model)
    stem = save_checkpoint(net, Path(out) / "model", {
        "metrics": {"clean": after[0], "pgd": after[1], "before": {"clean": before[0], "pgd": before[1]}},
        "dataset": ld.data.info.to_dict()})
    return threat, len(y), before, after, stem

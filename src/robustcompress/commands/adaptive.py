"""CLI command: evaluate-adaptive (the adaptive robustness evaluation of a checkpoint, with
every budget of the battery as an option; ``robustcompress evaluate --adaptive`` runs the same
evaluation with the defaults)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from robustcompress.errors import UserInputError


def run_adaptive(model, split, info, *, device, seed: int, norm: str, eps: str,
                 eps_scale: Optional[float] = None, surrogate=None,
                 json_path: Optional[Path] = None, **kw):
    """Evaluate ``model`` on ``split`` (a :class:`robustcompress.data.info.Split`), print the
    report and optionally write it as JSON; ``kw`` goes to ``evaluate_robustness``."""
    import torch
    from rich.console import Console

    from robustcompress.attacks import ThreatModel
    from robustcompress.attacks.adaptive import evaluate_robustness
    from robustcompress.attacks.convergence import evaluate_until_converged

    console = Console()
    threat = ThreatModel.from_spec(norm, eps, info, eps_scale=eps_scale)
    x, y = split.x.to(device), split.y.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    converge = kw.pop("converge", None)
    if converge is not None:  # {"eot_start", "eot_cap", "tol"}
        kw.pop("eot_samples", None)
        report = evaluate_until_converged(model, x, y, threat, surrogate_model=surrogate,
                                          generator=gen, **converge, **kw)
        for point in report.settings["convergence"]["curve"]:
            console.print(f"EOT {point['eot_samples']:>4}, APGD {point['apgd_steps']:>4} steps: "
                          f"robust accuracy {point['robust_accuracy']:.2%}", highlight=False)
    else:
        report = evaluate_robustness(model, x, y, threat, surrogate_model=surrogate, generator=gen, **kw)
    report.render(console)
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_dict(), indent=1))
        console.print(f"report written to {json_path}", highlight=False)
    return report


def evaluate_adaptive_cmd(
    checkpoint: str = typer.Option(..., help="Checkpoint stem written by `robustcompress train`."),
    norm: str = typer.Option("linf", help="linf | l2."),
    eps: str = typer.Option(..., help="Budget in input units (0.3, 8/255) or on --eps-scale."),
    eps_scale: Optional[float] = typer.Option(None, help="Give --eps on this scale, e.g. 255."),
    split: str = typer.Option("test", help="test | train."),
    limit: Optional[int] = typer.Option(1000, help="Evaluate on N samples, a class-stratified subset (0 = all)."),
    eot: Optional[int] = typer.Option(None, help="EOT draws per gradient for stochastic models (default 20)."),
    mc: Optional[int] = typer.Option(None, help="Draws per verdict for stochastic models (default 100)."),
    bpda: str = typer.Option("identity", help="Surrogate backward for non-differentiable layers: "
                             "identity | clipped | tanh | tanh0.75 | exact."),
    surrogate: Optional[str] = typer.Option(None, help="Checkpoint of an undefended model for the transfer attack."),
    apgd_steps: int = typer.Option(100, min=1, help="APGD iterations."),
    restarts: int = typer.Option(1, min=1, help="APGD restarts."),
    square_queries: int = typer.Option(5000, min=0, help="Square attack queries (0 = skip)."),
    checks: bool = typer.Option(True, help="Run the gradient-masking checks."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Inputs per attack batch."),
    max_rows: Optional[int] = typer.Option(None, min=1, help="Most rows per forward when EOT "
                                           "draws are stacked (bounds memory)."),
    converge: bool = typer.Option(False, "--converge", help="Stochastic models: grow EOT (from "
                                  "--eot, default 5) and APGD steps x2 until the robust accuracy "
                                  "moves less than --converge-tol, up to --eot-cap; prints the curve."),
    eot_cap: int = typer.Option(80, min=1, help="Largest EOT budget --converge tries."),
    converge_tol: float = typer.Option(0.02, min=0.0, help="Accuracy change (0-1) that counts as converged."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, help="Master seed of every attack and of the model's randomness."),
) -> None:
    """Adaptive robustness evaluation: APGD-CE/DLR, Square, transfer, with EOT for stochastic
    and BPDA for non-differentiable models, plus gradient-masking checks.

    Example: robustcompress evaluate-adaptive --checkpoint runs/lenet5 --eps 0.3 --limit 500

    Example (a randomized defense, budget grown until the number settles):
    robustcompress evaluate-adaptive --checkpoint runs/sap --eps 2/255 --converge --eot 5 --eot-cap 80
    """
    from robustcompress.data import load_dataset
    from robustcompress.data.info import DatasetInfo
    from robustcompress.device import resolve_device
    from robustcompress.training import load_checkpoint
    from robustcompress.training.checkpoint import read_checkpoint_meta

    if split not in ("test", "train"):
        raise UserInputError(f"--split must be test or train, got {split!r}")
    dev = resolve_device(device)
    info = DatasetInfo.from_dict(read_checkpoint_meta(checkpoint)["spec"]["info"])
    data = load_dataset(info.name, root=data_dir)
    if tuple(data.info.shape) != tuple(info.shape):
        raise UserInputError(
            f"the checkpoint's model takes {info.name} inputs of shape {tuple(info.shape)} but the "
            f"data found has shape {tuple(data.info.shape)}; point --data-dir at its dataset")
    model = load_checkpoint(checkpoint, device=dev)
    sur = load_checkpoint(surrogate, device=dev) if surrogate else None
    part = getattr(data, split).sample(limit or None)
    run_adaptive(model, part, info, device=dev, seed=seed, norm=norm, eps=eps, eps_scale=eps_scale,
                 surrogate=sur, json_path=json_out, eot_samples=eot, mc_samples=mc, bpda=bpda,
                 n_restarts=restarts, apgd_steps=apgd_steps, square_queries=square_queries,
                 checks=checks, batch_size=batch_size, max_rows=max_rows,
                 converge={"eot_start": eot or 5, "eot_cap": eot_cap, "tol": converge_tol} if converge else None)


def register(app: typer.Typer) -> None:
    app.command("evaluate-adaptive")(evaluate_adaptive_cmd)

"""CLI command: evaluate-adaptive (the adaptive robustness evaluation of a checkpoint, with
every budget of the battery as an option; ``robustcompress evaluate --adaptive`` runs the same
evaluation with the defaults). Thin: parses options, calls
:func:`robustcompress.experiments.protocols.adaptive.evaluate_checkpoint`, renders the report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, EOT_HELP, MC_HELP, limit_option, out_option)


def evaluate_adaptive_cmd(
    checkpoint: str = typer.Option(..., help="Checkpoint stem written by `robustcompress train`."),
    norm: str = typer.Option("linf", help="linf | l2."),
    protocol: str = typer.Option("adaptive", help="adaptive (APGD-CE/DLR, Square, transfer) | "
                                 "standard (AutoAttack's: APGD-CE, APGD-T, FAB-T, Square; "
                                 "APGD-CE/DLR with EOT-20 for randomized models)."),
    eps: str = typer.Option(..., help="Budget in input units (0.3, 8/255) or on --eps-scale."),
    eps_scale: Optional[float] = typer.Option(None, help="Give --eps on this scale, e.g. 255."),
    split: str = typer.Option("test", help="test | train."),
    limit: Optional[int] = limit_option(1000, " (0 = all)"),
    eot: Optional[int] = typer.Option(None, "--eot", min=1, help=f"{EOT_HELP}."),
    mc: Optional[int] = typer.Option(None, "--mc", min=1, help=f"{MC_HELP}."),
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
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    out: Optional[str] = out_option(None, "here: OUT/adaptive.json"),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="Master seed of every attack and of the model's randomness."),
) -> None:
    """Adaptive robustness evaluation: APGD-CE/DLR, Square, transfer, with EOT for stochastic
    and BPDA for non-differentiable models, plus gradient-masking checks.

    Example: robustcompress evaluate-adaptive --checkpoint runs/lenet5 --eps 0.3 --limit 500

    Example (AutoAttack's standard protocol): robustcompress evaluate-adaptive --checkpoint
    runs/lenet5 --eps 0.3 --protocol standard

    Example (a randomized defense, budget grown until the number settles):
    robustcompress evaluate-adaptive --checkpoint runs/sap --eps 2/255 --converge --eot 5 --eot-cap 80
    """
    from rich.console import Console

    from robustcompress.experiments.protocols.adaptive import evaluate_checkpoint

    path = json_out or (Path(out) / "adaptive.json" if out else None)
    report = evaluate_checkpoint(
        checkpoint, split=split, limit=limit, surrogate=surrogate, data_dir=data_dir, device=device,
        seed=seed, norm=norm, eps=eps, eps_scale=eps_scale, json_path=path, eot_samples=eot,
        mc_samples=mc, bpda=bpda, n_restarts=restarts, apgd_steps=apgd_steps,
        square_queries=square_queries, checks=checks, batch_size=batch_size, max_rows=max_rows,
        converge={"eot_start": eot or 5, "eot_cap": eot_cap, "tol": converge_tol} if converge else None,
        protocol=protocol)
    console = Console()
    for point in (report.settings.get("convergence") or {}).get("curve", []) if converge else []:
        console.print(f"EOT {point['eot_samples']:>4}, APGD {point['apgd_steps']:>4} steps: "
                      f"robust accuracy {point['robust_accuracy']:.2%}", highlight=False)
    report.render(console)
    if path is not None:
        console.print(f"report written to {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate-adaptive")(evaluate_adaptive_cmd)

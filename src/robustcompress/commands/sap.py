"""CLI: ``robustcompress sap`` -- stochastic activation pruning (Dhillon et al., ICLR 2018) and
its stochastic baselines, post hoc on a trained checkpoint. Thin: parses options, calls
:func:`robustcompress.experiments.protocols.sap.sap_evaluation`, prints the tables."""

from __future__ import annotations

from typing import Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, deprecated, given, limit_option, out_option, parse_params)
from robustcompress.experiments.protocols.sap import BASELINES


def _render(console, res, eot: int, mc: int) -> None:
    from rich.table import Table

    table = Table(title=f"{res.baseline} {res.params} on {res.n_points} test samples (MC {mc})")
    for c in ("model", "clean acc", "ECE"):
        table.add_column(c, justify="right")
    for label, acc, ece in res.clean:
        table.add_row(label, f"{acc:.4f}", f"{ece:.4f}")
    console.print(table)
    if res.sweep:
        sweep = Table(title=f"paper protocol: FGSM, gradient = mean of {eot} draws, "
                            f"prediction = mean of {mc} draws (lambda on the 0-255 scale)")
        for c in ("lambda", "base", res.baseline):
            sweep.add_column(c, justify="right")
        for lam, base, defended in res.sweep:
            sweep.add_row(f"{lam:g}", f"{base:.4f}", f"{defended:.4f}")
        console.print(sweep)
        console.print("paper protocol only (one FGSM step): run `robustcompress attack --checkpoint "
                      "OUT --attack apgd --eps 8 --eps-scale 255` for the adaptive evaluation")
    if res.checkpoint:
        console.print(f"checkpoint: {res.checkpoint}.json/.safetensors (records {res.baseline}; "
                      "evaluators apply EOT/MC automatically)")


def sap_cmd(
    checkpoint: str = typer.Option(..., help="Trained checkpoint (from `robustcompress train`)."),
    frac: float = typer.Option(1.0, help="SAP: draws per activation, 1.0 = SAP-100 (the paper's default)."),
    method: str = typer.Option("exact", help="SAP: exact (multinomial draws) | bernoulli (approximation)."),
    layers: str = typer.Option("relu", help="SAP: relu (after every ReLU) or comma-separated module names."),
    baseline: str = typer.Option("sap", help=f"Defense to apply: {' | '.join(BASELINES)}."),
    param: list[str] = typer.Option([], "--param", help="A parameter of the defense, key=value "
                                    "(repeatable; names: `robustcompress defenses`), e.g. rate=0.2."),
    value: Optional[float] = deprecated("--value", "--param NAME=VALUE"),
    out: Optional[str] = out_option(None, "for `attack`/`evaluate`; omit to save nothing"),
    fgsm: Optional[str] = typer.Option(None, help="Also run the paper protocol: FGSM at these lambdas "
                                                  "(0-255 scale, comma-separated), base vs defended."),
    eot: int = typer.Option(100, min=1, help="EOT draws per FGSM gradient (100 as in the paper's protocol)."),
    mc: int = typer.Option(100, min=1, help="Draws per prediction (100 as in the paper's protocol)."),
    limit: int = limit_option(500),
    n: Optional[int] = deprecated("--n", "--limit"),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="Seed of the model noise and of the MC draws."),
) -> None:
    """Apply SAP (or a stochastic baseline) to a checkpoint; print clean MC accuracy and ECE,
    optionally the paper-protocol FGSM sweep; save the defended checkpoint.

    SAP needs no training. The saved checkpoint records the defense, so `robustcompress attack
    --checkpoint OUT` attacks it with EOT and MC verdicts by itself (the adaptive evaluation).

    Example: robustcompress sap --checkpoint runs/lenet5/model --frac 1.0 --fgsm 0,1,2,4,8,16
    --eot 20 --mc 20 --limit 300 --out runs/lenet5-sap
    """
    from rich.console import Console

    from robustcompress.experiments.protocols import sap

    if baseline == "sap":
        lay = "relu" if layers == "relu" else [s.strip() for s in layers.split(",") if s.strip()]
        raw = {"frac": frac, "method": method, "layers": lay}
    else:
        raw = {} if value is None else {sap.main_parameter(baseline): value}
    res = sap.sap_evaluation(checkpoint, baseline=baseline, params={**raw, **parse_params(param)},
                             lambdas=sap.parse_lambdas(fgsm), eot=eot, mc=mc, limit=given(limit, n),
                             out=out, data_dir=data_dir, device=device, seed=seed)
    _render(Console(), res, eot, mc)


def register(app: typer.Typer) -> None:
    app.command("sap")(sap_cmd)

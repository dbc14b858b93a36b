"""CLI: ``robustcompress sap`` -- stochastic activation pruning (Dhillon et al., ICLR 2018) and
its stochastic baselines, post hoc on a trained checkpoint."""

from __future__ import annotations

from typing import Optional

import typer

from robustcompress.errors import UserInputError, describe_validation

BASELINES = ("sap", "dropout", "rna", "rsa", "rnw", "rsw", "swp", "dwp")


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserInputError(f"{what} must be comma-separated numbers, e.g. 0,1,2,4,8,16; "
                             f"got {text!r}") from None


def sap_cmd(
    checkpoint: str = typer.Option(..., help="Trained checkpoint (from `robustcompress train`)."),
    frac: float = typer.Option(1.0, help="Draws per activation: 1.0 = SAP-100 (the paper's default)."),
    method: str = typer.Option("exact", help="exact (multinomial draws) | bernoulli (approximation)."),
    layers: str = typer.Option("relu", help="relu (after every ReLU) or comma-separated module names."),
    baseline: str = typer.Option("sap", help=f"Defense to apply: {' | '.join(BASELINES)}."),
    value: Optional[float] = typer.Option(None, help="Baseline parameter: dropout rate, s (rna/rsa/"
                                                     "rnw/rsw), frac (swp) or keep (dwp)."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the defended checkpoint (OUT.json/"
                                                        ".safetensors) for `attack`/`evaluate`."),
    fgsm: Optional[str] = typer.Option(None, help="Also run the paper protocol: FGSM at these lambdas "
                                                  "(0-255 scale, comma-separated), base vs defended."),
    eot: int = typer.Option(100, min=1, help="MC samples per FGSM gradient (paper: 100)."),
    mc: int = typer.Option(100, min=1, help="MC samples per prediction (paper: 100)."),
    n: int = typer.Option(500, min=1, help="Evaluate on N test samples (a class-stratified subset)."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, "
                                                      "./data, ../shared/data)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, help="Seed of the model noise and of the MC draws."),
) -> None:
    """Apply SAP (or a stochastic baseline) to a checkpoint; print clean MC accuracy and ECE,
    optionally the paper-protocol FGSM sweep; save the defended checkpoint.

    SAP needs no training. The saved checkpoint records the defense, so `robustcompress attack
    --checkpoint OUT` attacks it with EOT and MC verdicts by itself (the adaptive evaluation).

    Example: robustcompress sap --checkpoint runs/lenet5/model --frac 1.0 --fgsm 0,1,2,4,8,16
    --eot 20 --mc 20 --n 300 --out runs/lenet5-sap
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from robustcompress.attacks import ThreatModel, mc_predict, run_attack
    from robustcompress.commands.pruning import load_for_checkpoint
    from robustcompress.defenses import get_defense
    from robustcompress.metrics.calibration import reliability
    from robustcompress.nn import use_generator
    from robustcompress.training import save_checkpoint

    if baseline not in BASELINES:
        raise UserInputError(f"--baseline {baseline!r} is unknown; choose one of {', '.join(BASELINES)}")
    lambdas = _parse_floats(fgsm, "--fgsm") if fgsm else []
    model, data, dev = load_for_checkpoint(checkpoint, data_dir, None, n, device)
    spec = get_defense(baseline)
    if baseline == "sap":
        lay = "relu" if layers == "relu" else [s.strip() for s in layers.split(",") if s.strip()]
        raw = {"frac": frac, "method": method, "layers": lay}
    else:
        key = {"dropout": "rate", "swp": "frac", "dwp": "keep"}.get(baseline, "s")
        raw = {} if value is None else {key: value}
    try:
        params = spec.Params(**raw)
    except Exception as e:  # pydantic validation
        raise UserInputError(f"invalid parameters for {baseline}: {describe_validation(e)}") from None
    defended = spec.apply(model, params, None)[""].to(dev).eval()
    part = data.test.sample(n)
    x, y = part.x.to(dev), part.y.to(dev)
    console = Console()
    rows = []
    for label, m in (("base", model), (baseline, defended)):
        gen = torch.Generator(device=dev).manual_seed(seed)
        probs = mc_predict(m, x, mc_samples=mc, generator=gen)
        rows.append((label, float((probs.argmax(1) == y).float().mean()), reliability(probs, y).ece))
    table = Table(title=f"{baseline} {params.model_dump()} on {len(y)} test samples (MC {mc})")
    for c in ("model", "clean acc", "ECE"):
        table.add_column(c, justify="right")
    for label, acc, ece in rows:
        table.add_row(label, f"{acc:.4f}", f"{ece:.4f}")
    console.print(table)
    if lambdas:
        sweep = Table(title=f"paper protocol: FGSM, gradient = mean of {eot} draws, "
                            f"prediction = mean of {mc} draws (lambda on the 0-255 scale)")
        sweep.add_column("lambda", justify="right")
        sweep.add_column("base", justify="right")
        sweep.add_column(baseline, justify="right")
        for lam in lambdas:
            accs = []
            for m in (model, defended):
                gen = torch.Generator(device=dev).manual_seed(seed + int(lam))
                if lam == 0:
                    accs.append(float((mc_predict(m, x, mc_samples=mc, generator=gen).argmax(1) == y)
                                      .float().mean()))
                    continue
                threat = ThreatModel.from_spec("linf", lam, data.info, eps_scale=255)
                with use_generator(m, gen):
                    res = run_attack("fgsm", m, x, y, threat, generator=gen, eot_samples=eot,
                                     mc_samples=mc)
                accs.append(res.robust_accuracy)
            sweep.add_row(f"{lam:g}", f"{accs[0]:.4f}", f"{accs[1]:.4f}")
        console.print(sweep)
        console.print("paper protocol only (one FGSM step): run `robustcompress attack --checkpoint "
                      "OUT --attack apgd --eps 8 --eps-scale 255` for the adaptive evaluation")
    if out:
        stem = save_checkpoint(defended, out, {"metrics": {"clean_acc": rows[1][1], "ece": rows[1][2]},
                                               "base_checkpoint": str(checkpoint)})
        console.print(f"checkpoint: {stem}.json/.safetensors (records {baseline}; "
                      "evaluators apply EOT/MC automatically)")


def register(app: typer.Typer) -> None:
    app.command("sap")(sap_cmd)

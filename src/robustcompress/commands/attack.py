"""CLI command ``attack``: run one registered attack on a checkpoint and report robust accuracy.

Thin: parses options, builds the threat model from the checkpoint's dataset, calls
:func:`robustcompress.attacks.run_attack_sweep` (one :func:`~robustcompress.attacks.run_attack`
per eps, all from the same random draws), prints a rich table and optionally writes JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, EOT_HELP, MC_HELP, check_params, deprecated, given, limit_option,
    out_option, parse_params)
from robustcompress.errors import UserInputError

__all__ = ["attack_cmd", "attacks_cmd", "parse_eps_list", "parse_params", "register"]


def parse_eps_list(items: list[str]) -> list[str]:
    """``["8/255,16/255", "0.1"]`` (repeated ``--eps`` flags, each a comma list) -> ``["8/255", "16/255", "0.1"]``."""
    out = [e.strip() for item in items or [] for e in item.split(",") if e.strip()]
    if not out:
        raise UserInputError("--eps needs a value, e.g. --eps 8/255 or --eps 2/255,8/255")
    return out


def attack_cmd(
    checkpoint: str = typer.Option(..., help="Checkpoint written by `train` (run folder or its model.json)."),
    attack: str = typer.Option("pgd", help="Attack name: fgsm, bim, pgd, mim, rfgsm, apgd, apgd-t, "
                               "transfer, gaussian, uniform, ... (see `robustcompress attacks`)."),
    eps: list[str] = typer.Option(..., help="Budget in input units (0.03, 8/255), or on the --eps-scale "
                                  "scale; several (--eps 2/255,8/255 or repeated) print one row per eps."),
    eps_scale: Optional[float] = typer.Option(None, help="Give --eps on a 0..S scale of the box, e.g. 255."),
    norm: str = typer.Option("linf", help="linf | l2."),
    steps: Optional[int] = typer.Option(None, help="Iterations (iterative attacks)."),
    step_size: Optional[float] = typer.Option(None, help="Step in input units (iterative attacks)."),
    restarts: Optional[int] = typer.Option(None, help="Random restarts (pgd, apgd)."),
    loss: Optional[str] = typer.Option(None, help="ce | dlr | cw (gradient attacks)."),
    paper: bool = typer.Option(False, help="BIM: Kurakin et al.'s schedule (step 1/255, min(eps+4, 1.25 eps) steps)."),
    param: list[str] = typer.Option([], "--param", help="Any other attack parameter, key=value (repeatable)."),
    surrogate: Optional[str] = typer.Option(None, help="Surrogate checkpoint for --attack transfer."),
    eot: Optional[int] = typer.Option(None, "--eot", min=1, help=f"{EOT_HELP}."),
    mc: Optional[int] = typer.Option(None, "--mc", min=1, help=f"{MC_HELP}."),
    limit: int = limit_option(1000),
    n: Optional[int] = deprecated("--n", "--limit"),
    batch_size: int = typer.Option(256, min=1, help="Inputs per attack batch."),
    seed: int = typer.Option(0, help="Seed of every random choice (random starts, model noise)."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    json_out: Optional[str] = typer.Option(None, "--json", help="Also write the results to this JSON "
                                           "file (with several --eps: a list, one record per eps)."),
    out: Optional[str] = out_option(None, "here: OUT/attack.json"),
) -> None:
    """Attack a checkpoint and print clean accuracy, robust accuracy and perturbation sizes.

    Example: robustcompress attack --checkpoint runs/lenet5 --attack pgd --eps 0.3 --steps 40 --limit 500

    Example: robustcompress attack --checkpoint runs/resnet20 --attack apgd --eps 8 --eps-scale 255

    Example: robustcompress attack --checkpoint runs/lenet5 --attack pgd --eps 2/255,8/255,16/255
    """
    import torch

    from robustcompress.attacks import ThreatModel, get_attack, mc_predict, run_attack_sweep
    from robustcompress.attacks.registry import validate_attack_params
    from robustcompress.experiments.protocols.loading import (
        eval_points, load_checkpoint_data, load_surrogate)

    spec = get_attack(attack)
    budgets = parse_eps_list(eps)
    params = {**parse_params(param), **{k: v for k, v in (("steps", steps), ("step_size", step_size),
              ("restarts", restarts), ("loss", loss), ("paper", paper or None)) if v is not None}}
    check_params("attack", spec.name, validate_attack_params(spec.name, params, strict=True), "attacks")
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, test_limit=given(limit, n), device=device)
    x, y = eval_points(ld.data, given(limit, n), ld.device)
    if (spec.kind == "transfer") != (surrogate is not None):
        raise UserInputError("--attack transfer needs --surrogate CHECKPOINT (the model the attacker "
                             "knows)" if surrogate is None else "--surrogate only applies to --attack transfer")
    if surrogate is not None:
        params["surrogate"] = load_surrogate(surrogate, ld.info, ld.device)
    threats = [ThreatModel.from_spec(norm, e, ld.data.info, eps_scale=eps_scale) for e in budgets]
    gen = torch.Generator(device=ld.device).manual_seed(seed)
    with torch.no_grad():
        clean = mc_predict(ld.model, x, mc_samples=mc, generator=gen, batch_size=batch_size).argmax(1) == y
    sweep = run_attack_sweep(spec.name, ld.model, x, y, threats[0], [t.eps for t in threats], generator=gen,
                             eot_samples=eot, mc_samples=mc, batch_size=batch_size, **params)
    head = {"checkpoint": str(checkpoint), "dataset": ld.data.info.name, "attack": spec.name}
    reports = [_report(head, t, e, eps_scale, seed, clean, sweep[t.eps]) for t, e in zip(threats, budgets)]
    if len(reports) == 1:
        _print(reports[0])
    else:
        _print_rows(reports)
    _write(reports, json_out, out)


def _write(reports: list[dict], json_out: Optional[str], out: Optional[str]) -> None:
    """The JSON record to ``--json FILE`` or ``OUT/attack.json`` (``--out FILE.json``: deprecated)."""
    if out and out.endswith(".json") and not json_out:
        typer.secho("--out FILE.json is deprecated; use --json FILE.json (--out is a run folder)",
                    err=True, fg="yellow")
        json_out, out = out, None
    path = Path(json_out) if json_out else Path(out) / "attack.json" if out else None
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, default=str))
    typer.echo(f"wrote {path}")


def _report(head: dict, threat, spec: str, eps_scale: Optional[float], seed: int, clean, res) -> dict:
    """The JSON/table record of one eps: threat, clean and robust accuracy, norms, parameters."""
    from torch import nn

    summary = res.summary()
    summary["params"] = {k: v for k, v in summary["params"].items() if not isinstance(v, nn.Module)}
    return {
        **head,
        "threat": {"norm": threat.norm, "eps": threat.eps, "eps_255": threat.eps_255,
                   "bounds": list(threat.bounds), "spec": spec, "eps_scale": eps_scale},
        "seed": seed,
        "clean_accuracy": float(clean.double().mean()),
        **{k: v for k, v in summary.items() if k != "attack"},
        "robust_and_clean": float((clean & ~res.success).double().mean()),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report['attack']} on {report['dataset']} ({report['n']} samples), "
                    f"{report['threat']['norm']} eps={report['threat']['eps']:.5g} "
                    f"({report['threat']['eps_255']:.3g}/255)", show_header=False)
    t.add_column("", style="bold")
    t.add_column("", justify="right")
    rows = [
        ("clean accuracy", report["clean_accuracy"]),
        ("robust accuracy", report["robust_accuracy"]),
        ("fooled in >= 1 draw", report["fooled_any_rate"]),
        ("mean perturbation norm", report["norm_mean"]),
        ("median perturbation norm", report["norm_median"]),
        ("time (s)", report["time_s"]),
        ("parameters", ", ".join(f"{k}={v}" for k, v in report["params"].items())),
    ]
    for k, v in rows:
        t.add_row(k, _fmt(v))
    Console().print(t)


def _print_rows(reports: list[dict]) -> None:
    """One row per eps (several ``--eps`` values)."""
    from rich.console import Console
    from rich.table import Table

    first = reports[0]
    t = Table(title=f"{first['attack']} on {first['dataset']} ({first['n']} samples), "
                    f"{first['threat']['norm']}, clean accuracy {first['clean_accuracy']:.4f}")
    for name in ("eps", "x/255", "robust acc", "fooled any", "mean norm", "median norm", "time s"):
        t.add_column(name, justify="right")
    for r in reports:
        t.add_row(f"{r['threat']['eps']:.5g}", f"{r['threat']['eps_255']:.3g}", _fmt(r["robust_accuracy"]),
                  _fmt(r["fooled_any_rate"]), _fmt(r["norm_mean"]), _fmt(r["norm_median"]),
                  _fmt(r["time_s"]))
    Console().print(t)
    same = {k: v for k, v in first["params"].items() if all(r["params"].get(k) == v for r in reports)}
    varying = [k for k in first["params"] if k not in same]
    typer.echo("parameters: " + ", ".join([f"{k}={v}" for k, v in same.items()]
                                          + [f"{k} per eps (see --out)" for k in varying]))


def attacks_cmd() -> None:
    """List the registered attacks with their kind and parameters.

    Example: robustcompress attacks
    """
    import inspect

    from rich.console import Console
    from rich.table import Table

    from robustcompress.attacks import list_attacks

    t = Table(title="robustcompress attacks")
    t.add_column("name", style="bold")
    t.add_column("kind")
    t.add_column("description")
    t.add_column("parameters (defaults)")
    for name, spec in list_attacks().items():
        ps = ", ".join(k if v is inspect.Parameter.empty else f"{k}={v}" for k, v in spec.parameters.items())
        t.add_row(name, spec.kind, spec.doc, ps)
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.command("attack")(attack_cmd)
    app.command("attacks")(attacks_cmd)

"""CLI: ``robustcompress prune`` -- progressive magnitude pruning with per-round robustness
(Guo et al.). Thin: parses options, calls
:func:`robustcompress.experiments.protocols.pruning.pruning_curve`, prints the curve."""

from __future__ import annotations

from typing import Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, deprecated, given, limit_option, out_option)


def _print_round(console, row: dict) -> None:
    console.print(f"round {row['round']:2d}: sparsity {100 * row['sparsity']:6.2f}%  "
                  f"clean {row['clean_acc']:.4f}  FGS {row['r_inf_fgsm']:.4f}  "
                  f"rFGS {row['r_inf_rfgsm']:.4f}  r2(DeepFool) {row['r2_deepfool']:.4f} "
                  f"(fooled {100 * row['deepfool_success']:.0f}%)")


def _render(console, curve, options, metrics) -> None:
    from rich.table import Table

    table = Table(title=f"progressive pruning (rho={options.rho:.3f}, {options.scope}); "
                        f"eps={metrics.eps}, {curve.n_points} test points")
    cols = ["round", "sparsity", "act. zeros", "clean", "FGS", "rFGS", "r2 DeepFool", "r2/||x||"]
    cols += ["r2 C&W"] * metrics.cw + ["CLEVER"] * bool(metrics.clever_points)
    for c in cols:
        table.add_column(c, justify="right")
    for r in curve.rows:
        flag = " <- over-pruning" if r["round"] == curve.over_pruned else ""
        cells = [str(r["round"]), f"{100 * r['sparsity']:.2f}%",
                 f"{100 * r.get('act_zero_frac_last', float('nan')):.1f}%", f"{r['clean_acc']:.4f}",
                 f"{r['r_inf_fgsm']:.4f}", f"{r['r_inf_rfgsm']:.4f}",
                 f"{r['r2_deepfool']:.4f}{flag}", f"{r['r2_rel_deepfool']:.4f}"]
        if metrics.cw:
            cells.append(f"{r.get('r2_cw', float('nan')):.4f}")
        if metrics.clever_points:
            cells.append(f"{r.get('clever_l2', float('nan')):.4f}")
        table.add_row(*cells)
    console.print(table)
    over = "not detected" if curve.over_pruned is None else f"round {curve.over_pruned}"
    console.print(f"peak r2 at round {curve.peak}; over-pruning: {over}; curve: {curve.curve_path}, "
                  f"plot: {curve.plot_path}")


def prune_cmd(
    checkpoint: str = typer.Option(..., help="Trained dense checkpoint (from `robustcompress train`)."),
    rho: float = typer.Option(1 / 3, help="Fraction of the REMAINING weights pruned per round (paper: 1/3)."),
    rounds: int = typer.Option(16, min=1, help="Pruning rounds m (paper: 16 -> 99.74% zeros)."),
    retrain_epochs: int = typer.Option(1, min=0, help="Retraining epochs after each round (masks fixed)."),
    scope: str = typer.Option("uniform", help="uniform (same fraction per layer) | global (one threshold)."),
    keep_first_last: bool = typer.Option(False, help="Leave the first and last layers dense."),
    l1_activation: float = typer.Option(0.0, help="Weight of the l1 activation penalty during retraining."),
    optimizer: str = typer.Option("adam", help="Retraining optimizer: adam | sgd (momentum 0.9; the paper's Caffe recipe is sgd, lr 0.01, weight decay 5e-4)."),
    lr: float = typer.Option(1e-3, help="Retraining learning rate."),
    weight_decay: float = typer.Option(0.0, min=0.0, help="Retraining weight decay (L2 on the remaining weights)."),
    batch_size: int = typer.Option(128, min=1, help="Retraining batch size."),
    eps: float = typer.Option(0.1, help="L-inf eps of FGS/rFGS for r_inf, input units (paper: 0.1 on MNIST)."),
    limit: int = limit_option(500, " for the robustness metrics"),
    eval_limit: Optional[int] = deprecated("--eval-limit", "--limit"),
    cw: bool = typer.Option(False, help="Also r_2 under C&W-L2 (slow on CPU)."),
    deepfool_box: bool = typer.Option(True, help="Clip DeepFool to the input box (--no-deepfool-box: the original, unclipped DeepFool)."),
    clever_points: int = typer.Option(0, min=0, help="Mean CLEVER score over this many points (0: off)."),
    out: str = out_option(..., "plus r{k} checkpoints per round, curve.json, curve.png"),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    seed: int = typer.Option(0, help="Seed of retraining and of the randomised attacks."),
    progress: bool = typer.Option(False, help="Show training progress bars."),
) -> None:
    """Progressively prune a checkpoint and measure robustness after every round.

    Prints one row per round: sparsity, clean accuracy, accuracy under FGS and rFGS (r_inf), mean
    DeepFool L2 perturbation (r_2); marks where robustness drops before clean accuracy
    ("over-pruning"). Re-running the same command resumes after the last finished round.

    Example: robustcompress prune --checkpoint runs/lenet300/model --rho 0.333 --rounds 16
    --retrain-epochs 1 --out runs/lenet300-pruned
    """
    from rich.console import Console

    from robustcompress.experiments.protocols.pruning import PruneOptions, RoundMetrics, pruning_curve

    console = Console()
    options = PruneOptions(rho, rounds, retrain_epochs, scope, keep_first_last, l1_activation,
                           optimizer, lr, weight_decay, batch_size)
    metrics = RoundMetrics(eps, cw, clever_points, deepfool_box)
    curve = pruning_curve(checkpoint, out, options=options, metrics=metrics,
                          limit=given(limit, eval_limit), data_dir=data_dir,
                          train_limit=train_limit, device=device, seed=seed, progress=progress,
                          on_row=lambda row: _print_round(console, row))
    _render(console, curve, options, metrics)


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)

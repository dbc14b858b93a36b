"""CLI: ``robustcompress prune`` -- progressive magnitude pruning with per-round robustness (Guo et al.)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from robustcompress.errors import UserInputError


def load_for_checkpoint(checkpoint: str, data_dir: Optional[str], train_limit: Optional[int],
                        test_limit: Optional[int], device: str):
    """(model, dataset, device) for a checkpoint: the dataset is the one recorded in it."""
    from robustcompress.data import load_dataset
    from robustcompress.device import resolve_device
    from robustcompress.training import load_checkpoint

    dev = resolve_device(device)
    model = load_checkpoint(checkpoint, device=dev)
    name = model.robustcompress_meta["spec"]["info"]["name"]
    kw = {k: v for k, v in (("train_limit", train_limit), ("test_limit", test_limit)) if v}
    return model, load_dataset(name, root=data_dir, **kw), dev


def evaluate_round(model, x, y, *, eps: float, bounds, cw: bool, clever_points: int,
                   seed: int, deepfool_box: bool = True) -> dict:
    """One row of the robustness-vs-sparsity curve: clean acc, r_inf (FGS, rFGS), r_2, CLEVER."""
    import torch

    from robustcompress.metrics.robustness_metrics import clever, r_2, r_inf

    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    from robustcompress.metrics.sparsity import activation_sparsity, weight_sparsity

    acts = activation_sparsity(model, x)
    row = {"clean_acc": clean, "weight_sparsity": weight_sparsity(model),
           "activation_sparsity": acts,
           # the paper's "Sparsity (a)": zeros of the activations feeding the last layer
           "act_zero_frac_last": list(acts.values())[-1]["zero_frac"] if acts else float("nan")}
    ri = r_inf(model, x, y, eps, bounds=bounds, generator=torch.Generator().manual_seed(seed))
    row.update({f"r_inf_{k}": v for k, v in ri.items()})
    df = r_2(model, x, y, attack="deepfool", bounds=bounds, clip_to_box=deepfool_box)
    row.update({"r2_deepfool": df["r2"], "r2_rel_deepfool": df["r2_rel"],
                "deepfool_success": df["success_rate"]})
    if cw:
        c = r_2(model, x, y, attack="cw", bounds=bounds, steps=100, binary_search_steps=5,
                initial_const=0.1)
        row.update({"r2_cw": c["r2"], "r2_rel_cw": c["r2_rel"], "cw_success": c["success_rate"]})
    if clever_points > 0:
        s = clever(model, x[:clever_points], bounds=bounds,
                   generator=torch.Generator().manual_seed(seed))
        row["clever_l2"] = float(s.mean())
    return row


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
    eval_limit: int = typer.Option(500, min=1, help="Test points used for the robustness metrics."),
    cw: bool = typer.Option(False, help="Also r_2 under C&W-L2 (slow on CPU)."),
    deepfool_box: bool = typer.Option(True, help="Clip DeepFool to the input box (--no-deepfool-box: the original, unclipped DeepFool)."),
    clever_points: int = typer.Option(0, min=0, help="Mean CLEVER score over this many points (0: off)."),
    out: str = typer.Option(..., "--out", help="Output folder: r{k} checkpoints, curve.json, curve.png."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
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
    from rich.table import Table

    from robustcompress.defenses.pruning import L1Activation, progressive_prune
    from robustcompress.metrics.robustness_metrics import plot_robustness_vs_sparsity
    from robustcompress.training import TrainConfig, save_checkpoint

    if scope not in ("uniform", "global"):
        raise UserInputError(f"--scope must be uniform or global, not {scope!r}")
    if optimizer not in ("adam", "sgd"):
        raise UserInputError(f"--optimizer must be adam or sgd, not {optimizer!r}")
    if not 0 < rho < 1:
        raise UserInputError(f"--rho must be in (0, 1), got {rho}; the paper uses 0.333")
    model, data, dev = load_for_checkpoint(checkpoint, data_dir, train_limit, None, device)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    part = data.test.sample(eval_limit)
    x, y = part.x.to(dev), part.y.to(dev)
    curve_path = outdir / "curve.json"
    done = {r["round"]: r for r in json.loads(curve_path.read_text())} if curve_path.is_file() else {}
    console = Console()
    rows: list[dict] = []

    def record(k: int, sparsity: float, m) -> None:
        if k in done:
            row = done[k]
        else:
            row = {"round": k, "sparsity": sparsity,
                   **evaluate_round(m, x, y, eps=eps, bounds=data.info.bounds, cw=cw,
                                    clever_points=clever_points, seed=seed,
                                    deepfool_box=deepfool_box)}
            if k > 0:
                save_checkpoint(m, outdir / f"r{k}", {"round": k, "metrics": row})
        rows.append(row)
        curve_path.write_text(json.dumps(rows, indent=1))
        console.print(f"round {k:2d}: sparsity {100 * sparsity:6.2f}%  clean {row['clean_acc']:.4f}  "
                      f"FGS {row['r_inf_fgsm']:.4f}  rFGS {row['r_inf_rfgsm']:.4f}  "
                      f"r2(DeepFool) {row['r2_deepfool']:.4f} "
                      f"(fooled {100 * row['deepfool_success']:.0f}%)")

    record(0, 0.0, model)
    config = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    progressive_prune(model, data, rho, rounds, retrain_epochs, scope=scope,
                      keep_first_last=keep_first_last, train_config=config,
                      objective=L1Activation(l1_activation) if l1_activation > 0 else None,
                      checkpoint_dir=outdir / "rounds", device=dev, progress=progress,
                      on_round=record)
    det = plot_robustness_vs_sparsity(rows, outdir / "curve.png")
    table = Table(title=f"progressive pruning (rho={rho:.3f}, {scope}); eps={eps}, "
                        f"{len(x)} test points")
    cols = ["round", "sparsity", "act. zeros", "clean", "FGS", "rFGS", "r2 DeepFool", "r2/||x||"]
    if cw:
        cols.append("r2 C&W")
    if clever_points:
        cols.append("CLEVER")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        flag = " <- over-pruning" if r["round"] == det["over_pruned"] else ""
        cells = [str(r["round"]), f"{100 * r['sparsity']:.2f}%",
                 f"{100 * r.get('act_zero_frac_last', float('nan')):.1f}%", f"{r['clean_acc']:.4f}",
                 f"{r['r_inf_fgsm']:.4f}", f"{r['r_inf_rfgsm']:.4f}",
                 f"{r['r2_deepfool']:.4f}{flag}", f"{r['r2_rel_deepfool']:.4f}"]
        if cw:
            cells.append(f"{r.get('r2_cw', float('nan')):.4f}")
        if clever_points:
            cells.append(f"{r.get('clever_l2', float('nan')):.4f}")
        table.add_row(*cells)
    console.print(table)
    console.print(f"peak r2 at round {det['peak']}; over-pruning: "
                  f"{'round ' + str(det['over_pruned']) if det['over_pruned'] is not None else 'not detected'}"
                  f"; curve: {curve_path}, plot: {outdir / 'curve.png'}")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)

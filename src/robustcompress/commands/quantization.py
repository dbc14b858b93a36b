"""CLI: ``robustcompress quantize`` -- k-bit weight quantisation with mu-law (Song et al.)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustcompress.errors import UserInputError


def quantize_cmd(
    checkpoint: str = typer.Option(..., help="Trained float checkpoint (from `robustcompress train`)."),
    bits: int = typer.Option(3, min=2, max=8, help="Weight bits (paper: 3)."),
    per_channel: bool = typer.Option(False, help="One scale per output channel instead of per layer."),
    mu_law_layers: int = typer.Option(0, min=0, help="Apply mu-law to the last N layers (paper: the last layers)."),
    mu: float = typer.Option(255.0, help="mu of the mu-law mapping."),
    mu_mode: str = typer.Option("grid", help="grid (compress-quantise-expand) | map (mapped weights stay)."),
    qat_epochs: int = typer.Option(0, min=0, help="Quantisation-aware fine-tuning epochs (straight-through)."),
    feedback_rounds: int = typer.Option(0, min=0, help="Feedback-learning rounds before quantising (0: off)."),
    out: str = typer.Option(..., "--out", help="Output checkpoint stem (writes OUT.safetensors/.json and OUT-dW.png)."),
    eval_limit: int = typer.Option(1000, min=1, help="Test points for the accuracy check."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default: $ROBUSTCOMPRESS_DATA, ./data, ../shared/data)."),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples (QAT/F.L.)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, help="Seed of the fine-tuning."),
    progress: bool = typer.Option(False, help="Show training progress bars."),
) -> None:
    """Quantise a checkpoint's weights to k bits, print per-layer ||dW||_2 and the packed size.

    ||dW||_2 is shown both as the reshaped-matrix norm (O x I*k*k) and as the true operator norm
    of the layer at its input size (power iteration); sizes are bytes of the exported model
    (float vs packed k-bit codes + scales).

    Example: robustcompress quantize --checkpoint runs/cnn4/model --bits 3 --mu-law-layers 1
    --mu 255 --out runs/cnn4-q3
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from robustcompress.commands.pruning import load_for_checkpoint
    from robustcompress.defenses.quantization import quantize
    from robustcompress.metrics.compression import exported_bytes
    from robustcompress.metrics.spectral import plot_error_norms, quantization_error_norms
    from robustcompress.training import TrainConfig, evaluate_accuracy, fit, save_checkpoint

    if mu_mode not in ("grid", "map"):
        raise UserInputError(f"--mu-mode must be grid or map, not {mu_mode!r}")
    model, data, dev = load_for_checkpoint(checkpoint, data_dir, train_limit, None, device)
    ref = model
    if feedback_rounds > 0:
        from robustcompress.defenses.feedback_learning import feedback_learning

        ref, _ = feedback_learning(model, data, rounds=feedback_rounds, epochs=1,
                                   train_config=TrainConfig(seed=seed),
                                   generator=torch.Generator().manual_seed(seed), progress=progress)
    q = quantize(ref, bits, per_channel=per_channel, mu_law_layers=mu_law_layers, mu=mu,
                 mu_mode=mu_mode)
    if qat_epochs > 0:
        q = fit(q, data, TrainConfig(epochs=qat_epochs, seed=seed), device=dev,
                progress=progress).model
    q.eval()
    test = data.test.sample(eval_limit)
    acc_f, acc_q = evaluate_accuracy(ref, test, device=dev), evaluate_accuracy(q, test, device=dev)
    rows = quantization_error_norms(q, ref, data.info.shape,
                                    generator=torch.Generator().manual_seed(seed))
    stem = save_checkpoint(q, out, {"metrics": {"clean_acc": acc_q, "float_acc": acc_f},
                                    "dW": rows})
    plot_error_norms({f"{bits}-bit": rows}, Path(f"{stem}-dW.png"), key="reshaped")
    console = Console()
    table = Table(title=f"||dW||_2 per layer ({bits}-bit, {'per-channel' if per_channel else 'per-layer'}"
                        f"{f', mu-law on last {mu_law_layers}' if mu_law_layers else ''})")
    for c in ("layer", "kind", "||W||_2", "||dW||_2 reshaped", "||dW||_2 operator"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["layer"], r["kind"], f"{r['weight_norm']:.4f}", f"{r['reshaped']:.4f}",
                      "-" if r["operator"] is None else f"{r['operator']:.4f}")
    console.print(table)
    fb, qb = exported_bytes(ref), exported_bytes(q)
    console.print(f"clean accuracy: float {acc_f:.4f} -> quantised {acc_q:.4f} ({len(test)} test points)")
    console.print(f"exported size: float {fb:,} B -> packed {qb:,} B ({qb / fb:.3f} of float; "
                  f"{bits}/32 = {bits / 32:.3f})")
    console.print(f"checkpoint: {stem}.json/.safetensors (float weights + quantiser recipe); "
                  f"plot: {stem}-dW.png")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)

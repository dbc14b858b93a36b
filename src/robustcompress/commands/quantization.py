"""CLI: ``robustcompress quantize`` -- k-bit weight quantisation with mu-law (Song et al.).
Thin: parses options, calls
:func:`robustcompress.experiments.protocols.quantization.quantization_table`, prints it."""

from __future__ import annotations

from typing import Optional

import typer

from robustcompress.cli_options import (
    DATA_DIR_HELP, DEVICE_HELP, deprecated, given, limit_option, out_option)


def _render(res, o) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"||dW||_2 per layer ({o.bits}-bit, {'per-channel' if o.per_channel else 'per-layer'}"
                        f"{f', mu-law on last {o.mu_law_layers}' if o.mu_law_layers else ''})")
    for c in ("layer", "kind", "||W||_2", "||dW||_2 reshaped", "||dW||_2 operator"):
        table.add_column(c, justify="right")
    for r in res.rows:
        table.add_row(r["layer"], r["kind"], f"{r['weight_norm']:.4f}", f"{r['reshaped']:.4f}",
                      "-" if r["operator"] is None else f"{r['operator']:.4f}")
    console.print(table)
    fb, qb = res.float_bytes, res.packed_bytes
    console.print(f"clean accuracy: float {res.float_acc:.4f} -> quantised {res.quant_acc:.4f} "
                  f"({res.n_points} test points)")
    console.print(f"exported size: float {fb:,} B -> packed {qb:,} B ({qb / fb:.3f} of float; "
                  f"{o.bits}/32 = {o.bits / 32:.3f})")
    console.print(f"checkpoint: {res.checkpoint}.json/.safetensors (float weights + quantiser "
                  f"recipe); plot: {res.plot}")


def quantize_cmd(
    checkpoint: str = typer.Option(..., help="Trained float checkpoint (from `robustcompress train`)."),
    bits: int = typer.Option(3, min=2, max=8, help="Weight bits (paper: 3)."),
    per_channel: bool = typer.Option(False, help="One scale per output channel instead of per layer."),
    mu_law_layers: int = typer.Option(0, min=0, help="Apply mu-law to the last N layers (paper: the last layers)."),
    mu: float = typer.Option(255.0, help="mu of the mu-law mapping."),
    mu_mode: str = typer.Option("grid", help="grid (compress-quantise-expand) | map (mapped weights stay)."),
    qat_epochs: int = typer.Option(0, min=0, help="Quantisation-aware fine-tuning epochs (straight-through)."),
    feedback_rounds: int = typer.Option(0, min=0, help="Feedback-learning rounds before quantising (0: off)."),
    out: str = out_option(..., "plus OUT/dW.png"),
    limit: int = limit_option(1000, " for the accuracy check"),
    eval_limit: Optional[int] = deprecated("--eval-limit", "--limit"),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    train_limit: Optional[int] = typer.Option(None, help="Use only this many training samples (QAT/F.L.)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
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
    from robustcompress.experiments.protocols.quantization import QuantOptions, quantization_table

    options = QuantOptions(bits, per_channel, mu_law_layers, mu, mu_mode, qat_epochs, feedback_rounds)
    res = quantization_table(checkpoint, out, options=options, limit=given(limit, eval_limit),
                             data_dir=data_dir, train_limit=train_limit, device=device, seed=seed,
                             progress=progress)
    _render(res, options)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)

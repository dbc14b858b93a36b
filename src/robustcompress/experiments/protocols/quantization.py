"""Song et al. (AAAI-21 RSEML), "Robustness of weight-quantized networks": k-bit weights
(optionally mu-law on the last layers, feedback learning, QAT), per-layer ||dW||_2 (reshaped and
operator norm), clean accuracy and bytes of the exported float vs packed model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from robustcompress.errors import UserInputError


@dataclass
class QuantOptions:
    bits: int = 3
    per_channel: bool = False
    mu_law_layers: int = 0
    mu: float = 255.0
    mu_mode: str = "grid"
    qat_epochs: int = 0
    feedback_rounds: int = 0


@dataclass
class QuantResult:
    """Accuracies (float reference, quantised), the ||dW|| rows, exported bytes, files."""

    float_acc: float
    quant_acc: float
    n_points: int
    rows: list = field(default_factory=list)
    float_bytes: int = 0
    packed_bytes: int = 0
    checkpoint: Optional[Path] = None
    plot: Optional[Path] = None


def quantization_table(checkpoint: str, out: str, *, options: QuantOptions, limit: int = 1000,
                       data_dir: Optional[str] = None, train_limit: Optional[int] = None,
                       device: str = "auto", seed: int = 0, progress: bool = False) -> QuantResult:
    """Quantise ``checkpoint`` into the run folder ``out`` (``model.*`` and ``dW.png``).

    Feedback learning (1 epoch per round) and QAT train with TrainConfig's defaults and ``seed``
    (the command has no training options); inside ``robustcompress run`` the ``quantize`` and
    ``feedback_learning`` defenses train with the run's recipe instead."""
    import torch

    from robustcompress.defenses.quantization import quantize
    from robustcompress.experiments.protocols.loading import load_checkpoint_data
    from robustcompress.metrics.compression import exported_bytes
    from robustcompress.metrics.spectral import plot_error_norms, quantization_error_norms
    from robustcompress.training import TrainConfig, evaluate_accuracy, fit, save_checkpoint

    o = options
    if o.mu_mode not in ("grid", "map"):
        raise UserInputError(f"--mu-mode must be grid or map, not {o.mu_mode!r}")
    ld = load_checkpoint_data(checkpoint, data_dir=data_dir, train_limit=train_limit, device=device)
    ref, data, dev = ld.model, ld.data, ld.device
    if o.feedback_rounds > 0:
        from robustcompress.defenses.feedback_learning import feedback_learning

        ref, _ = feedback_learning(ref, data, rounds=o.feedback_rounds, epochs=1,
                                   train_config=TrainConfig(seed=seed),
                                   generator=torch.Generator().manual_seed(seed), progress=progress)
    q = quantize(ref, o.bits, per_channel=o.per_channel, mu_law_layers=o.mu_law_layers, mu=o.mu,
                 mu_mode=o.mu_mode)
    if o.qat_epochs > 0:
        q = fit(q, data, TrainConfig(epochs=o.qat_epochs, seed=seed), device=dev,
                progress=progress).model
    q.eval()
    test = data.test.sample(limit or None)
    res = QuantResult(evaluate_accuracy(ref, test, device=dev), evaluate_accuracy(q, test, device=dev),
                      len(test))
    res.rows = quantization_error_norms(q, ref, data.info.shape,
                                        generator=torch.Generator().manual_seed(seed))
    res.checkpoint = save_checkpoint(q, Path(out) / "model", {
        "metrics": {"clean_acc": res.quant_acc, "float_acc": res.float_acc}, "dW": res.rows})
    res.plot = Path(out) / "dW.png"
    plot_error_norms({f"{o.bits}-bit": res.rows}, res.plot, key="reshaped")
    res.float_bytes, res.packed_bytes = exported_bytes(ref), exported_bytes(q)
    return res

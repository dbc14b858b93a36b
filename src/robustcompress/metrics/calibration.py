"""Calibration: reliability diagrams and expected calibration error (ECE).

Used for the SAP paper's Fig. 4 (Dhillon et al., ICLR 2018: calibration of the dense, SAP-100, ADV
and ADV+SAP-100 models on clean and FGSM inputs), following Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017:

* confidence of a prediction = its largest class probability (for a stochastic model: of the
  MC-averaged probabilities, :func:`robustcompress.attacks.mc_predict`);
* ``n_bins`` equal-width bins on ``[0, 1]``, bin ``m`` = ``((m-1)/n, m/n]`` (the first bin also
  holds confidence 0); default ``n_bins = 15`` (Guo et al.'s choice);
* ``ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` over non-empty bins.

The paper plots accuracy against confidence level but states neither the bin count nor ECE; the
15 equal-width bins are our documented default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import torch

from robustcompress.errors import UserInputError

DEFAULT_BINS = 15


@dataclass(frozen=True)
class ReliabilityData:
    """Per-bin figures of a reliability diagram (tensors of length ``n_bins``).

    ``count`` is the number of predictions per bin; ``confidence``/``accuracy`` are the bin means
    (NaN for empty bins); ``edges`` has ``n_bins + 1`` entries; ``ece`` the expected calibration
    error; ``n`` the number of predictions.
    """

    edges: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    ece: float
    n: int

    def to_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "count": self.count.tolist(),
                "confidence": self.confidence.tolist(), "accuracy": self.accuracy.tolist(),
                "ece": self.ece, "n": self.n}


def _check(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> None:
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0]:
        raise UserInputError(f"calibration needs probabilities [N, C] and labels [N], got "
                             f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    if n_bins < 1:
        raise UserInputError(f"n_bins must be >= 1, got {n_bins}")
    if probs.numel() and (probs.min() < 0 or probs.max() > 1 + 1e-6):
        raise UserInputError("calibration needs probabilities in [0, 1] (apply softmax to logits, "
                             "or use robustcompress.attacks.mc_predict)")


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_BINS
                ) -> ReliabilityData:
    """Reliability-diagram data and ECE of class probabilities ``probs [N, C]`` for ``labels [N]``."""
    _check(probs, labels, n_bins)
    probs = probs.detach().double().cpu()
    labels = labels.detach().long().cpu()
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    # bin m holds conf in ((m-1)/n, m/n]; conf = 0 goes to the first bin
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp_(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    safe = count.clamp_min(1)
    mean_conf = torch.where(count > 0, conf_sum / safe, torch.full_like(count, float("nan")))
    mean_acc = torch.where(count > 0, acc_sum / safe, torch.full_like(count, float("nan")))
    n = int(labels.shape[0])
    ece = float((acc_sum - conf_sum).abs().sum() / n) if n else 0.0
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return ReliabilityData(edges, count.long(), mean_conf, mean_acc, ece, n)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = DEFAULT_BINS) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (see the module docstring)."""
    return reliability(probs, labels, n_bins).ece


def plot_reliability(curves: Mapping[str, ReliabilityData], path: Union[str, Path],
                     title: str = "Reliability diagram") -> Path:
    """Save a reliability plot (accuracy vs mean confidence per bin, one line per model, the
    diagonal for perfect calibration, ECE in the legend) to ``path`` (PNG/SVG/PDF by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, data in curves.items():
        keep = data.count > 0
        ax.plot(data.confidence[keep].numpy(), data.accuracy[keep].numpy(), marker="o",
                markersize=3, label=f"{name} (ECE {data.ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

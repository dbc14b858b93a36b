"""Weight sparsity per layer and activation sparsity per ReLU (Guo et al., NeurIPS 2018).

Guo et al. report weight sparsity (percentage of zero connections) and, for activations, "the
percentage of deactivated (i.e. zero) neurons feeding to the last fully-connected layer".  The
paper's "l1 activation sparsity" is not defined further, so both the zero fraction and the mean
``||a||_1 / dim`` are reported for every ``nn.ReLU`` (the model zoo uses one ReLU instance per
nonlinearity).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.nn import surgery

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero effective weights per Linear/Conv layer, plus ``"total"``."""
    out, zeros, total = {}, 0, 0
    for n, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            w = m.weight.detach()
            z = int((w == 0).sum())
            out[n] = z / w.numel()
            zeros, total = zeros + z, total + w.numel()
    out["total"] = zeros / max(total, 1)
    return out


def activation_sparsity(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256,
                        modules: Optional[list[str]] = None) -> dict[str, dict[str, float]]:
    """Per ReLU application (site names of :mod:`robustcompress.nn.surgery`; a module used twice
    gives two entries, ``F.relu`` counts): ``zero_frac`` (fraction of exact zeros) and
    ``l1_per_dim`` (mean ||a||_1 / dim), averaged over the samples of ``x``; ``modules``
    restricts to named sites/modules. The model's mode is not changed (call ``model.eval()``
    first for dropout/BN models)."""
    sums: dict[str, list[float]] = {}
    count = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            with surgery.tap_activations(model) as tap:
                model(xb)
            for site, a in tap.records(modules or "relu"):
                a = a.detach().flatten(1)
                acc = sums.setdefault(site.name, [0.0, 0.0])
                acc[0] += float((a == 0).float().mean(dim=1).sum())
                acc[1] += float(a.abs().mean(dim=1).sum())
            count += xb.shape[0]
    n = max(count, 1)
    return {k: {"zero_frac": v[0] / n, "l1_per_dim": v[1] / n} for k, v in sums.items()}

"""Undeclared randomness: found by running the model twice, then attacked as what it is.

The evaluator reads randomness from the declaration protocol (:mod:`robustcompress.nn.protocol`).
A model that draws noise without declaring it (``x + 0.1 * torch.randn_like(x)`` in ``forward``,
``F.dropout(..., training=True)``, a dropout layer left in training mode) would otherwise be
attacked with single-draw gradients and judged on single draws: numbers that change from run to
run and count one lucky draw as a break. :func:`declare_randomness` runs the model twice on the
same batch; if the outputs differ and nothing is declared, it returns the model wrapped in
:class:`UndeclaredRandomness`, which declares it stochastic (so EOT and MC verdicts apply) and
makes its global-RNG draws come from the evaluator's generator (so an evaluation with a seed is
reproducible). Cost for a deterministic model: two forwards of at most :data:`PROBE_ROWS` rows.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.seeds import draw_seed
from robustcompress.nn.protocol import is_stochastic

#: rows of the batch the probe runs on
PROBE_ROWS = 16
#: relative difference between the two forwards above which the model counts as random
PROBE_RTOL = 1e-5


class UndeclaredRandomness(nn.Module):
    """Declares the randomness of ``model`` (``stochastic=True``, ``granularity="batch"``: one
    seed per forward, the safe choice when the noise's structure is unknown). Each forward seeds
    the global RNG from ``generator`` inside ``torch.random.fork_rng``, so the caller's global RNG
    state is left as it was."""

    granularity = "batch"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.stochastic = True
        self.generator: Optional[torch.Generator] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.generator is None:
            return self.model(x)
        seed = draw_seed(self.generator)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return self.model(x)


def outputs_vary(model: nn.Module, x: torch.Tensor) -> bool:
    """True if two forwards of ``model`` on the same rows differ (beyond float noise)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        a = model(x[:PROBE_ROWS])
        b = model(x[:PROBE_ROWS])
    scale = 1.0 + float(a.detach().abs().max()) if a.numel() else 1.0
    return bool((a - b).abs().max() > PROBE_RTOL * scale) if a.numel() else False


def declare_randomness(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, bool]:
    """``(model to evaluate, undeclared randomness found)``: the model itself when it declares
    its randomness or has none, else :class:`UndeclaredRandomness` around it."""
    if is_stochastic(model) or not outputs_vary(model, x):
        return model, False
    return UndeclaredRandomness(model), True

"""EOT as a model wrapper, for code that cannot pass ``eot_samples`` (e.g. third-party attacks).

Every attack of this package already takes ``eot_samples`` and averages *gradients* over draws
(:func:`robustcompress.attacks.draws.input_gradient`, Athalye, Carlini & Wagner 2018). Foolbox's
``ExpectationOverTransformationWrapper`` instead averages *logits* over draws inside ``forward``;
:class:`ExpectationModel` does the same, vectorised (stacked copies of the batch) when every
stochastic module draws per sample, looped otherwise. The gradient of the averaged logits is the
average of the per-draw gradients, so for a linear-in-logits loss the two forms agree.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from robustcompress.attacks.draws import generator_scope, over_draws, repeat_rows, resolve_draws, sum_parts


class ExpectationModel(nn.Module):
    """``forward(x)`` = logits of ``model`` averaged over ``samples`` draws of its randomness.

    Parameters
    ----------
    model : the (stochastic) model; not copied, its mode is not changed.
    samples : draws per forward (1 for a deterministic model).
    generator : the wrapped model's stochastic modules draw from it (when given).
    max_rows : most rows per stacked forward (memory bound).
    """

    def __init__(self, model: nn.Module, samples: int = 20, generator: Optional[torch.Generator] = None,
                 max_rows: Optional[int] = None):
        super().__init__()
        self.model = model
        self.samples = int(samples)
        self.generator = generator
        self.max_rows = max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = resolve_draws(self.model, self.samples, self.samples)
        b = x.shape[0]
        with generator_scope(self.model, self.generator):
            parts = over_draws(self.model, b, n, self.max_rows,
                               lambda c: (self.model(repeat_rows(x, c)).view(c, b, -1).sum(0),), x.device)
        return sum_parts(parts, 0) / n

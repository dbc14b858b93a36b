"""Intermediate activations by module name, for activation-sparsity and vulnerability metrics.

ANP-VS's reference code returns ``(logits, hidden)`` from its forward; we get the same without
touching the architecture by registering forward hooks for one forward pass and removing them
afterwards (also on error). The activations keep their autograd graph, so a loss on them (the VS
loss) back-propagates.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import nn

from robustcompress.errors import UserInputError

LayerSelector = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]


def select_modules(model: nn.Module, layers: LayerSelector = "relu") -> list[str]:
    """Names of the modules picked by ``layers``.

    ``"relu"``: every ``nn.ReLU``; ``"conv"``/``"linear"``/``"weights"``: conv, linear or both;
    a list of module names; or a predicate ``f(name, module) -> bool``.
    """
    kinds = {
        "relu": (nn.ReLU,),
        "conv": (nn.Conv1d, nn.Conv2d),
        "linear": (nn.Linear,),
        "weights": (nn.Conv1d, nn.Conv2d, nn.Linear),
    }
    named = dict(model.named_modules())
    if isinstance(layers, str):
        if layers not in kinds:
            raise UserInputError(f"unknown layer selector {layers!r}; use one of {', '.join(kinds)},"
                                 " a list of module names or a predicate")
        return [n for n, m in named.items() if n and isinstance(m, kinds[layers])]
    if callable(layers):
        return [n for n, m in named.items() if n and layers(n, m)]
    missing = [n for n in layers if n not in named]
    if missing:
        raise UserInputError(f"no module named {missing} in the model; names look like "
                             f"{[n for n in named if n][:6]}")
    return list(layers)


def features(model: nn.Module, x: torch.Tensor, layers: LayerSelector = "relu",
             return_logits: bool = False):
    """Run ``model(x)`` once and return the outputs of the selected modules by name.

    Returns ``{name: activation}`` in execution order (a module called several times keeps its
    last output), or ``(logits, that dict)`` when ``return_logits``. Does not change the mode.
    """
    names = select_modules(model, layers)
    out: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        def hook(_m, _inp, output, _n=n):
            out.pop(_n, None)
            out[_n] = output

        handles.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return (logits, out) if return_logits else out

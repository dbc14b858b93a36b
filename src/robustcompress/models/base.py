"""What every zoo model shares: the input-shape check and the feature-size dry run.

The zoo CONTRACT (see :mod:`robustcompress.models.registry`):

* the first sub-module is a :class:`~robustcompress.models.registry.Normalize` named
  ``normalize``, so models take inputs in the dataset's declared box;
* every nonlinearity is its own ``nn.ReLU`` instance (never ``F.relu``, never one instance used
  twice), so defenses rewrite zoo models in the module tree and their module names stay
  readable (other models are handled by :mod:`robustcompress.nn.surgery` too);
* weights live in plain ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` modules that defenses can
  swap by name (``model.get_submodule`` / ``setattr``);
* a wrong input shape raises :class:`~robustcompress.errors.UserInputError` naming the expected
  and the received shape (one tuple comparison per forward).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Optional, Sequence

import torch
import torch.fx
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import UserInputError
from robustcompress.models.registry import Normalize


def check_input_shape(x: torch.Tensor, expected: tuple[int, ...], name: str) -> None:
    """Raise ``UserInputError`` unless ``x`` is a batch of inputs of shape ``expected``."""
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise UserInputError(
            f"model {name!r} expects a batch of inputs of shape (B, {', '.join(map(str, expected))})"
            f" but got {tuple(x.shape)}; build the model for this dataset (build_model(name, "
            "dataset.info)) or resize/crop the inputs"
        )


# torch.fx records the check as one call instead of tracing into it, so zoo models trace
# (robustcompress.nn.surgery) and the traced model still checks its input shape.
torch.fx.wrap("check_input_shape")


class ZooSequential(nn.Sequential):
    """A named ``nn.Sequential`` that checks the input shape before running.

    Layers get readable names (``normalize``, ``conv1``, ``relu1``, ``pool1``, ``fc1``, ...), so a
    defense can replace ``model.conv1`` with ``setattr(model, "conv1", new)``.
    """

    def __init__(self, layers: "OrderedDict[str, nn.Module]",
                 input_shape: Optional[Sequence[int]] = None, name: str = "model"):
        super().__init__(layers)
        # None for slices (``model[:4]`` rebuilds the class without a shape): no check then
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self.arch_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.input_shape is not None:
            check_input_shape(x, self.input_shape, self.arch_name)
        return super().forward(x)


def normalize_for(info: DatasetInfo) -> Normalize:
    """The ``Normalize`` layer for ``info`` (mean/std broadcast to every channel if given once)."""
    c = info.channels
    mean = tuple(info.mean) * c if len(info.mean) == 1 else tuple(info.mean)
    std = tuple(info.std) * c if len(info.std) == 1 else tuple(info.std)
    return Normalize(mean, std)


@torch.no_grad()
def output_shape(layers: Iterable[nn.Module], input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape (without batch) after running ``layers`` on one zero input: the dry run that sizes
    the first fully connected layer for any input size."""
    x = torch.zeros(2, *input_shape)  # batch 2: BatchNorm in train mode needs > 1 value
    for layer in layers:
        was = layer.training
        layer.eval()
        x = layer(x)
        layer.train(was)
    return tuple(x.shape[1:])


def mlp_head(in_features: int, hidden: Sequence[int], num_classes: int,
             start: int = 1) -> "OrderedDict[str, nn.Module]":
    """``fc{start}, relu, fc, relu, ..., fc(num_classes)`` as named layers (ReLUs distinct)."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    width = in_features
    i = start
    for h in hidden:
        layers[f"fc{i}"] = nn.Linear(width, int(h))
        layers[f"relu_fc{i}"] = nn.ReLU()
        width = int(h)
        i += 1
    layers[f"fc{i}"] = nn.Linear(width, num_classes)
    return layers


def check_contract(model: nn.Module) -> None:
    """Assert the zoo contract (used by tests and by third-party builders): Normalize first,
    no ReLU instance registered twice, no functional-only nonlinearity left to find."""
    first = next(iter(model.children()), None)
    if not isinstance(first, Normalize):
        raise AssertionError(f"first child is {type(first).__name__}, not Normalize")
    seen: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, nn.ReLU):
            if id(m) in seen:
                raise AssertionError(f"ReLU instance reused at {seen[id(m)]!r} and {name!r}")
            seen[id(m)] = name
    if not seen:
        raise AssertionError("no nn.ReLU module found")

"""VGG-style networks with a configurable layer list.

References: Simonyan & Zisserman 2015 (VGG-16, configuration "D": 13 conv + 3 fc); Guo et al.,
"Sparse DNNs with Improved Adversarial Robustness", NeurIPS 2018, section 4.2 (a "VGG-like"
CIFAR-10 net with 12 convolutional and 2 fully-connected layers). Guo et al. do not list the
widths; ``vgg_sparse`` takes VGG-16's plan without its last 3x3 conv (64,64,M,128,128,M,
256,256,256,M,512,512,512,M,512,512,M) and one hidden fc of 512, the usual CIFAR VGG head.

``vgg_sparse`` and ``vgg16`` take a ``width`` multiplier (every conv and hidden fc width times
``width``, at least 1), e.g. ``width=0.25`` for the CPU twins of the paper configs.

Deviations: BatchNorm after every conv (CIFAR VGGs do not train from scratch without it; pass
``batch_norm=False`` for the plain version); a max-pool is skipped when the feature map is already
1 pixel wide, so the same plan runs on 8x8 digits and 28x28 MNIST.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence, Union

from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import UserInputError
from robustcompress.models.base import ZooSequential, mlp_head, normalize_for, output_shape
from robustcompress.models.registry import register_model

PLANS: dict[str, tuple[Union[int, str], ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg_sparse": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}
HEADS: dict[str, tuple[int, ...]] = {"vgg11": (512,), "vgg_sparse": (512,), "vgg16": (512, 512)}


def _features(info: DatasetInfo, plan: Sequence[Union[int, str]], batch_norm: bool):
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(normalize=normalize_for(info))
    c, size = info.channels, min(info.shape[1:])
    conv_i = pool_i = 0
    for item in plan:
        if item == "M":
            if size < 2:
                continue
            pool_i += 1
            layers[f"pool{pool_i}"] = nn.MaxPool2d(2)
            size //= 2
            continue
        conv_i += 1
        layers[f"conv{conv_i}"] = nn.Conv2d(c, int(item), 3, padding=1, bias=not batch_norm)
        if batch_norm:
            layers[f"bn{conv_i}"] = nn.BatchNorm2d(int(item))
        layers[f"relu{conv_i}"] = nn.ReLU()
        c = int(item)
    layers["flatten"] = nn.Flatten()
    return layers


@register_model("vgg", "VGG with a configurable plan (config=list or preset name; BN by default)")
def vgg(
    info: DatasetInfo,
    config: Union[str, Sequence[Union[int, str]]] = "vgg_sparse",
    hidden: Sequence[int] | None = None,
    batch_norm: bool = True,
) -> nn.Module:
    """VGG with conv plan ``config`` (ints = 3x3 conv widths, ``"M"`` = max-pool 2) and hidden
    fc widths ``hidden`` (default: the preset's head, else one layer of 512)."""
    if info.modality != "image" or len(info.shape) != 3:
        raise UserInputError(f"vgg needs images (C, H, W), got {info.name} of shape {info.shape}")
    name = config if isinstance(config, str) else "vgg"
    if isinstance(config, str):
        if config not in PLANS:
            raise UserInputError(f"unknown VGG config {config!r}; choose one of {', '.join(PLANS)}"
                                 " or pass a list such as [64, 'M', 128, 'M']")
        plan, head = PLANS[config], HEADS[config]
    else:
        plan, head = tuple(config), (512,)
        bad = [p for p in plan if p != "M" and not (isinstance(p, int) and p > 0)]
        if bad or not any(p != "M" for p in plan):
            raise UserInputError(f"VGG config items must be positive ints or 'M', got {list(plan)}")
    layers = _features(info, plan, batch_norm)
    (n,) = output_shape(layers.values(), info.shape)
    layers.update(mlp_head(n, tuple(hidden) if hidden is not None else head, info.num_classes))
    return ZooSequential(layers, info.shape, name)


def _preset(info: DatasetInfo, name: str, batch_norm: bool, width: float) -> nn.Module:
    if not width > 0:
        raise UserInputError(f"{name} width multiplier must be > 0, got {width}")
    if width == 1:
        return vgg(info, config=name, batch_norm=batch_norm)
    plan = [p if p == "M" else max(1, round(int(p) * width)) for p in PLANS[name]]
    model = vgg(info, config=plan, hidden=[max(1, round(h * width)) for h in HEADS[name]],
                batch_norm=batch_norm)
    model.arch_name = name
    return model


@register_model("vgg_sparse", "VGG-like 12 conv + 2 fc of Guo et al. 2018 (BN; width multiplier)")
def vgg_sparse(info: DatasetInfo, batch_norm: bool = True, width: float = 1.0) -> nn.Module:
    """The 12-conv + 2-fc VGG-like CIFAR-10 net of Guo et al. (see module doc)."""
    return _preset(info, "vgg_sparse", batch_norm, width)


@register_model("vgg16", "VGG-16 (13 conv + 3 fc) with BatchNorm (width multiplier)")
def vgg16(info: DatasetInfo, batch_norm: bool = True, width: float = 1.0) -> nn.Module:
    """VGG-16 (configuration D) with BN and a CIFAR-size head (512, 512, classes)."""
    return _preset(info, "vgg16", batch_norm, width)

"""Residual networks: ResNet-20/32 (CIFAR style), ResNet-18 and wide ResNets.

References: He et al., "Deep Residual Learning", CVPR 2016 (section 4.2: the CIFAR ResNet-6n+2
with 16/32/64 filters and parameter-free "option A" shortcuts, 0.27 M / 0.46 M parameters for
ResNet-20 / ResNet-32 (table 6); ResNet-32 is the sparse-DNNs paper's CIFAR-10 "ResNet with 31
convolutional layers and a single fully-connected layer"; ResNet-18 with 64..512 filters);
Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (pre-activation blocks, width k);
Madry et al. 2018 / the weight-quantization paper's CIFAR-10 "wide ResNet-32" (5 blocks per stage,
widths 160/320/640, i.e. ``wrn(depth=32, widen=10)``).

Every ReLU is its own module (``relu1``/``relu2`` inside each block, ``relu`` for the stem or the
final pre-activation), so SAP and activation hooks see each of them.

Deviations: ResNet-18 uses the CIFAR stem (one 3x3 conv, stride 1, no max-pool) as is usual for
32x32 inputs; every network ends with adaptive average pooling, so 8x8 and 28x28 inputs work (the
input shape is still checked against the dataset the model was built for).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import UserInputError
from robustcompress.models.base import check_input_shape, normalize_for
from robustcompress.models.registry import register_model

torch.fx.wrap("check_input_shape")  # traced as one call (see models.base)


class PadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample by ``stride`` and zero-pad the new channels.

    Parameter-free (its data movement is not a MAC and is not counted by ``count_macs``).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -ReLU (post-activation, He et al. 2016)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 (+ shortcut) (Zagoruyko 2016)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = (nn.Identity() if stride == 1 and in_ch == out_ch
                         else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        o = self.relu1(self.bn1(x))
        # the projection shortcut sees the pre-activated input, as in the reference code
        short = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.relu2(self.bn2(o)))
        return o + short


class ResNet(nn.Module):
    """Stem, stages of residual blocks, global average pool, one linear classifier."""

    def __init__(self, info: DatasetInfo, widths: tuple[int, ...], blocks: tuple[int, ...],
                 kind: str, name: str, shortcut: str = "B"):
        super().__init__()
        if info.modality != "image" or len(info.shape) != 3:
            raise UserInputError(f"{name} needs images (C, H, W), got {info.name} of shape "
                                 f"{info.shape}")
        self.input_shape, self.arch_name = tuple(info.shape), name
        self.normalize = normalize_for(info)
        stem = widths[0] if kind == "basic" else 16
        self.conv1 = nn.Conv2d(info.channels, stem, 3, 1, 1, bias=False)
        if kind == "basic":
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU()
        c = stem
        for s, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                layers.append(BasicBlock(c, w, stride, shortcut) if kind == "basic"
                              else WideBlock(c, w, stride))
                c = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        if kind == "wide":
            self.bn_final = nn.BatchNorm2d(c)
            self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, info.num_classes)
        self.kind = kind
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        check_input_shape(x, self.input_shape, self.arch_name)
        x = self.conv1(self.normalize(x))
        if self.kind == "basic":
            x = self.relu(self.bn1(x))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        if self.kind == "wide":
            x = self.relu(self.bn_final(x))
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet20", "ResNet-20 CIFAR style (16/32/64, 3x3 blocks, option-A shortcuts)")
def resnet20(info: DatasetInfo, depth: int = 20, shortcut: str = "A") -> nn.Module:
    """CIFAR ResNet-(6n+2), n = 3 for ResNet-20 (0.27 M parameters), as in the SAP paper."""
    if (depth - 2) % 6 or depth < 8:
        raise UserInputError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(info, (16, 32, 64), (n, n, n), "basic", f"resnet{depth}", shortcut)


@register_model("resnet32", "ResNet-32 CIFAR style (resnet20 with depth 32: 31 conv + 1 fc, 0.46 M)")
def resnet32(info: DatasetInfo, shortcut: str = "A") -> nn.Module:
    """CIFAR ResNet-32 (n = 5), Guo et al.'s CIFAR-10 ResNet; same network as ``resnet20(depth=32)``."""
    return resnet20(info, depth=32, shortcut=shortcut)


@register_model("resnet18", "ResNet-18 (64..512, CIFAR stem, 1x1-conv shortcuts)")
def resnet18(info: DatasetInfo, width: int = 64) -> nn.Module:
    """ResNet-18 with base width ``width`` (the tensorization paper's CIFAR-10 model)."""
    w = int(width)
    return ResNet(info, (w, 2 * w, 4 * w, 8 * w), (2, 2, 2, 2), "basic", "resnet18", "B")


@register_model("wrn", "wide ResNet WRN-depth-widen (pre-activation; depth 6n+4 or 6n+2)")
def wrn(info: DatasetInfo, depth: int = 16, widen: int = 4) -> nn.Module:
    """Wide ResNet with n blocks per stage and widths 16k/32k/64k.

    ``depth`` = 6n+4 (Zagoruyko's count) or 6n+2 (He/Madry's count: ``wrn(depth=32, widen=10)``
    is the weight-quantization paper's "wide ResNet-32", n = 5).
    """
    if depth >= 8 and (depth - 4) % 6 == 0:
        n = (depth - 4) // 6
    elif depth >= 8 and (depth - 2) % 6 == 0:
        n = (depth - 2) // 6
    else:
        raise UserInputError(f"wide ResNet depth must be 6n+4 (10, 16, 28, ...) or 6n+2 "
                             f"(14, 20, 32, ...), got {depth}")
    k = int(widen)
    return ResNet(info, (16 * k, 32 * k, 64 * k), (n, n, n), "wide", f"wrn-{depth}-{k}")

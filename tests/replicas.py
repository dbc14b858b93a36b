"""Small, faithful replicas of real architectures, written from scratch in plain PyTorch.

Tests use them as "foreign" models (not built by ``robustcompress.models``) to check
that the defenses find every site they must touch: every activation (module, functional
or method call), every conv/BN pair, every residual add. No torchvision or timm import:
installing either pulls a CUDA build of torch here. The layouts follow the published
ones (torchvision's ResNet and MobileNetV2, the ViT of Dosovitskiy et al. as laid out
in timm); the code is our own.

Every builder takes a size argument so a test can make it tiny, and ``num_classes``.
``COUNTS[name]`` (below the builders) is the test oracle for ``BUILDERS[name]()`` with
its default arguments, counted by hand from the architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BUILDERS",
    "COUNTS",
    "BasicBlock",
    "InvertedResidual",
    "ResNet",
    "MobileNetV2",
    "VisionTransformer",
    "SmallFunctionalNet",
    "UntraceableNet",
    "resnet18",
    "mobilenet_v2",
    "vit",
    "small_functional_net",
    "untraceable_net",
]


# --------------------------------------------------------------------------- ResNet-18


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one inplace ReLU module applied twice per forward."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks (7x7/2 stem, 3x3/2 max pool, 4 stages)."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        functional_stem: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        self.functional_stem = functional_stem
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # Kept when functional_stem: code half-migrated to F.relu still owns the module.
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.functional_stem:
            x = F.relu(self.bn1(self.conv1(x)))
        else:
            x = self.conv1(x)
            x = self.bn1(x)
            x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet18(
    num_classes: int = 10, width: int = 64, functional_stem: bool = False, in_channels: int = 3
) -> ResNet:
    """ResNet-18, torchvision layout; ``width`` is the stem/layer1 width (64 in the paper)."""
    return ResNet((2, 2, 2, 2), num_classes, width, functional_stem, in_channels)


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never more than 10% below ``v``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv-BN-ReLU6 (torchvision's Conv2dNormActivation with ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand 1x1 (if t != 1) -> depthwise 3x3 -> linear 1x1 projection, skip if shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        assert stride in (1, 2)
        self.stride = stride
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# (t, c, n, s) rows 1, 2 and 4 of the paper's table with n cut to at most 2. At
# width_mult 0.25 the channels are 8, 8, 16.
DEFAULT_MOBILENET_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 64, 2, 2),
)


class MobileNetV2(nn.Module):
    """MobileNetV2 (torchvision layout). The stem has stride 1, not 2: inputs are 32x32."""

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 0.25,
        settings: Sequence[Sequence[int]] | None = None,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ):
        super().__init__()
        if settings is None:
            settings = DEFAULT_MOBILENET_SETTINGS
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        # As torchvision: the last width never shrinks below 1280.
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, kernel_size=3, stride=1)]
        for t, c, n, s in settings:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(
    num_classes: int = 10, width_mult: float = 0.25, settings: Sequence[Sequence[int]] | None = None
) -> MobileNetV2:
    """MobileNetV2; ``settings`` rows are (t, c, n, s), default ``DEFAULT_MOBILENET_SETTINGS``."""
    return MobileNetV2(num_classes, width_mult, settings)


# --------------------------------------------------------------------------- ViT


class Attention(nn.Module):
    """Multi-head self-attention with one qkv Linear, written out (no F.scaled_dot_product)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Indexing x.shape (no tuple unpacking) keeps the module fx-traceable.
        b, n = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (b, heads, n, head_dim)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch: int = 8,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: float = 2,
        in_channels: int = 3,
    ):
        super().__init__()
        assert image_size % patch == 0
        num_patches = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (b, dim, h/p, w/p)
        x = x.flatten(2).transpose(1, 2)  # (b, tokens, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        x = x + self.pos_embed  # not a residual add: one operand is a Parameter
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def vit(
    num_classes: int = 10,
    image_size: int = 32,
    patch: int = 8,
    dim: int = 32,
    depth: int = 2,
    heads: int = 2,
    mlp_ratio: float = 2,
) -> VisionTransformer:
    """A small pre-norm ViT classifying from the cls token."""
    return VisionTransformer(num_classes, image_size, patch, dim, depth, heads, mlp_ratio)


# --------------------------------------------------------------------------- functional CNN


class SmallFunctionalNet(nn.Module):
    """Every activation but one is a functional or method call, one of each spelling."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(2 * w, 4 * w)
        self.fc2 = nn.Linear(4 * w, 4 * w)
        self.fc3 = nn.Linear(4 * w, 4 * w)
        self.act = nn.SiLU()
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = self.conv3(x).relu()
        x = F.relu6(self.conv4(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = F.gelu(self.fc1(x))
        x = F.silu(self.fc2(x))
        x = self.act(self.fc3(x))
        return self.head(x)


def small_functional_net(num_classes: int = 10, width: int = 8) -> SmallFunctionalNet:
    return SmallFunctionalNet(num_classes, width)


# --------------------------------------------------------------------------- untraceable


class UntraceableNet(nn.Module):
    """Data-dependent Python control flow in forward: torch.fx.symbolic_trace raises.

    The branch only rescales, so every input runs the same layers and activations.
    """

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        peak = h.amax()
        if peak > 6.0:  # a user's overflow guard: Python `if` on a tensor value
            h = h * (6.0 / peak)
        h = self.relu2(h + self.bn2(self.conv2(h)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def untraceable_net(num_classes: int = 10, width: int = 8) -> UntraceableNet:
    return UntraceableNet(num_classes, width)


# --------------------------------------------------------------------------- oracle

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "vit": vit,
    "small_functional_net": small_functional_net,
    "untraceable_net": untraceable_net,
}

# Counted by hand for each builder's DEFAULT arguments.
#   activation_calls        activation applications in one forward; a module used twice
#                           counts twice; functional and method calls count. Softmax is
#                           not an activation here.
#   activation_by_kind      by PyTorch op name: relu, relu6, gelu, silu.
#   functional_activations  how many of activation_calls are F.*/torch.*/Tensor.* calls.
#   convs / grouped_convs   Conv modules / those with groups > 1 (depthwise included).
#   linears, batchnorms, layernorms  module counts.
#   conv_bn_pairs           conv whose only consumer is the BN right after it (foldable).
#   residual_adds           adds of two activations (skip connections); adding a
#                           Parameter (ViT's pos_embed) is not one.
COUNTS: dict[str, dict] = {
    # width changes no count. functional_stem=True moves the stem relu to F.relu
    # (functional_activations 1; activation_calls unchanged, self.relu still exists).
    "resnet18": {
        "activation_calls": 17,  # stem 1 + 8 blocks x 2 (one module, called twice)
        "activation_by_kind": {"relu": 17},
        "functional_activations": 0,  # 1 with functional_stem=True
        "convs": 20,  # stem 1 + 8 blocks x 2 + 3 downsample 1x1 (layer2..4)
        "grouped_convs": 0,
        "linears": 1,  # fc
        "batchnorms": 20,  # one per conv: stem 1 + 8 x 2 + 3 downsample
        "layernorms": 0,
        "conv_bn_pairs": 20,  # every conv feeds only its BN
        "residual_adds": 8,  # one per block
    },
    # Defaults: width_mult 0.25, settings (1,16,1,1),(6,24,2,2),(6,64,2,2), so channels
    # stem 8, then 8 | 8, 8 | 16, 16, last 1280 (never shrunk). Five blocks:
    #   B1 t=1 8->8 s1 (no expand conv, residual: stride 1 and 8 == 8)
    #   B2 t=6 8->8 s2   B3 t=6 8->8 s1 (residual)
    #   B4 t=6 8->16 s2  B5 t=6 16->16 s1 (residual)
    # Every count changes with settings/width_mult (width_mult only through which
    # blocks have in == out, hence residual_adds).
    "mobilenet_v2": {
        "activation_calls": 11,  # stem 1 + B1 1 (dw) + B2..B5 4 x 2 (expand, dw) + last 1
        "activation_by_kind": {"relu6": 11},
        "functional_activations": 0,
        "convs": 16,  # stem 1 + B1 2 (dw, proj) + B2..B5 4 x 3 (expand, dw, proj) + last 1
        "grouped_convs": 5,  # one depthwise per block
        "linears": 1,  # classifier[1]
        "batchnorms": 16,  # one per conv
        "layernorms": 0,
        "conv_bn_pairs": 16,
        "residual_adds": 3,  # B1, B3, B5
    },
    # Defaults: depth 2. Every count but convs changes with depth.
    "vit": {
        "activation_calls": 2,  # one nn.GELU per block x 2
        "activation_by_kind": {"gelu": 2},
        "functional_activations": 0,
        "convs": 1,  # patch_embed
        "grouped_convs": 0,
        "linears": 9,  # (qkv, proj, fc1, fc2) x 2 blocks + head
        "batchnorms": 0,
        "layernorms": 5,  # (norm1, norm2) x 2 blocks + final norm
        "conv_bn_pairs": 0,
        "residual_adds": 4,  # (attn, mlp) x 2 blocks
    },
    # width changes no count.
    "small_functional_net": {
        "activation_calls": 7,  # F.relu, torch.relu, .relu(), F.relu6, F.gelu, F.silu, nn.SiLU
        "activation_by_kind": {"relu": 3, "relu6": 1, "gelu": 1, "silu": 2},
        "functional_activations": 6,  # all but the nn.SiLU module
        "convs": 4,  # conv1..conv4
        "grouped_convs": 0,
        "linears": 4,  # fc1, fc2, fc3, head
        "batchnorms": 1,  # bn1
        "layernorms": 0,
        "conv_bn_pairs": 1,  # conv1 -> bn1
        "residual_adds": 0,
    },
    # width changes no count; either branch of the `if` runs the same layers.
    "untraceable_net": {
        "activation_calls": 2,  # relu1, relu2 (two modules, one call each)
        "activation_by_kind": {"relu": 2},
        "functional_activations": 0,
        "convs": 2,  # conv1, conv2
        "grouped_convs": 0,
        "linears": 1,  # fc
        "batchnorms": 2,  # bn1, bn2
        "layernorms": 0,
        "conv_bn_pairs": 2,  # conv1 -> bn1, conv2 -> bn2
        "residual_adds": 1,  # h + bn2(conv2(h))
    },
}

"""LeNet-300-100 and LeNet-5 (Caffe variant), the MNIST references of the pruning literature.

Reference: LeCun et al. 1998; the variants used by Han et al. 2015 and by Guo et al., "Sparse DNNs
with Improved Adversarial Robustness", NeurIPS 2018 (section 4.2: "2 hidden fully-connected
layers" and "2 convolutional layers, 2 pooling layers and 2 fully-connected layers").
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.models.base import ZooSequential, mlp_head, normalize_for, output_shape
from robustcompress.models.registry import register_model


@register_model("lenet300", "LeNet-300-100 MLP (784-300-100-10 on MNIST; Han et al. 2015)")
def lenet300(info: DatasetInfo, hidden: tuple[int, ...] = (300, 100)) -> nn.Module:
    """LeNet-300-100: flatten, fc 300, ReLU, fc 100, ReLU, fc classes.

    Works for any input shape (the first layer has ``prod(info.shape)`` inputs).
    """
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(
        normalize=normalize_for(info), flatten=nn.Flatten()
    )
    layers.update(mlp_head(math.prod(info.shape), hidden, info.num_classes))
    return ZooSequential(layers, info.shape, "lenet300")


@register_model("lenet5", "LeNet-5 Caffe variant: conv20@5x5, pool, conv50@5x5, pool, fc500, fc")
def lenet5(info: DatasetInfo, padding: int | None = None) -> nn.Module:
    """LeNet-5 as in Caffe's MNIST example: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2,
    fc 500, ReLU, fc classes.

    Deviations: ReLU after each convolution (the Caffe prototxt has none after the convs; the
    pruning papers' PyTorch ports add them, and SAP/activation-sparsity need ReLU maps there).
    On inputs smaller than 16 pixels (the 8x8 digits) the convolutions use ``padding=2``
    ("same"): without it the second 5x5 conv would not fit (8 -> 4 -> pool 2). Pass
    ``padding`` explicitly to override.
    """
    if info.modality != "image" or len(info.shape) != 3:
        from robustcompress.errors import UserInputError

        raise UserInputError(f"lenet5 needs images (C, H, W), got {info.name} of shape {info.shape};"
                             " use soundnet5 for audio")
    pad = padding if padding is not None else (2 if min(info.shape[1:]) < 16 else 0)
    feats: "OrderedDict[str, nn.Module]" = OrderedDict(
        normalize=normalize_for(info),
        conv1=nn.Conv2d(info.channels, 20, 5, padding=pad),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5, padding=pad),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
    )
    (n,) = output_shape(feats.values(), info.shape)
    feats.update(mlp_head(n, (500,), info.num_classes))
    return ZooSequential(feats, info.shape, "lenet5")

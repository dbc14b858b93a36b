"""The 4-layer MNIST CNN of the weight-quantization paper.

Reference: "Improving adversarial robustness in weight-quantized networks" (MNIST experiments use a
"4-layer CNN", clean accuracy 99.17%). The slides do not list the layers. We use the standard
4-weight-layer MNIST CNN of the adversarial-robustness literature, Madry et al.'s MNIST challenge
model (an assumption, chosen because it is the usual MNIST model of that line of work): conv 32@5x5 (same padding),
ReLU, max-pool 2, conv 64@5x5 (same), ReLU, max-pool 2, fc 1024, ReLU, fc classes.
It has 2 conv + 2 fc = 4 weight layers, each of which the quantiser can map.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import UserInputError
from robustcompress.models.base import ZooSequential, mlp_head, normalize_for, output_shape
from robustcompress.models.registry import register_model


@register_model("cnn4", "4-layer MNIST CNN (conv32-pool-conv64-pool-fc1024-fc; Madry et al.)")
def cnn4(info: DatasetInfo, width: int = 32, hidden: int = 1024) -> nn.Module:
    """conv ``width``@5x5, pool, conv ``2*width``@5x5, pool, fc ``hidden``, fc classes.

    Same padding keeps it valid for any image size >= 4 (8x8 digits: 8 -> 4 -> 2).
    """
    if info.modality != "image" or len(info.shape) != 3:
        raise UserInputError(f"cnn4 needs images (C, H, W), got {info.name} of shape {info.shape}")
    feats: "OrderedDict[str, nn.Module]" = OrderedDict(
        normalize=normalize_for(info),
        conv1=nn.Conv2d(info.channels, width, 5, padding=2),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(width, 2 * width, 5, padding=2),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
    )
    (n,) = output_shape(feats.values(), info.shape)
    feats.update(mlp_head(n, (hidden,), info.num_classes))
    return ZooSequential(feats, info.shape, "cnn4")

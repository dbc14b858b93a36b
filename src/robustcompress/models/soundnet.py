"""SoundNet5: the 1-D raw-waveform network of the tensorization paper (section 4.2).

Reference: Bulat, Kossaifi et al., "Defensive Tensorization", BMVC 2021, section 4.2, building on
Aytar et al., "SoundNet", NeurIPS 2016. Five convolutions ``[in, out, kernel, stride, padding]``:
``[1,16,64,2,32] [16,32,32,2,16] [32,64,16,2,8] [64,128,8,2,4] [128,256,4,2,2]``, each followed by
a max-pool, then linear ``[512, 256]`` and ``[256, classes]``.

Adaptation to the input length: the paper gives neither the pool sizes nor the input length that
makes the flattened size 512 = 256 channels x 2. We use max-pool 2 after convolutions 1-4 and an
*adaptive* max-pool to length 2 after convolution 5, so the flattened size is 512 for 8 kHz FSDD
clips (8000 samples: conv5 gives 16 steps) and 16 kHz Speech Commands clips (16000 samples: 32
steps) alike, and the paper's linear layers are kept exactly.

Deviations: a BatchNorm after each convolution (as in the original SoundNet; training the raw
waveform net from scratch without it is slow and unstable); pass ``batch_norm=False`` to drop it.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from robustcompress.data.info import DatasetInfo
from robustcompress.errors import UserInputError
from robustcompress.models.base import ZooSequential, mlp_head, normalize_for
from robustcompress.models.registry import register_model

#: (out_channels, kernel, stride, padding) of the five convolutions (section 4.2)
CONVS = ((16, 64, 2, 32), (32, 32, 2, 16), (64, 16, 2, 8), (128, 8, 2, 4), (256, 4, 2, 2))


@register_model("soundnet5", "SoundNet5 raw-audio 1-D CNN (5 conv + 2 fc; 8 kHz and 16 kHz)")
def soundnet5(info: DatasetInfo, batch_norm: bool = True, final_length: int = 2,
              hidden: int = 256) -> nn.Module:
    """Five strided 1-D convs with max-pools, adaptive max-pool to ``final_length``, fc
    ``256*final_length -> hidden -> classes`` (512 -> 256 -> classes as in the paper)."""
    if len(info.shape) != 2:
        raise UserInputError(f"soundnet5 needs audio of shape (channels, samples), got "
                             f"{info.name} of shape {info.shape}; use lenet5/resnet20 for images")
    if info.shape[1] < 1024:
        raise UserInputError(f"soundnet5 needs at least 1024 samples per clip, got {info.shape[1]}")
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(normalize=normalize_for(info))
    c = info.channels
    for i, (out, k, s, p) in enumerate(CONVS, start=1):
        layers[f"conv{i}"] = nn.Conv1d(c, out, k, s, p, bias=not batch_norm)
        if batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm1d(out)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool1d(2) if i < len(CONVS) else nn.AdaptiveMaxPool1d(final_length)
        c = out
    layers["flatten"] = nn.Flatten()
    layers.update(mlp_head(c * final_length, (hidden,), info.num_classes))
    return ZooSequential(layers, info.shape, "soundnet5")

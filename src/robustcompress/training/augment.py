"""Training-time data augmentation of image batches: random crop with zero padding, random
horizontal flip. Batched on the batch's device (no per-image loop, no host sync).

Draws. Every random number comes from the epoch's ``torch.Generator`` (see
:mod:`robustcompress.training.fit`), drawn for the whole *global* batch before it is sharded over
data-parallel ranks, so 1 and N processes see the same augmentation. For each batch of ``n``
images, after the epoch's permutation, in this fixed order:

1. flips (when on): ``torch.rand(n) < 0.5``, one value per image (the order used before crops
   existed, so a run without crops consumes the generator exactly as it always did);
2. crop offsets (when ``crop_padding`` ``p > 0``): ``torch.randint(0, 2p + 1, (n, 2))``; column 0
   is the row offset ``dy``, column 1 the column offset ``dx``.

Application: first the crop, then the flip (torchvision's ``RandomCrop`` then
``RandomHorizontalFlip``). The crop pads the image by ``p`` pixels of value ``fill`` on each side
(0, i.e. black for inputs in [0, 1]; 0 clamped into the dataset's box when 0 lies outside it) and
keeps the ``H x W`` window whose top-left corner is at ``(dy, dx)`` of the padded image, so
``(p, p)`` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from robustcompress.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Which augmentations a run uses (``None`` from :meth:`for_run` when it uses none)."""

    flip: bool = False
    crop_padding: int = 0
    fill: float = 0.0

    @classmethod
    def for_run(cls, config, info) -> Optional["Augment"]:
        """The augmentation of ``config`` (a TrainConfig) on a dataset with ``info``; ``None`` if
        off. Raises ConfigError for crops on non-image data."""
        image = info.modality == "image"
        flip = config.flip_enabled(info.name) and image
        p = config.crop_padding
        if p and not (image and len(info.shape) == 3):
            raise ConfigError(
                f"crop_padding={p} crops images (channels, height, width), but {info.name!r} is "
                f"{info.modality} data of shape {tuple(info.shape)}; set crop_padding: 0 "
                "(training.crop_padding in a config, --crop-padding 0 in `train`)")
        if not flip and not p:
            return None
        lo, hi = info.bounds
        return cls(flip=flip, crop_padding=int(p), fill=float(min(max(0.0, lo), hi)))

    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """This batch's random numbers, in the documented order: ``{"flip": bool [n],
        "offsets": int64 [n, 2]}`` (keys present only for augmentations that are on)."""
        out = {}
        if self.flip:
            out["flip"] = flip_mask(n, gen)
        if self.crop_padding:
            out["offsets"] = crop_offsets(n, self.crop_padding, gen)
        return out

    def apply(self, x: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """``x`` [N, C, H, W] augmented with ``draws`` (already on ``x``'s device): crop, flip."""
        if "offsets" in draws:
            x = random_crop(x, draws["offsets"], self.crop_padding, self.fill)
        if "flip" in draws:
            x = apply_flip(x, draws["flip"])
        return x


def flip_mask(n: int, gen: torch.Generator) -> torch.Tensor:
    """Which of ``n`` images are flipped (one draw per image of the global batch)."""
    return torch.rand(n, generator=gen) < 0.5


def apply_flip(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x`` with the images where ``m`` is True mirrored left-right."""
    return torch.where(m.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def crop_offsets(n: int, padding: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 2]`` int64 (row, column) offsets, uniform in ``[0, 2 * padding]``."""
    return torch.randint(0, 2 * padding + 1, (n, 2), generator=gen)


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int,
                fill: float = 0.0) -> torch.Tensor:
    """Per image ``i``: pad ``x[i]`` by ``padding`` (value ``fill``) on each side and take the
    ``H x W`` window at ``offsets[i] = (dy, dx)``. One gather for the batch; a contiguous tensor
    of ``x``'s shape on ``x``'s device (``offsets`` must be on that device)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding), value=fill)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [N, H]
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [N, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]: indexed dims first
    return out.permute(0, 3, 1, 2).contiguous()

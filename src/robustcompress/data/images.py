"""Image decoding (JPEG/PNG/...) with Pillow into uint8 CHW arrays, with consistency checks."""

from __future__ import annotations

import io
from typing import Iterable, Optional

import numpy as np

from robustcompress.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CANON = {"1": "L", "L": "L", "LA": "L", "I": "L", "I;16": "L", "F": "L", "RGB": "RGB"}


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError("reading image files needs Pillow: pip install pillow") from e
    return Image


def canonical_mode(mode: str) -> str:
    """``"L"`` for grey-scale modes, ``"RGB"`` for everything else (palette, RGBA, CMYK, ...)."""
    return _CANON.get(mode, "RGB")


def decode_images(items: Iterable[tuple[str, bytes]], mode: Optional[str] = None) -> dict[str, np.ndarray]:
    """Decode ``(name, bytes)`` pairs into ``{name: uint8 [C, H, W]}``.

    All images must have one size and one canonical mode (``L`` or ``RGB``); the first image
    sets them unless ``mode`` forces a conversion. A mismatch is a DataError naming the file.
    """
    Image = _pil()
    if mode is not None and mode not in ("L", "RGB"):
        raise DataError(f"image mode must be 'L' (grey) or 'RGB', got {mode!r}")
    out: dict[str, np.ndarray] = {}
    want_mode, want_size, first = mode, None, None
    for name, data in items:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                m = canonical_mode(im.mode)
                if want_mode is None:
                    want_mode = m
                elif m != want_mode and mode is None:
                    raise DataError(f"image {name} is {m} but {first} is {want_mode}; all images "
                                    "must share one mode: pass mode='RGB' or mode='L' "
                                    "in load_dataset to convert them all")
                if want_size is None:
                    want_size, first = im.size, first or name
                elif im.size != want_size:
                    raise DataError(f"image {name} is {im.size[0]}x{im.size[1]} but {first} is "
                                    f"{want_size[0]}x{want_size[1]}; resize all images to one size "
                                    "before loading them")
                first = first or name
                arr = np.asarray(im.convert(want_mode), dtype=np.uint8)
        except DataError:
            raise
        except Exception as e:  # Pillow raises many types for broken files
            raise DataError(f"image {name} cannot be decoded ({type(e).__name__}: {e}); "
                            "re-copy the dataset") from e
        out[name] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out

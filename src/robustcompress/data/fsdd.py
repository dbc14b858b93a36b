"""Free Spoken Digit Dataset (Jackson et al., v1.0.10): spoken digits 0-9, 8 kHz mono.

Source: ``recordings/{digit}_{speaker}_{index}.wav`` as a folder or a tar
(``<root>/fsdd/fsdd-recordings.tar``). 3,000 recordings, 6 speakers, 50 per digit and speaker,
0.14-2.28 s long. Each clip is padded with zeros at the end, or cropped, to ``length`` samples
(default 8,000 = 1 s; 1.7% of the clips are longer and lose their end), int16 scaled to [-1, 1).

Split: the FSDD README's convention, index 0-4 -> test (300), 5-49 -> train (2,700). It is *not*
speaker-disjoint (every speaker is in both).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from robustcompress.data.archives import is_archive, iter_files
from robustcompress.data.audio import decode_clip
from robustcompress.data.cache import cache_key, get_or_build
from robustcompress.data.info import Dataset, DatasetInfo
from robustcompress.data.sources import cache_dir_for, fingerprint, first_existing, locate
from robustcompress.data.splits import channel_stats, check_limit, make_dataset, stratified_first
from robustcompress.errors import DataError, UserInputError

NAME = "fsdd"
VERSION = 1
RATE, LENGTH = 8000, 8000
TEST_INDICES = range(0, 5)
PATTERN = re.compile(r"(?:^|/)(\d)_([A-Za-z]+)_(\d+)\.wav$")
PLACES = ("fsdd/fsdd-recordings.tar", "fsdd-recordings.tar", "fsdd/recordings",
          "free-spoken-digit-dataset/recordings", "recordings")


def _is_source(p: Path) -> bool:
    return is_archive(p) or (p.is_dir() and any(p.glob("*_*_*.wav")))


def find(root: Path) -> Optional[Path]:
    return first_existing(root, PLACES, _is_source)


def parse_name(name: str) -> Optional[tuple[int, str, int]]:
    """``(digit, speaker, index)`` from ``.../{digit}_{speaker}_{index}.wav``, or None."""
    m = PATTERN.search(name)
    return (int(m.group(1)), m.group(2), int(m.group(3))) if m else None


def decode(source: Path, length: int) -> tuple[dict, dict]:
    """int16 clips [N, 1, length] and digit labels, split by recording index."""
    clips = {n: decode_clip(d, n, RATE, length) for n, d in iter_files(source) if parse_name(n)}
    names = sorted(clips, key=lambda n: (parse_name(n), n))
    if not names:
        raise DataError(f"{source} holds no recordings named {{digit}}_{{speaker}}_{{index}}.wav")
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        ns = [n for n in names if (parse_name(n)[2] in TEST_INDICES) == (split == "test")]
        arrays[f"x_{split}"] = np.stack([clips[n] for n in ns])[:, None]
        arrays[f"y_{split}"] = np.array([parse_name(n)[0] for n in ns], np.int64)
        arrays[f"s_{split}"] = np.array([parse_name(n)[1] for n in ns])
        arrays[f"i_{split}"] = np.array([parse_name(n)[2] for n in ns], np.int64)
    mean, std = channel_stats(arrays["x_train"])
    return arrays, {"mean": mean, "std": std}


def load(root=None, *, download: bool = False, cache_dir=None, train_limit: Optional[int] = None,
         test_limit: Optional[int] = None, length: int = LENGTH) -> Dataset:
    """Load FSDD: audio (1, length) in [-1, 1), digits 0-9, index 0-4 as test.

    ``extra["speakers"]``/``extra["indices"]`` give every sample's speaker and recording index.
    """
    if not isinstance(length, int) or length < 1:
        raise UserInputError(f"fsdd length must be a positive number of samples, got {length!r}")
    train_limit, test_limit = check_limit("train_limit", train_limit), check_limit("test_limit", test_limit)
    data_root, source = locate(NAME, root, find, PLACES, download=download)
    cdir = cache_dir_for(cache_dir, data_root)
    key = cache_key(name=NAME, version=VERSION, source=fingerprint(source, cdir, NAME), length=length)
    arrays, meta, hit = get_or_build(cdir, NAME, key, lambda: decode(source, length))

    lim = {"train": train_limit, "test": test_limit}
    pick = {s: stratified_first(arrays[f"y_{s}"], lim[s]) for s in lim}
    core = {k: v for k, v in arrays.items() if k[:2] in ("x_", "y_")}
    info = DatasetInfo(name=NAME, shape=(1, length), num_classes=10,
                       class_names=tuple(str(i) for i in range(10)), bounds=(-1.0, 1.0),
                       mean=tuple(meta["mean"]), std=tuple(meta["std"]), modality="audio",
                       sample_rate=RATE,
                       note=f"clips zero-padded/cropped to {length} samples; split index 0-4 = "
                            "test (not speaker-disjoint)")
    return make_dataset(info, core, train_limit, test_limit, extra={
        "source": str(source), "cache_hit": hit,
        "speakers": {s: arrays[f"s_{s}"][pick[s]] for s in lim},
        "indices": {s: arrays[f"i_{s}"][pick[s]] for s in lim}})

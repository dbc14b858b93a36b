"""Google Speech Commands v0.02 (Warden 2018), in the 12-label keyword-spotting setting.

Labels (in this order): ``yes no up down left right on off stop go _unknown_ _silence_``, the
setting of the tensorization paper and of TensorFlow's speech-commands tutorial. Audio is 16 kHz
mono, padded with zeros at the end or cropped to 16,000 samples (1 s), int16 scaled to [-1, 1).

Sources: a folder or archive (``.tar.xz``, ``.tar.gz``) with ``<word>/<file>.wav``. In the full
dataset, every other word folder becomes ``_unknown_`` and ``_silence_`` clips are the
consecutive 1 s windows of the ``_background_noise_`` recordings (deviation from TensorFlow's
tutorial, which mixes random windows with random volume at training time). In the shared subset
(``speech_commands_subset.tar.xz``: 3,000 clips of the official *test* set, 250 per label) the
folders already are the 12 labels. No ``_unknown_`` re-balancing is done: on the full dataset
``_unknown_`` is the largest class.

Split: speaker-disjoint and deterministic. The speaker id is the part of the file name before
``_nohash_`` (last ``_``-separated token, so ``backward_0c540988_nohash_0.wav`` -> ``0c540988``);
clips without a speaker (silence) use their own name.

* ``split="official"``: TensorFlow's ``which_set`` rule: sha1 of the speaker id mapped to a
  percentage; < 10 -> validation (``extra["val"]``), < 20 -> test, else train. On the full
  dataset this reproduces the official lists.
* ``split="resplit"``: ``int(sha1("resplit:" + speaker)) % 100`` < 80 -> train, else test (no
  validation). The shared subset comes from the official *test* set, where the official rule puts
  almost every clip in "test" (by construction), so it needs this re-split.
* ``split="auto"`` (default): ``official`` if it puts at least half of the clips in train, else
  ``resplit``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from robustcompress.data.archives import is_archive, iter_files
from robustcompress.data.audio import decode_clip, read_wav
from robustcompress.data.cache import cache_key, get_or_build
from robustcompress.data.info import Dataset, DatasetInfo
from robustcompress.data.integrity import check_member, read_sha256_list, verify_file
from robustcompress.data.sources import cache_dir_for, fingerprint, first_existing, locate
from robustcompress.data.splits import channel_stats, check_limit, make_dataset, stratified_first
from robustcompress.errors import DataError, UserInputError

NAME = "speech_commands"
VERSION = 1
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE, NOISE = "_unknown_", "_silence_", "_background_noise_"
CLASSES = WORDS + (UNKNOWN, SILENCE)
RATE, LENGTH = 16000, 16000
MAX_NUM_WAVS_PER_CLASS = 2 ** 27 - 1  # TensorFlow's which_set constant
VAL_PERCENT, TEST_PERCENT = 10.0, 10.0
PLACES = ("speech_commands_subset.tar.xz", "speech_commands/speech_commands_subset.tar.xz",
          "speech_commands_v0.02.tar.gz", "speech_commands/speech_commands_v0.02.tar.gz",
          "speech_commands_subset", "speech_commands", "speech_commands_v0.02",
          "SpeechCommands/speech_commands_v0.02")
SUBSET_NOTE = ("subset of the official Speech Commands v0.02 *test* set (250 clips per label); "
               "train/test are a speaker-disjoint re-split of it, so accuracies are not comparable "
               "to models trained on the full v0.02 training set")


class Clip(NamedTuple):
    name: str    # member name; background windows: "<member>#<k>"
    label: int
    speaker: str


def speaker_of(name: str) -> str:
    """Speaker id: last ``_`` token before ``_nohash_`` in the file name, else the whole name."""
    base = name.split("/")[-1]
    if "_nohash_" in base:
        return base.split("_nohash_")[0].split("_")[-1]
    return name


def which_set(speaker: str) -> str:
    """``"val"``, ``"test"`` or ``"train"`` from the sha1 of the speaker id (TensorFlow's rule)."""
    h = int(hashlib.sha1(speaker.encode()).hexdigest(), 16)
    pct = (h % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if pct < VAL_PERCENT:
        return "val"
    if pct < VAL_PERCENT + TEST_PERCENT:
        return "test"
    return "train"


def resplit_set(speaker: str) -> str:
    """``"train"`` (80%) or ``"test"`` (20%) from a salted sha1 of the speaker id."""
    return "train" if int(hashlib.sha1(f"resplit:{speaker}".encode()).hexdigest(), 16) % 100 < 80 \
        else "test"


def choose_rule(speakers: list[str], split: str) -> str:
    """Resolve ``split="auto"`` (see module docstring)."""
    if split != "auto":
        return split
    n_train = sum(which_set(s) == "train" for s in speakers)
    return "official" if 2 * n_train >= len(speakers) else "resplit"


def label_of(folder: str) -> Optional[int]:
    """Label index of a word folder (other words -> unknown, background noise -> None)."""
    if folder == NOISE:
        return None
    if folder in CLASSES:
        return CLASSES.index(folder)
    return CLASSES.index(UNKNOWN)


def _is_source(p: Path) -> bool:
    return is_archive(p) or (p.is_dir() and any((p / w).is_dir() for w in WORDS))


def find(root: Path) -> Optional[Path]:
    return first_existing(root, PLACES, _is_source)


def members_list(source: Path) -> Optional[Path]:
    """``<name>.members.sha256`` beside a source (the shared subset has one), or None."""
    stem = source.name.split(".tar")[0]
    p = source.parent / f"{stem}.members.sha256"
    return p if p.is_file() else None


def decode(source: Path, expected: dict[str, str], split: str) -> tuple[dict, dict]:
    """Decode every clip (and background-noise windows) into int16 arrays per split.

    One streaming pass over the source (an xz archive costs seconds per pass).
    """
    clips: dict[str, np.ndarray] = {}
    meta_clips: list[Clip] = []
    for name, data in iter_files(source):
        if not name.lower().endswith(".wav") or "/" not in name:
            continue
        check_member(source, name, data, expected.get(name), NAME)
        lab = label_of(name.split("/")[-2])
        if lab is None:  # background noise: consecutive 1 s windows become silence clips
            a, r = read_wav(data, name)
            if r != RATE:
                continue
            for k in range(len(a) // LENGTH):
                key = f"{name}#{k}"
                clips[key] = a[k * LENGTH:(k + 1) * LENGTH]
                meta_clips.append(Clip(key, CLASSES.index(SILENCE), key))
            continue
        clips[name] = decode_clip(data, name, RATE, LENGTH)
        meta_clips.append(Clip(name, lab, speaker_of(name)))
    if not meta_clips:
        raise DataError(f"{source} holds no <word>/<file>.wav clips")
    meta_clips.sort(key=lambda c: (c.label, c.name))
    rule = choose_rule([c.speaker for c in meta_clips], split)
    assign = which_set if rule == "official" else resplit_set
    arrays: dict[str, np.ndarray] = {}
    for part in ("train", "val", "test"):
        cs = [c for c in meta_clips if assign(c.speaker) == part]
        if part == "val" and not cs:
            continue
        arrays[f"x_{part}"] = (np.stack([clips[c.name] for c in cs])[:, None] if cs
                               else np.zeros((0, 1, LENGTH), np.int16))
        arrays[f"y_{part}"] = np.array([c.label for c in cs], np.int64)
        arrays[f"s_{part}"] = np.array([c.speaker for c in cs])
    mean, std = channel_stats(arrays["x_train"])
    return arrays, {"mean": mean, "std": std, "split_rule": rule}


def load(root=None, *, download: bool = False, cache_dir=None, train_limit: Optional[int] = None,
         test_limit: Optional[int] = None, split: str = "auto") -> Dataset:
    """Load Speech Commands: audio (1, 16000) in [-1, 1), 12 labels, speaker-disjoint split.

    ``extra["val"]`` is the validation split, ``extra["speakers"]`` the speaker id of every
    train/val/test sample (for checking disjointness). ``split``: ``"auto"``, ``"official"`` or
    ``"resplit"`` (see the module docstring); ``extra["split_rule"]`` says which was used.
    """
    if split not in ("auto", "official", "resplit"):
        raise UserInputError(f"speech_commands split must be auto, official or resplit, got {split!r}")
    train_limit, test_limit = check_limit("train_limit", train_limit), check_limit("test_limit", test_limit)
    data_root, source = locate(NAME, root, find, PLACES, download=download)
    cdir = cache_dir_for(cache_dir, data_root)
    fp = fingerprint(source, cdir, NAME)
    ml = members_list(source)
    expected: dict[str, str] = {}
    if ml is not None:
        verify_file(ml, cache_dir=cdir, dataset=NAME)
        if source.is_dir():  # an archive with a verified sha256 needs no per-member check
            expected = read_sha256_list(ml)
    key = cache_key(name=NAME, version=VERSION, source=fp, length=LENGTH, split=split)
    arrays, meta, hit = get_or_build(cdir, NAME, key, lambda: decode(source, expected, split))
    limits = {"train": train_limit, "val": test_limit, "test": test_limit}
    speakers = {s: arrays[f"s_{s}"][stratified_first(arrays[f"y_{s}"], limits[s])]
                for s in ("train", "val", "test") if f"s_{s}" in arrays}
    core = {k: v for k, v in arrays.items() if not k.startswith("s_")}
    info = DatasetInfo(name=NAME, shape=(1, LENGTH), num_classes=len(CLASSES), class_names=CLASSES,
                       bounds=(-1.0, 1.0), mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                       modality="audio", sample_rate=RATE,
                       note=(SUBSET_NOTE if "subset" in source.name else "")
                       + f" [split: {meta['split_rule']}]")
    return make_dataset(info, core, train_limit, test_limit,
                        extra={"source": str(source), "cache_hit": hit, "speakers": speakers,
                               "split_rule": meta["split_rule"]})

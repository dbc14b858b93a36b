"""WAV decoding with the standard-library ``wave`` module and numpy (no audio library needed)."""

from __future__ import annotations

import io
import wave

import numpy as np

from robustcompress.errors import DataError


def read_wav(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Decode PCM WAV bytes to mono int16 samples and the sample rate.

    8-bit (unsigned) and 16-bit PCM are read exactly; 24/32-bit PCM is reduced to its 16 most
    significant bits; several channels are averaged to mono. Anything else is a DataError.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise DataError(f"{name} is not a readable PCM WAV file ({e}); re-copy the dataset") from e
    if width == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.int16) - 128) * 256
    elif width == 2:
        a = np.frombuffer(raw, "<i2")
    elif width in (3, 4):
        b = np.frombuffer(raw, np.uint8).reshape(-1, width)
        a = b[:, -2:].copy().view("<i2").reshape(-1)
    else:
        raise DataError(f"{name}: unsupported WAV sample width {width} bytes")
    a = a[: (len(a) // ch) * ch].reshape(-1, ch)
    mono = a[:, 0] if ch == 1 else a.astype(np.int32).mean(axis=1).astype(np.int16)
    return np.ascontiguousarray(mono, dtype=np.int16), rate


def fix_length(a: np.ndarray, length: int) -> np.ndarray:
    """Pad with zeros at the end, or keep the first ``length`` samples."""
    if len(a) >= length:
        return a[:length]
    return np.concatenate([a, np.zeros(length - len(a), a.dtype)])


def decode_clip(data: bytes, name: str, rate: int, length: int) -> np.ndarray:
    """One WAV as int16 ``[length]`` at ``rate`` Hz (a different rate is a DataError: no resampling)."""
    a, r = read_wav(data, name)
    if r != rate:
        raise DataError(f"{name} has sample rate {r} Hz, expected {rate} Hz; resample the file "
                        "(robustcompress does not resample)")
    return fix_length(a, length)

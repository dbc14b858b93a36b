"""Decoded-array cache: ``.npy`` files keyed by the sha256 of the source files.

Decoding 60,000 JPEGs or thousands of WAVs takes seconds; loading the same arrays back from
``.npy`` takes a fraction of a second. Each cache entry is one folder
``<cache_dir>/<dataset>-<key>/`` with one ``.npy`` per array (uint8 images, int16 audio) and a
``meta.json`` written last, so an entry without ``meta.json`` is incomplete and ignored. The key
hashes the source checksums, the loader version and the decoding options: a changed source gives
a new key, so a stale entry is never read. Every file is written to a temporary name and moved
into place with ``os.replace`` (atomic on POSIX), so two processes filling the same entry cannot
leave a torn file. ``meta.json`` records the sha256 of each ``.npy``; a file that no longer matches
(edited in place, bit rot, truncated) is not an error but a warning naming it: the cache is derived
data, so the entry is discarded and rebuilt from the sources, and nothing is lost. Verifying reads
each file once per load (about 0.1 s for CIFAR-10's 150 MB).

Cache directory order: ``cache_dir=`` argument, ``$ROBUSTCOMPRESS_CACHE``, ``<root>/.robustcompress-cache``
when the data root is writable (by its mode bits, so a read-only shared folder stays untouched
even for root), else ``$XDG_CACHE_HOME/robustcompress`` (``~/.cache/robustcompress``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from robustcompress.data.integrity import atomic_write_bytes, file_sha256

CACHE_ENV_VAR = "ROBUSTCOMPRESS_CACHE"
Arrays = dict[str, np.ndarray]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/robustcompress``, default ``~/.cache/robustcompress``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robustcompress"


def writable_by_mode(p: Path) -> bool:
    """True if ``p`` is a folder we may write to *and* its mode has a write bit.

    The mode check matters for root, whom ``os.access`` lets write into a read-only
    (``r-x``) shared data folder.
    """
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return (p.is_dir() and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            and os.access(p, os.W_OK | os.X_OK))


def resolve_cache_dir(cache_dir: Optional[os.PathLike] = None,
                      root: Optional[Path] = None) -> Path:
    """Pick the cache directory (see module docstring); never writes into a read-only data root."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    if root is not None and writable_by_mode(Path(root)):
        return Path(root) / ".robustcompress-cache"
    return user_cache_dir()


def cache_key(**parts) -> str:
    """A short stable hash of JSON-serialisable ``parts`` (sources' sha256, options, version)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:

    return file_sha256(path)


def save_entry(entry: Path, arrays: Arrays, meta: dict) -> None:
    """Write every array, then ``meta.json`` (the completeness marker, with each file's sha256)."""
    hashes = {}
    for k, a in arrays.items():
        _atomic_save_npy(entry / f"{k}.npy", a)
        hashes[k] = _sha256(entry / f"{k}.npy")
    meta = dict(meta, arrays=sorted(arrays), sha256=hashes)
    atomic_write_bytes(entry / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())


def _damaged(entry: Path, meta: dict) -> Optional[tuple[Path, str]]:
    """The first array file that differs from the sha256 recorded for it, and how; or None."""
    for k in meta["arrays"]:
        p = entry / f"{k}.npy"
        try:
            got = _sha256(p)
        except OSError as e:
            return p, f"unreadable: {e.strerror or e}"
        if got != meta["sha256"].get(k):
            return p, f"sha256 {got} != recorded {meta['sha256'].get(k)}"
    return None


def _discard(entry: Path, bad: Path, why: str) -> None:
    """Warn about a damaged cache file and remove it and the entry's completeness marker."""
    warnings.warn(f"dataset cache file {bad} was modified or corrupted after it was written "
                  f"({why}); the cache is derived data, so the entry was discarded and is rebuilt "
                  "from the source files", stacklevel=4)
    for p in (entry / "meta.json", bad):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache: the rebuilt arrays are used, and the next load warns again


def load_entry(entry: Path) -> Optional[tuple[Arrays, dict]]:
    """The arrays and meta of a complete, intact entry, or None (missing, incomplete, written
    before checksums were recorded, or damaged: then with a warning naming the file)."""
    mp = entry / "meta.json"
    if not mp.is_file():
        return None
    try:
        meta = json.loads(mp.read_text())
        if not isinstance(meta.get("sha256"), dict):
            return None  # an entry from before checksums: rebuilt once, silently (same data)
        bad = _damaged(entry, meta)
        if bad is not None:
            _discard(entry, *bad)
            return None
        # memory-mapped: a limited load copies only the rows it keeps
        arrays = {k: np.load(entry / f"{k}.npy", mmap_mode="r", allow_pickle=False)
                  for k in meta["arrays"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return arrays, meta


def get_or_build(cache_dir: Optional[Path], name: str, key: str,
                 build: Callable[[], tuple[Arrays, dict]]) -> tuple[Arrays, dict, bool]:
    """Return ``(arrays, meta, hit)``: from the cache entry ``<name>-<key>`` or by calling ``build``.

    A cache that cannot be written (read-only home, full disk) only costs speed: a warning is
    issued and the freshly built arrays are returned. ``cache_dir=None`` disables caching.
    """
    entry = None if cache_dir is None else Path(cache_dir) / f"{name}-{key}"
    if entry is not None:
        got = load_entry(entry)
        if got is not None:
            return got[0], got[1], True
    arrays, meta = build()
    if entry is not None:
        try:
            save_entry(entry, arrays, meta)
        except OSError as e:
            warnings.warn(f"could not write the dataset cache at {entry} ({e}); the next load "
                          "will decode again. Pass cache_dir= or set $ROBUSTCOMPRESS_CACHE to a "
                          "writable folder.", stacklevel=3)
    return arrays, meta, False

"""Finding a dataset's source files under the data roots, and fingerprinting them for the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Optional, TypeVar

from robustcompress.data.cache import resolve_cache_dir
from robustcompress.data.integrity import verify_file
from robustcompress.data.roots import ENV_VAR, resolve_data_root, root_candidates
from robustcompress.errors import DataError

T = TypeVar("T")


def locate(name: str, root, find: Callable[[Path], Optional[T]], searched: tuple[str, ...],
           *, download: bool = False) -> tuple[Path, T]:
    """Find dataset ``name``: ``(data_root, find(data_root))`` for the first root where ``find``
    succeeds (see :mod:`robustcompress.data.roots` for the order).

    With ``download=True`` a missing canonical dataset is downloaded into the explicit root (or
    ``./data``). Otherwise a DataError lists every place searched and how to fix it.
    """
    cands, origin = root_candidates(root)
    if origin != "default":
        resolve_data_root(root)  # clear error for an explicit root that does not exist
    for c in cands:
        if c.is_dir():
            got = find(c)
            if got is not None:
                return c, got
    if download:
        from robustcompress.data.download import download as do_download

        target = cands[0] if origin != "default" else Path.cwd() / "data"
        do_download(name, target)
        got = find(target)
        if got is not None:
            return target, got
    looked = "; ".join(f"{c}/{{{','.join(searched)}}}" for c in cands)
    raise DataError(f"dataset {name!r} not found (searched {looked}); pass --data-dir DIR "
                    f"(root= in Python) or set {ENV_VAR}=DIR to the folder holding it, or run "
                    f"`robustcompress data download {name}` where supported")


def first_existing(root: Path, rels: tuple[str, ...],
                   ok: Callable[[Path], bool] = lambda p: p.exists()) -> Optional[Path]:
    """The first ``root/rel`` that exists (and satisfies ``ok``), or None."""
    for r in rels:
        p = root / r
        if p.exists() and ok(p):
            return p
    return None


def folder_fingerprint(folder: Path) -> str:
    """sha256 over (relative name, size, mtime) of every file in a folder: cheap change detector."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(q.startswith(".robustcompress-cache") for q in p.relative_to(folder).parts):
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def fingerprint(source: Path, cache_dir: Optional[Path], dataset: str) -> str:
    """Checksum of a source: verified sha256 for a file (known checksums enforced), or the folder
    fingerprint for a directory."""
    source = Path(source)
    if source.is_dir():
        return "dir:" + folder_fingerprint(source)
    return verify_file(source, cache_dir=cache_dir, dataset=dataset)


def cache_dir_for(cache_dir, data_root: Optional[Path]) -> Path:
    """Cache directory for a dataset found under ``data_root`` (see :mod:`.cache`)."""
    return resolve_cache_dir(cache_dir, data_root)
